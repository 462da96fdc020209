"""Heavy queries during ingest do not stall pushes (issue 14, item 4).

A real `zerotrace server` process holds ZT_QUERY_SPANS spans (default 300 000,
CI-sized; the issue's stall was `zerotrace dependencies` over 4 M spans blocking a
push for 4.8 s) from many services calling each other.  Two clients then run the
heaviest queries without pause (dependencies, an aggregate search with a duration
bound, services) while 4 agents push small batches as the exporter does, and each
push's latency is recorded.  Push p99 must stay under PUSH_P99_BOUND_S (stated for
this 2-vCPU machine, busy with other work) and under the longest query's time: a
push does not wait for a whole query.

Known failing (xfail): the chDB store holds one lock for queries and inserts
(server/storage/chdb_store.py, `ChdbStore._lock` around `_select` and `_insert`), so a
push waits for the query in progress: measured 400 000 spans, queries median 2.6 s,
push p99 5.2-7.6 s (load 3-7).  The fix is storage-side (reads apart from writes).
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import grpc
import pytest
from factory import client_server_pair, now_ns, server_span
from zt_process import ServerProcess

from proto.columns import spans_to_table, table_to_ipc
from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

SPANS = int(os.environ.get("ZT_QUERY_SPANS", "300000"))
SECONDS = float(os.environ.get("ZT_QUERY_SECONDS", "10"))
PUSH_P99_BOUND_S = float(os.environ.get("ZT_PUSH_P99_BOUND_S", "2.0"))
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


@pytest.mark.xfail(reason="one store lock serialises queries and inserts "
                   "(ChdbStore._lock): storage-side fix pending", strict=False)
def test_heavy_queries_do_not_stall_pushes(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        _preload(srv.addr)
        stop = threading.Event()
        query_times: list[float] = []
        push_times: list[float] = []
        failures: list[str] = []

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
                    t = time.monotonic()
                    try:
                        assert stub.Push(req, timeout=60).accepted == BATCH
                    except grpc.RpcError as e:
                        failures.append(f"push: {e.code().name} {e.details()}")
                    push_times.append(time.monotonic() - t)
                    seq += 1
                    time.sleep(0.05)

        threads = ([threading.Thread(target=querier, args=(k,)) for k in range(2)]
                   + [threading.Thread(target=pusher, args=(k,)) for k in range(AGENTS)])
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join(180)
    finally:
        srv.stop()
    push_times.sort()
    p50 = statistics.median(push_times)
    p99 = push_times[min(len(push_times) - 1, int(len(push_times) * 0.99))]
    slowest_query = max(query_times)
    print(f"\n{SPANS} spans stored; {len(query_times)} queries (longest {slowest_query:.2f} s, "
          f"median {statistics.median(query_times):.2f} s); {len(push_times)} pushes of "
          f"{BATCH}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
          f"{push_times[-1] * 1000:.0f} ms; load {os.getloadavg()[0]:.1f}")
    assert not failures, failures[:5]
    assert len(push_times) >= 20 and len(query_times) >= 4
    assert p99 < PUSH_P99_BOUND_S, f"push p99 {p99:.2f} s"
