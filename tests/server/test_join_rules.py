"""One set of cross-process link rules (proto/links.py, issue 12), applied alike by
its three users: the agent's stitcher (the Python reference and the compiled one),
the server's query-time join, and the service-dependency query.

Random cases: a server span and one to three client spans with its request's
sequence number, each client with or without the response's number (the same one or
another), with a mirrored or a foreign tuple, some outside the time skew.  What the
rule module keeps (`pick_by_seq` over `seq_strength`) is computed here once; each user
must link exactly when it keeps one client, to that client, and link nothing (counted
ambiguous) when it keeps several."""

from __future__ import annotations

import dataclasses
import uuid
from random import Random

import pytest

from agent.conn.spans import SpanContext
from agent.stitch import _stitcher, stitcher
from proto import links
from proto.span import PARENT_UNKNOWN, Endpoint, Span, new_span_id, new_trace_id
from server.join import join_trace

MS = 1_000_000
SRV = Endpoint("10.2.0.7", 8080)


def _cases(n: int, seed: int = 12, skew_ns: int = links.SEQ_SKEW_NS
           ) -> list[tuple[Span, list[Span], list[int]]]:
    """(server span, candidate clients, indexes the rule keeps) per case."""
    rng = Random(seed)
    t0 = 1_700_000_000 * 10**9
    out = []
    for i in range(n):
        seq, resp = 1_000_000 + 1000 * i, 5_000_000 + 1000 * i
        t = t0 + i * 100 * MS
        cli_ep = Endpoint("10.1.0.5", 40000 + i)
        server = Span(trace_id=new_trace_id(), span_id=new_span_id(), kind="server",
                      source="S", protocol="http", operation="GET /x", status="ok",
                      service=f"api{i}", pid=200, process="api", transport="tcp",
                      start_ns=t + 2 * MS, end_ns=t + 6 * MS, local=SRV, remote=cli_ep,
                      req_seq=seq, resp_seq=rng.choice([None, resp]), agent="node-b")
        clients = []
        for j in range(rng.randint(1, 3)):
            # a sequence number seen again later: outside the server's skew window
            # (the agent's stitcher keeps spans for less: it has no such window)
            far = rng.random() < 0.1
            start = t + (links.SEQ_SKEW_NS + 1_000 * MS if far else 0)
            local = cli_ep if rng.random() < 0.7 else Endpoint("10.1.0.9", 30000 + j)
            clients.append(Span(
                trace_id=new_trace_id(), span_id=new_span_id(), kind="client", source="S",
                protocol="http", operation="GET /x", status="ok", service=f"front{i}_{j}",
                pid=100 + j, process="front", transport="tcp", start_ns=start,
                end_ns=start + 8 * MS, local=local, remote=SRV, req_seq=seq,
                resp_seq=rng.choice([None, resp, resp + 1]), agent="node-a"))
        keep = links.pick_by_seq([links.seq_strength(c, server, skew_ns) for c in clients])
        out.append((server, clients, keep))
    kinds = {len(k) for _s, _c, k in out}
    assert n < 20 or kinds >= {0, 1, 2}, kinds  # the cases reach every outcome
    return out


def _copy(s: Span) -> Span:
    return dataclasses.replace(s, attributes=dict(s.attributes))


def test_rule_module_outcomes():
    c = Span(kind="client", req_seq=1, resp_seq=2, local=Endpoint("a", 1),
             remote=Endpoint("b", 2), start_ns=0, end_ns=10)
    s = Span(kind="server", req_seq=1, resp_seq=2, local=Endpoint("x", 9),
             remote=Endpoint("y", 9), start_ns=5, end_ns=6)
    assert links.seq_strength(c, s) == links.BOTH_SEQS  # NAT: tuple differs, seqs agree
    s.resp_seq = 3
    assert links.seq_strength(c, s) == links.NO_MATCH
    s.resp_seq = None
    assert links.seq_strength(c, s) == links.SAME_REQUEST
    s.local, s.remote = Endpoint("b", 2), Endpoint("a", 1)
    assert links.seq_strength(c, s) == links.MIRRORED
    s.start_ns = 10 + links.SEQ_SKEW_NS + 1
    assert links.seq_strength(c, s, links.SEQ_SKEW_NS) == links.NO_MATCH
    assert links.pick_by_seq([3, 2, 2]) == [0]  # one strong wins
    assert links.pick_by_seq([3, 3, 1]) == [0, 1, 2]  # ambiguous
    assert links.pick_by_seq([1, 2, 0]) == [1]
    assert links.pick_by_seq([1, 0]) == []


