"""A batch whose spans cover more than 100 days is stored (issue 14, item 6).

The span table is partitioned by day and ClickHouse refuses, by default, an insert
into more than 100 partitions; the server reported that as a storage failure
(UNAVAILABLE, "retry later"), so the sender retried a batch that could never be
stored, forever.
"""

from __future__ import annotations

import grpc
import pytest
from factory import now_ns, server_span

from proto.columns import spans_to_table, table_to_ipc
from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

DAY = 86_400 * 10**9


@pytest.mark.parametrize("wire", ["arrow", "protobuf"])
def test_batch_over_150_days_is_stored(zt_server, wire):
    t = now_ns()
    spans = [server_span(start_ns=t - i * DAY, end_ns=t - i * DAY + 1000) for i in range(150)]
    req = ingest_pb2.PushRequest()
    if wire == "arrow":
        req.span_columns = table_to_ipc(spans_to_table(spans, "days"))
    else:
        for s in spans:
            span_to_pb(s, req.spans.add())
    with grpc.insecure_channel(zt_server.addr) as ch:
        r = ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=60)
        assert (r.accepted, r.rejected) == (150, 0)
        q = query_pb2_grpc.QueryServiceStub(ch)
        for s in (spans[0], spans[-1]):
            got = q.GetTrace(query_pb2.GetTraceRequest(trace_id=s.trace_id), timeout=20)
            assert [m.start_ns for m in got.spans] == [s.start_ns]
