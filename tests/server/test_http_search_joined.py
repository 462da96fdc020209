"""Tempo's and Jaeger's searches list a trace joined across nodes once, under one id
(issue 15), as `zerotrace traces` does; and TraceQL `kind` tells producers and
consumers (stored as client and server, their OTLP kind kept in the model object)
from clients and servers.  A real `zerotrace server --http` process; spans pushed by
the agent's exporter (two nodes) and as raw OTLP requests; asked over HTTP as
Grafana asks."""

from __future__ import annotations

import os
import time

import grpc
import pytest
from factory import MS, two_node_trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from test_http_api import Server, _push, get_json, q, search


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("joined"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pairs(srv):
    t0 = time.time_ns() - 2_000_000_000
    out = [two_node_trace(t0 + i * 20 * MS) for i in range(3)]
    for _ta, _tb, a, b in out:
        _push(srv.grpc, "node-a", a)
        _push(srv.grpc, "node-b", b)
    return out


def _window() -> dict:
    now = int(time.time())
    return {"start": now - 600, "end": now + 60}


def test_tempo_search_lists_each_joined_trace_once(srv, pairs):
    want = sorted(ta for ta, *_ in pairs)
    # every span matches: the fragments' spans are one trace's spans
    traces = search(srv, "{}", **_window())
    assert sorted(t["traceID"] for t in traces) == want
    by_id = {t["traceID"]: t for t in traces}
    for ta, _tb, a, b in pairs:
        t = by_id[ta]
        assert t["rootServiceName"] == "front"
        ss = t["spanSet"]
        assert ss["matched"] == len(a) + len(b)  # both fragments' matching spans
        assert len(ss["spans"]) == 3  # spss
        assert {s["spanID"] for s in ss["spans"]} <= {s.span_id for s in a + b}
    # a search matching only node B's fragment names the joined trace's id too
    traces = search(srv, '{resource.service.name="api"}', **_window())
    assert sorted(t["traceID"] for t in traces) == want
    for t in traces:
        (_ta, _tb, _a, b) = next(p for p in pairs if p[0] == t["traceID"])
        assert {s["spanID"] for s in t["spanSet"]["spans"]} == {s.span_id for s in b}
        assert t["rootServiceName"] == "front"  # the joined trace's root, not api's


@pytest.mark.parametrize("service", ["front", "api"])
def test_jaeger_search_returns_each_joined_trace_once_whole(srv, pairs, service):
    w = _window()
    body = get_json(srv, f"/jaeger/api/traces?service={service}&start={w['start'] * 10**6}"
                         f"&end={w['end'] * 10**6}&limit=20")
    got = {t["traceID"]: t for t in body["data"]}
    assert sorted(got) == sorted(ta for ta, *_ in pairs)
    for ta, _tb, a, b in pairs:
        t = got[ta]
        assert {s["spanID"] for s in t["spans"]} == {s.span_id for s in a + b}
        assert {s["traceID"] for s in t["spans"]} == {ta}
        services = {p["serviceName"] for p in t["processes"].values()}
        assert services == {"front", "api"}


def _otlp(addr: str, kinds: dict[str, int], t0: int) -> dict[str, str]:
    """One trace per kind name, a single span of that OTLP kind: name -> trace id."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "queue-app"
    ss = rs.scope_spans.add()
    out = {}
    for name, kind in kinds.items():
        tid = os.urandom(16)
        ss.spans.add(trace_id=tid, span_id=os.urandom(8), name=f"op {name}", kind=kind,
                     start_time_unix_nano=t0, end_time_unix_nano=t0 + MS)
        out[name] = tid.hex()
    with grpc.insecure_channel(addr) as ch:
        trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=60)
    return out


def test_traceql_kind_producer_and_consumer(srv):
    K = trace_pb2.Span
    tids = _otlp(srv.grpc, {"producer": K.SPAN_KIND_PRODUCER, "consumer": K.SPAN_KIND_CONSUMER,
                            "client": K.SPAN_KIND_CLIENT, "server": K.SPAN_KIND_SERVER,
                            "internal": K.SPAN_KIND_INTERNAL,
                            "unspecified": K.SPAN_KIND_UNSPECIFIED},
                 time.time_ns() - 1_000_000_000)
    for kind in tids:
        found = {t["traceID"] for t in search(
            srv, f'{{resource.service.name="queue-app" && kind={kind}}}', **_window())}
        assert found == {tids[kind]}, kind
        found = {t["traceID"] for t in search(
            srv, f'{{resource.service.name="queue-app" && kind!={kind}}}', **_window())}
        assert found == set(tids.values()) - {tids[kind]}, kind
    # Grafana's value list for the kind intrinsic names them as TraceQL does
    only = q('{resource.service.name="queue-app"}')
    vals = get_json(srv, f"/api/v2/search/tag/kind/values?q={only}")
    assert {v["value"] for v in vals["tagValues"]} == set(tids)