@pytest.mark.parametrize("impl", ["python", "compiled"])
def test_agent_stitchers_apply_the_rule(impl):
    cls = {"python": stitcher.Stitcher, "compiled": _stitcher.Stitcher}[impl]
    cases = _cases(60, skew_ns=0)
    st = cls(lambda t: None)
    conn = 1
    for _server, clients, _keep in cases:
        for c in clients:
            conn += 1
            st.add(SpanContext(c, conn, 1, c.end_ns, 1, c.start_ns, True))
    servers = []
    for server, _clients, _keep in cases:
        conn += 1
        s = _copy(server)
        servers.append(s)
        st.add(SpanContext(s, conn, 1, s.start_ns, 1, s.end_ns, True))
    st.tick(1_700_000_000 * 10**9 + 10**15, True)
    st.close()
    for s, (_server, clients, keep) in zip(servers, cases, strict=True):
        if len(keep) == 1:
            assert s.parent_span_id == clients[keep[0]].span_id
        else:
            assert s.parent_span_id == ""
            if keep:
                assert s.attributes[PARENT_UNKNOWN] == \
                    f"{len(keep)} client spans match the request"


@pytest.fixture
def store(chdb_root):
    st = chdb_root.for_database(f"rules_{uuid.uuid4().hex[:12]}")
    yield st
    st.drop()


def test_server_join_and_dependencies_apply_the_rule(store):
    cases = _cases(40, seed=7)
    store.write_spans([s for server, clients, _k in cases for s in [server, *clients]])
    expect_deps = set()
    for server, clients, keep in cases:
        r = join_trace(store, server.trace_id)
        (got,) = [s for s in r.spans if s.span_id == server.span_id]
        if len(keep) == 1:
            assert got.parent_span_id == clients[keep[0]].span_id
            assert r.linked == 1 and r.ambiguous == 0
            expect_deps.add((clients[keep[0]].service, server.service))
        else:
            assert got.parent_span_id == "" and r.linked == 0
            assert r.ambiguous == (1 if keep else 0)
    deps = {(d.parent, d.child) for d in store.dependencies(0, 0)}
    assert deps == expect_deps


def test_a_server_span_with_a_parent_joins_nothing(store):
    """The join links a client only to a parentless server span; a server span its
    agent already gave a parent keeps it, and the other fragment stays out: its spans
    in this trace would be a join without a link."""
    (server, clients, _keep), = _cases(1, seed=3)
    client = dataclasses.replace(clients[0], resp_seq=server.resp_seq,
                                 local=server.remote, remote=server.local)
    root = Span(trace_id=server.trace_id, span_id=new_span_id(), kind="client", source="S",
                service="lb", start_ns=server.start_ns - MS, end_ns=server.end_ns + MS)
    parented = dataclasses.replace(server, parent_span_id=root.span_id)
    store.write_spans([root, parented, client])
    assert links.seq_strength(client, parented, links.SEQ_SKEW_NS) >= links.MIRRORED
    for tid, own in ((client.trace_id, {client.span_id}),
                     (server.trace_id, {root.span_id, parented.span_id})):
        r = join_trace(store, tid)
        assert {s.span_id for s in r.spans} == own and r.linked == 0
    assert (client.service, server.service) not in {
        (d.parent, d.child) for d in store.dependencies(0, 0)}
