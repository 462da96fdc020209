"""Searches over many traces: ids travel as a bound parameter, not in the SQL text
(issue 14, item 5).

With the ids spliced into the query, a search whose candidates run into tens of
thousands (60 000 short traces, `traces --since 1h --min-duration 1ms`: each is a
candidate by the rounded index bound, none matches) or a `--limit 10000` search made
a query text above ClickHouse's max_query_size and failed with "Max query size
exceeded".  Both run here through the CLI against a real server on loopback.
"""

from __future__ import annotations

import json

import grpc
import pytest
from cli_capture import run_cli
from factory import now_ns, server_span

from proto.columns import spans_to_table, table_to_ipc
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc

N = 60_000
LONG = 5  # traces of 3 ms among the short ones


@pytest.fixture(scope="module")
def many(chdb_root):
    """A server holding N one-span traces of 0.4 ms and LONG of 3 ms, pushed as Arrow."""
    import uuid

    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"ids_{uuid.uuid4().hex[:12]}")
    srv = ZerotraceServer("127.0.0.1:0", store=store)
    srv.start()
    addr = f"127.0.0.1:{srv.port}"
    t0 = now_ns() - 60_000_000_000
    spans = [server_span(start_ns=t0 + i * 100_000, end_ns=t0 + i * 100_000 + 400_000,
                         service="short", operation="GET /x") for i in range(N)]
    long_ = [server_span(start_ns=t0 + i * 1_000_000, end_ns=t0 + i * 1_000_000 + 3_000_000,
                         service="long", operation="GET /slow") for i in range(LONG)]
    all_spans = spans + long_
    with grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        for i in range(0, len(all_spans), 20_000):
            batch = all_spans[i:i + 20_000]
            req = ingest_pb2.PushRequest(span_columns=table_to_ipc(spans_to_table(batch, "ids")))
            assert stub.Push(req, timeout=120).accepted == len(batch)
    srv.addr = addr
    srv.long_ids = {s.trace_id for s in long_}
    yield srv
    srv.stop(grace=0.5)
    store.drop()


def test_min_duration_over_60000_short_traces(many, capsys):
    rc, out, err = run_cli(capsys, "traces", "--since", "1h", "--min-duration", "1ms",
                           "--server", many.addr, "-o", "json", "--timeout", "120")
    assert rc == 0, err
    assert {t["trace_id"] for t in json.loads(out)} == many.long_ids


def test_limit_10000(many, capsys):
    rc, out, err = run_cli(capsys, "traces", "--since", "1h", "--limit", "10000",
                           "--server", many.addr, "-o", "json", "--timeout", "120")
    assert rc == 0, err
    rows = json.loads(out)
    assert len(rows) == 10_000
    assert len({r["trace_id"] for r in rows}) == 10_000
    starts = [r["start_ns"] for r in rows]
    assert starts == sorted(starts, reverse=True)


def test_get_traces_by_many_ids(many):
    """The store reads 30 000 traces by id in one call (the aggregate flame graph path)."""
    rows = many.store._select(
        f"SELECT lower(hex(trace_id)) AS t FROM {many.store.table} LIMIT 30000")
    ids = [r["t"] for r in rows]
    got = many.store.get_traces(ids)
    assert {s.trace_id for s in got} == set(ids)
    # A trace id never reaches the SQL text: a malformed one is refused before any query.
    with pytest.raises(ValueError):
        many.store.get_traces(["'); DROP TABLE x; --"])
