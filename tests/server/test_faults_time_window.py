"""Span times outside the ingest window are refused on every wire (issue 14, items 4, 6).

A real server on loopback keeps 30 days (retention) and refuses what ends more than a
day ahead of its clock: spans 2 days ahead and 40 days old are refused with a reason
naming the span and the window, counted per sender (spans_rejected, reason
time_window), and the rest of their batch is stored and acked, on agent protobuf,
agent Arrow and OTLP/gRPC pushes.  A batch whose spans cover 300 days (none in the
future, no retention) is stored whole; one entirely in the future is acked as refused,
not failed, so its sender does not retry it forever.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from factory import now_ns, server_span
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from proto.columns import spans_to_table, table_to_ipc
from proto.convert import span_to_pb
from proto.span import new_trace_id
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc

DAY = 86_400 * 1_000_000_000


@pytest.fixture
def srv(chdb_root):
    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"tw_{uuid.uuid4().hex[:12]}")
    s = ZerotraceServer("127.0.0.1:0", store=store, retention_s=30 * 86_400,
                        retention_interval_s=3600)
    s.addr = f"127.0.0.1:{s.start()}"
    yield s
    s.stop(grace=0.5)
    store.drop()


def _mixed(tid: str):
    now = now_ns()
    good = [server_span(tid, start_ns=now - k * DAY, end_ns=now - k * DAY + 5000,
                        service="tw") for k in (0, 1, 29)]
    ahead = server_span(tid, start_ns=now + 2 * DAY, end_ns=now + 2 * DAY + 5000,
                        service="tw")
    old = server_span(tid, start_ns=now - 40 * DAY, end_ns=now - 40 * DAY + 5000,
                      service="tw")
    return good, ahead, old


def _check_errors(errors, ahead, old) -> None:
    text = " ".join(errors)
    assert f"span {ahead.span_id} of trace {ahead.trace_id}" in text
    assert "2.0 days ahead of the server's clock" in text and "check the sender's clock" in text
    assert f"span {old.span_id}" in text and "40.0 days old" in text
    assert "older than the ingest window (30.0 days" in text


def _push(addr: str, req: ingest_pb2.PushRequest) -> ingest_pb2.PushResponse:
    with grpc.insecure_channel(addr) as ch:
        return ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=30)


@pytest.mark.parametrize("wire", ["protobuf", "arrow"])
def test_agent_push_outside_the_window_refused_rest_stored(srv, wire):
    tid = new_trace_id()
    good, ahead, old = _mixed(tid)
    spans = [good[0], ahead, good[1], old, good[2]]
    req = ingest_pb2.PushRequest()
    req.agent.agent = f"tw-{wire}"
    if wire == "arrow":
        req.span_columns = table_to_ipc(spans_to_table(spans, "tw"))
    else:
        for s in spans:
            span_to_pb(s, req.spans.add())
    r = _push(srv.addr, req)
    assert (r.accepted, r.rejected) == (3, 2), r
    _check_errors(r.errors, ahead, old)
    stored = srv.store.get_trace(tid)
    assert sorted(s.span_id for s in stored) == sorted(s.span_id for s in good)
    st = srv.admissions["zerotrace"].snapshot()[f"tw-{wire}"]
    assert (st.accepted, st.rejected, st.out_of_window, st.failed) == (3, 2, 2, 0)


def test_otlp_outside_the_window_refused_rest_stored(srv):
    tid = new_trace_id()
    now = now_ns()
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "tw-otlp"
    scope = rs.scope_spans.add()
    for k, t in enumerate([now, now + 2 * DAY, now - 40 * DAY, now - DAY]):
        sp = scope.spans.add()
        sp.trace_id, sp.span_id = bytes.fromhex(tid), bytes([k + 1]) * 8
        sp.name, sp.kind = f"op{k}", trace_pb2.Span.SPAN_KIND_SERVER
        sp.start_time_unix_nano, sp.end_time_unix_nano = t, t + 5000
    with grpc.insecure_channel(srv.addr) as ch:
        r = trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=30)
    assert r.partial_success.rejected_spans == 2
    msg = r.partial_success.error_message
    assert "ahead of the server's clock" in msg and "40.0 days old" in msg
    assert sorted(s.operation for s in srv.store.get_trace(tid)) == ["op0", "op3"]
    snap = srv.admissions["otlp"].snapshot()
    assert sum(st.out_of_window for st in snap.values()) == 2


def test_window_counter_is_exported(srv):
    from server.metrics import ServerCollector

    req = ingest_pb2.PushRequest()
    req.agent.agent = "tw-metrics"
    now = now_ns()
    span_to_pb(server_span(start_ns=now + 3 * DAY, end_ns=now + 3 * DAY + 1), req.spans.add())
    assert _push(srv.addr, req).rejected == 1
    fams = {m.name: m for m in ServerCollector(srv.admissions, srv.writer).collect()}
    samples = {(s.labels["sender"], s.labels["reason"]): s.value
               for s in fams["zerotrace_server_spans_rejected"].samples
               if s.labels["protocol"] == "zerotrace"}
    assert samples[("tw-metrics", "time_window")] == 1
    assert samples[("tw-metrics", "invalid")] == 0


def test_a_batch_over_300_days_is_stored_or_refused_never_failed(zt_server):
    """No retention: the past is unbounded, so 300 days of spans are stored whole
    (one partition a day: ClickHouse's 100-partition limit is lifted); spans all in
    the future are refused with reasons and the batch acked, not failed."""
    tid = new_trace_id()
    now = now_ns()
    spans = [server_span(tid, start_ns=now - k * DAY, end_ns=now - k * DAY + 5000)
             for k in range(0, 300, 2)]
    req = ingest_pb2.PushRequest(span_columns=table_to_ipc(spans_to_table(spans, "t")))
    r = _push(zt_server.addr, req)
    assert (r.accepted, r.rejected) == (150, 0)
    assert len(zt_server.store.get_trace(tid)) == 150
    future = ingest_pb2.PushRequest()
    for k in range(3):
        t = now + (k + 2) * DAY
        span_to_pb(server_span(start_ns=t, end_ns=t + 1), future.spans.add())
    r = _push(zt_server.addr, future)  # no RpcError: an ack, nothing to retry
    assert (r.accepted, r.rejected) == (0, 3)
    assert all("ahead of the server's clock" in e for e in r.errors)


def test_max_future_flag_of_the_server_command(tmp_path):
    """`zerotrace server --max-future 1h`: a span ending 2 h ahead is refused, one 30 min
    ahead stored (the default window is a day)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0", "--data",
         str(tmp_path / "data"), "--http", "", "--max-future", "1h"], cwd=repo,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        addr = line.split("listening on ")[1].split()[0]
        now = now_ns()
        hour = 3600 * 10**9
        tid = new_trace_id()
        near = server_span(tid, start_ns=now + hour // 2, end_ns=now + hour // 2 + 5000)
        far = server_span(tid, start_ns=now + 2 * hour, end_ns=now + 2 * hour + 5000)
        req = ingest_pb2.PushRequest()
        req.agent.agent = "tw-flag"
        for s in (near, far):
            span_to_pb(s, req.spans.add())
        r = _push(addr, req)
        assert (r.accepted, r.rejected) == (1, 1), r
        assert f"span {far.span_id}" in " ".join(r.errors)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
