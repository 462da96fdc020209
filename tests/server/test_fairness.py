"""An agent that floods the server does not take ingest from the others.

A real server (gRPC, group commit, chDB) takes a flood of big batches from one agent,
sent from many threads at once, while another agent pushes small batches one at a
time: every batch of the quiet agent is stored and acked, and quickly; the flooder is
told RESOURCE_EXHAUSTED (which agents retry with backoff) for what it sends beyond its
share; the server's metrics say so per sender.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid

import grpc
import pytest
from factory import now_ns, server_span

from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc


@pytest.fixture
def metered_server(chdb_root):
    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"fair_{uuid.uuid4().hex[:12]}")
    srv = ZerotraceServer("127.0.0.1:0", store=store, workers=8,
                          metrics_listen="127.0.0.1:0")
    srv.start()
    srv.addr = f"127.0.0.1:{srv.port}"
    yield srv
    srv.stop(grace=0.5)
    store.drop()


def _request(agent: str, n: int) -> tuple[ingest_pb2.PushRequest, list[str]]:
    req = ingest_pb2.PushRequest()
    req.agent.agent = agent
    t = now_ns()
    traces = []
    for i in range(n):
        s = server_span(start_ns=t + i, end_ns=t + i + 1000, service=agent, operation="GET /x")
        traces.append(s.trace_id)
        span_to_pb(s, req.spans.add())
    return req, traces


def _metric(text: str, name: str, sender: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'sender="{sender}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_flooding_agent_does_not_starve_the_others(metered_server):
    addr = metered_server.addr
    flood_req, _ = _request("flood", 5000)
    stop = threading.Event()
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def flood() -> None:
        with grpc.insecure_channel(addr) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            while not stop.is_set():
                try:
                    stub.Push(flood_req, timeout=30)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(12)]
    for t in floods:
        t.start()
    time.sleep(1.0)  # the flood is under way
    latencies = []
    stored_traces = []
    try:
        with grpc.insecure_channel(addr) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            for _ in range(15):
                req, traces = _request("quiet", 50)
                t0 = time.monotonic()
                resp = stub.Push(req, timeout=30)  # raises if refused: must not be
                latencies.append(time.monotonic() - t0)
                assert resp.accepted == 50
                stored_traces += traces
                time.sleep(0.05)
    finally:
        stop.set()
        for t in floods:
            t.join(timeout=60)
    print(f"flood outcomes {codes}; quiet push latency max {max(latencies):.3f} s, "
          f"median {sorted(latencies)[len(latencies) // 2]:.3f} s")
    assert codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes  # the flood was held back
    assert codes.get("OK", 0) > 0, codes  # ...to its share, not shut out
    assert max(latencies) < 5.0, latencies

    # Acked means stored: every quiet span is there.
    with grpc.insecure_channel(addr) as ch:
        q = query_pb2_grpc.QueryServiceStub(ch)
        for tid in stored_traces[::50]:
            r = q.GetTrace(query_pb2.GetTraceRequest(trace_id=tid), timeout=20)
            assert len(r.spans) == 1

    url = f"http://127.0.0.1:{metered_server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert _metric(text, "zerotrace_server_spans_accepted_total", "quiet") == 750
    assert _metric(text, "zerotrace_server_batches_throttled_total", "quiet") == 0
    throttled = _metric(text, "zerotrace_server_batches_throttled_total", "flood")
    assert throttled == codes["RESOURCE_EXHAUSTED"]
    assert _metric(text, "zerotrace_server_spans_accepted_total", "flood") == 5000 * codes["OK"]
