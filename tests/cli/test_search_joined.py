"""Search lists a trace joined across nodes once, under one id (issue 15): the agent on
node A and the agent on node B each store their fragment of a request under their own
trace id; the server joins them at query time (sequence numbers of both directions),
and `zerotrace traces` listed both ids, each showing the same spans.  Pushed through
the real exporter to a real `zerotrace server` process; asked with the real CLI."""

from __future__ import annotations

import json
import time

from cli_proc import MS, push, zt

from proto.span import Endpoint, Span, new_span_id, new_trace_id


def _two_fragments(t0: int, seq: int) -> tuple[str, str, list[Span], list[Span]]:
    """Node A: front's server span and its client call; node B: api's server span
    (a trace of its own) and api's database call.  Linked only by the call's TCP
    sequence numbers, as a request between two nodes is."""
    ta, tb = new_trace_id(), new_trace_id()
    cli_ep, srv_ep = Endpoint("10.1.0.5", 40000 + seq % 20000), Endpoint("10.2.0.7", 8080)
    root = Span(trace_id=ta, span_id=new_span_id(), kind="server", source="S",
                protocol="http", operation="GET /", status="ok", status_code="200",
                service="front", start_ns=t0, end_ns=t0 + 10 * MS, agent="node-a")
    call = Span(trace_id=ta, span_id=new_span_id(), parent_span_id=root.span_id,
                kind="client", source="S", protocol="http", operation="GET /api/items",
                status="ok", status_code="200", service="front", start_ns=t0 + MS,
                end_ns=t0 + 9 * MS, transport="tcp", local=cli_ep, remote=srv_ep,
                req_seq=seq, resp_seq=seq + 7, agent="node-a")
    api = Span(trace_id=tb, span_id=new_span_id(), kind="server", source="S",
               protocol="http", operation="GET /api/items", status="ok", status_code="200",
               service="api", start_ns=t0 + 2 * MS, end_ns=t0 + 8 * MS, transport="tcp",
               local=Endpoint(srv_ep.addr, srv_ep.port),
               remote=Endpoint(cli_ep.addr, cli_ep.port), req_seq=seq, resp_seq=seq + 7,
               agent="node-b")
    db = Span(trace_id=tb, span_id=new_span_id(), parent_span_id=api.span_id, kind="client",
              source="S", protocol="postgresql", operation="SELECT items", status="ok",
              service="api", start_ns=t0 + 3 * MS, end_ns=t0 + 6 * MS, agent="node-b")
    return ta, tb, [root, call], [api, db]


def test_search_lists_a_joined_trace_once_under_one_id(server):
    t0 = time.time_ns() - 60 * 1_000_000_000
    pairs = [_two_fragments(t0 + i * 20 * MS, 7_000_000 + 1000 * i) for i in range(3)]
    for _ta, _tb, a, b in pairs:
        push(server, a, agent="node-a")
        push(server, b, agent="node-b")
    lone = new_trace_id()  # a trace of one fragment stays as it is
    push(server, [Span(trace_id=lone, span_id=new_span_id(), kind="server", source="S",
                       protocol="http", operation="GET /lone", status="ok", service="api",
                       start_ns=t0, end_ns=t0 + MS, agent="node-b")], agent="node-b")

    r = zt("traces", "-o", "json", "--since", "5m", "--limit", "50", "--server", server)
    assert r.rc == 0, r.err
    rows = json.loads(r.out)
    ids = [t["trace_id"] for t in rows]
    assert len(ids) == len(set(ids))
    # each request once, under the id of the fragment that holds its root (node A's)
    assert sorted(ids) == sorted([ta for ta, *_ in pairs] + [lone]), rows
    by_id = {t["trace_id"]: t for t in rows}
    for ta, _tb, a, b in pairs:
        row = by_id[ta]
        assert row["spans"] == len(a) + len(b)  # the joined trace, summarised whole
        assert sorted(row["services"]) == ["api", "front"]
        assert row["root_service"] == "front"
    # a search that matches only node B's fragment names the joined trace's id too
    r = zt("traces", "-o", "json", "--since", "5m", "--service", "api", "--operation",
           "SELECT items", "--server", server)
    assert r.rc == 0, r.err
    assert sorted(t["trace_id"] for t in json.loads(r.out)) == sorted(ta for ta, *_ in pairs)
    # either fragment's id resolves to that one trace
    ta, tb, a, b = pairs[0]
    for asked in (ta, tb):
        r = zt("trace", asked, "-o", "json", "--server", server)
        assert r.rc == 0, r.err
        doc = json.loads(r.out)
        assert doc["trace_id"] == ta
        assert {s["trace_id"] for s in doc["spans"]} == {ta}
        assert {s["span_id"] for s in doc["spans"]} == {s.span_id for s in a + b}
