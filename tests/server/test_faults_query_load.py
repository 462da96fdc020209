"""Heavy queries during ingest do not stall pushes (issue 14, item 4).

A real `zerotrace server` process holds ZT_QUERY_SPANS spans (default 300 000,
CI-sized; the issue's stall was `zerotrace dependencies` over 4 M spans blocking a
push for 4.8 s) from many services calling each other.  Two clients then run the
heaviest queries without pause (dependencies, an aggregate search with a duration
bound, services) while 4 agents push small batches as the exporter does, and each
push's latency is recorded.  Push p99 must stay under a bound (PUSH_P99_FACTOR x the
p99 without queries + slack, at least PUSH_P99_FLOOR_S: stated for this 2-vCPU
machine) and under the longest query's time, the median push under the median query:
a push does not wait for a whole query.

It failed before queries had their own chDB sessions: the store held one lock for
queries and inserts, so a push waited for the query in progress (400 000 spans,
queries median 2.6 s, push p99 5.2-7.6 s at load 3-7).
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import grpc
from factory import client_server_pair, now_ns, server_span
from zt_process import ServerProcess

from proto.columns import spans_to_table, table_to_ipc
from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

SPANS = int(os.environ.get("ZT_QUERY_SPANS", "300000"))
SECONDS = float(os.environ.get("ZT_QUERY_SECONDS", "10"))
PUSH_P99_FACTOR = float(os.environ.get("ZT_PUSH_P99_FACTOR", "3.0"))
PUSH_P99_SLACK_S = float(os.environ.get("ZT_PUSH_P99_SLACK_S", "0.5"))
# An absolute floor for the bound, stated for this 2-vCPU machine: pushes alone now take
# ~0.1-0.3 s, and one push in ~100 during heavy queries took 1.5-2.1 s (CPU shared with
# the query threads); the failure this test is about, pushes waiting behind the store's
# one lock, measured 5.2-7.6 s.
PUSH_P99_FLOOR_S = float(os.environ.get("ZT_PUSH_P99_FLOOR_S", "3.0"))
AGENTS = 4
BATCH = 200  # spans a push


def _preload(addr: str) -> None:
    t0 = now_ns() - 600 * 1_000_000_000
    opts = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(addr, options=opts) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        step = 50_000
        for k in range(0, SPANS, step):
            spans = []
            for i in range(k, min(k + step, SPANS), 2):
                c, s = client_server_pair("", "", t0 + i * 1000,
                                          client_service=f"svc-{i % 40}",
                                          server_service=f"svc-{(i // 2) % 40}",
                                          op=f"GET /r/{i % 300}")
                c.trace_id, s.trace_id = f"{i + 1:032x}", f"{i + 1:032x}"
                spans += (c, s)
            req = ingest_pb2.PushRequest(span_columns=table_to_ipc(spans_to_table(spans, "pre")))
            assert stub.Push(req, timeout=300).accepted == len(spans)


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def test_heavy_queries_do_not_stall_pushes(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    query_times: list[float] = []
    alone: list[float] = []  # push latencies with no query running
    during: list[float] = []  # and while the queries run
    failures: list[str] = []
    try:
        _preload(srv.addr)
        stop = threading.Event()
        querying = threading.Event()

        def querier(k: int) -> None:
            with grpc.insecure_channel(srv.addr) as ch:
                q = query_pb2_grpc.QueryServiceStub(ch)
                calls = [
                    lambda: q.Dependencies(query_pb2.DependenciesRequest(), timeout=120),
                    lambda: q.SearchTraces(query_pb2.SearchTracesRequest(
                        min_duration_ns=1_000_000, limit=1000), timeout=120),
                    lambda: q.Services(query_pb2.ServicesRequest(), timeout=120),
                ]
                i = k
                while not stop.is_set():
                    t = time.monotonic()
                    try:
                        calls[i % len(calls)]()
                    except grpc.RpcError as e:
                        failures.append(f"query: {e.code().name} {e.details()}")
                    query_times.append(time.monotonic() - t)
                    i += 1

        def pusher(k: int) -> None:
            with grpc.insecure_channel(srv.addr) as ch:
                stub = ingest_pb2_grpc.IngestServiceStub(ch)
                seq = 0
                while not stop.is_set():
                    req = ingest_pb2.PushRequest(sender_id=f"agent-{k}", sender_seq=seq)
                    req.agent.agent = f"agent-{k}"
                    t0 = now_ns()
                    for j in range(BATCH):
                        span_to_pb(server_span(start_ns=t0 + j, end_ns=t0 + j + 5000,
                                               service=f"live-{k}"), req.spans.add())
                    phase = during if querying.is_set() else alone
                    t = time.monotonic()
                    try:
                        assert stub.Push(req, timeout=60).accepted == BATCH
                    except grpc.RpcError as e:
                        failures.append(f"push: {e.code().name} {e.details()}")
                    # a push that began alone and ended during the queries counts alone
                    phase.append(time.monotonic() - t)
                    seq += 1
                    time.sleep(0.05)

        pushers = [threading.Thread(target=pusher, args=(k,)) for k in range(AGENTS)]
        queriers = [threading.Thread(target=querier, args=(k,)) for k in range(2)]
        for t in pushers:
            t.start()
        time.sleep(SECONDS)
        querying.set()
        for t in queriers:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in pushers + queriers:
            t.join(180)
    finally:
        srv.stop()
    assert not failures, failures[:5]
    # the queriers loop until the end: each query in flight the whole phase
    assert len(alone) >= 20 and len(during) >= 20 and len(query_times) >= 2
    p99_alone, p99_during = _p(alone, 0.99), _p(during, 0.99)
    median_query = statistics.median(query_times)
    print(f"\n{SPANS} spans stored; {len(query_times)} queries (longest "
          f"{max(query_times):.2f} s, median {median_query:.2f} s); pushes of {BATCH} "
          f"without / with queries: {len(alone)} / {len(during)}, p50 "
          f"{_p(alone, 0.5) * 1000:.0f} / {_p(during, 0.5) * 1000:.0f} ms, p99 "
          f"{p99_alone * 1000:.0f} / {p99_during * 1000:.0f} ms, max "
          f"{max(alone) * 1000:.0f} / {max(during) * 1000:.0f} ms; load "
          f"{os.getloadavg()[0]:.1f}")
    bound = max(PUSH_P99_FACTOR * p99_alone + PUSH_P99_SLACK_S, PUSH_P99_FLOOR_S)
    assert p99_during < bound, (
        f"push p99 {p99_during:.2f} s with queries, {p99_alone:.2f} s without (bound "
        f"{bound:.2f} s)")
    # a push never waits for a whole query: the typical push is shorter than the
    # typical query, and the slowest push shorter than the longest query
    assert _p(during, 0.5) < median_query, "pushes waited for whole queries"
    assert p99_during < max(query_times), "a push waited for the longest query"
