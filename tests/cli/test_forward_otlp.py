"""`zerotrace server --forward-otlp ENDPOINT` (issue 15): what the server stores also
goes to an OTLP/gRPC endpoint, retried while the endpoint is unavailable, with drops
counted by reason in the server's metrics.  The endpoint is the test's own gRPC server
implementing OTLP's TraceService; spans come from the agent's real exporter."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from cli_proc import MS, free_port, push, start_server, zt
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from proto.span import Span, new_span_id, new_trace_id


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Answers the first `unavailable` calls UNAVAILABLE (a collector restarting), or
    every call `refuse` when set; keeps the spans of accepted calls."""

    def __init__(self, unavailable: int = 0, refuse: grpc.StatusCode | None = None) -> None:
        self.unavailable = unavailable
        self.refuse = refuse
        self.calls = 0
        self.spans: list = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802
        with self.lock:
            self.calls += 1
            if self.refuse is not None:
                context.abort(self.refuse, "not today")
            if self.calls <= self.unavailable:
                context.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver_factory():
    servers = []

    def make(**kw) -> tuple[Receiver, str]:
        rec = Receiver(**kw)
        srv = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, srv)
        port = srv.add_insecure_port("127.0.0.1:0")
        srv.start()
        servers.append(srv)
        return rec, f"127.0.0.1:{port}"

    yield make
    for s in servers:
        s.stop(0)


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in metrics"
    return float(m.group(1))


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _spans(n: int, tid: str) -> list[Span]:
    t0 = time.time_ns() - 10 * 1_000_000_000
    return [Span(trace_id=tid, span_id=new_span_id(), kind="server", source="S",
                 protocol="http", operation=f"GET /item/{i}", status="ok", service="shop",
                 start_ns=t0 + i * MS, end_ns=t0 + i * MS + MS // 2) for i in range(n)]


def _wait(cond, timeout_s: float = 60) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def test_stored_spans_are_forwarded_with_retry(tmp_path, receiver_factory):
    rec, endpoint = receiver_factory(unavailable=3)
    mport = free_port()
    proc, addr = start_server(tmp_path / "data", "--forward-otlp", endpoint,
                              "--metrics", f"127.0.0.1:{mport}")
    try:
        tids = [new_trace_id() for _ in range(3)]
        sent = [s for t in tids for s in _spans(100, t)]
        push(addr, sent)
        assert _wait(lambda: len(rec.spans) >= len(sent)), (len(rec.spans), rec.calls)
        got = {(s.trace_id.hex(), s.span_id.hex(), s.name) for s in rec.spans}
        want = {(s.trace_id, s.span_id, "GET /item/{id}") for s in sent}  # folded names
        assert got == want
        text = _metrics(mport)
        assert _metric(text, "zerotrace_server_forward_spans_total") == len(sent)
        assert _metric(text, "zerotrace_server_forward_retries_total") >= 3
        for reason in ("queue_full", "rejected", "retries_exhausted"):
            assert _metric(text, "zerotrace_server_forward_dropped_spans_total",
                           f'{{reason="{reason}"}}') == 0
        # stored here as well, and readable
        r = zt("trace", tids[0], "-o", "json", "--server", addr)
        assert r.rc == 0, r.err
    finally:
        proc.stop()


def test_refused_spans_are_counted_as_dropped_and_still_stored(tmp_path, receiver_factory):
    rec, endpoint = receiver_factory(refuse=grpc.StatusCode.INVALID_ARGUMENT)
    mport = free_port()
    proc, addr = start_server(tmp_path / "data", "--forward-otlp", endpoint,
                              "--metrics", f"127.0.0.1:{mport}")
    try:
        tid = new_trace_id()
        push(addr, _spans(10, tid))
        key = 'zerotrace_server_forward_dropped_spans_total{reason="rejected"} 10.0'
        assert _wait(lambda: key in _metrics(mport)), _metrics(mport)
        assert rec.calls == 1 and not rec.spans  # not retried: the receiver said no
        assert _metric(_metrics(mport), "zerotrace_server_forward_spans_total") == 0
        r = zt("trace", tid, "-o", "json", "--server", addr)
        assert r.rc == 0, r.err
    finally:
        proc.stop()
