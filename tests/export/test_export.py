"""Agent exporter: batching, bounded buffer, retries, counters; gRPC and OTLP wire."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from agent.export import BatchExporter, ExportResult, InMemoryExporter, SpanExporter
from agent.export.grpc_exporter import GrpcSpanExporter
from agent.export.otlp_exporter import OtlpSpanExporter
from proto.columns import ipc_to_table, spans_from_table
from proto.convert import span_from_pb
from proto.span import Endpoint, Span, new_trace_id
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc


def spans(n: int, tid: str | None = None) -> list[Span]:
    tid = tid or new_trace_id()
    return [
        Span(
            trace_id=tid,
            kind="server",
            service="svc",
            operation=f"op{i}",
            start_ns=1_000 + i,
            end_ns=2_000 + i,
        )
        for i in range(n)
    ]


def test_batches_by_size_and_flush():
    mem = InMemoryExporter()
    b = BatchExporter(mem, max_batch=100, schedule_delay_s=5)
    b.submit(spans(250))
    assert b.force_flush(5)
    assert len(mem.spans) == 250 and mem.batches == 3
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 250
    assert m["zerotrace_export_batches_sent_total"] == 3
    assert m["zerotrace_export_queue_spans"] == 0
    b.shutdown()
    assert mem.stopped


def test_delay_exports_small_batches():
    mem = InMemoryExporter()
    b = BatchExporter(mem, max_batch=1000, schedule_delay_s=0.05)
    b.submit(spans(3))
    deadline = time.monotonic() + 5
    while len(mem.spans) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(mem.spans) == 3
    b.shutdown()


class _Stuck(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.got = 0

    def export(self, batch):
        self.release.wait(10)
        self.got += len(batch)
        return ExportResult.SUCCESS


def test_never_blocks_and_counts_drops_when_full():
    ex = _Stuck()
    b = BatchExporter(ex, max_queue_spans=1000, max_batch=100, schedule_delay_s=0.01)
    b.submit(spans(100))
    time.sleep(0.1)  # the worker now holds one batch, stuck in export
    t = time.perf_counter()
    accepted = sum(b.submit(spans(100)) for _ in range(50))
    assert time.perf_counter() - t < 0.5  # 5 000 spans offered without waiting
    assert accepted == 1000
    m = b.metrics()
    assert m["zerotrace_export_dropped_queue_full_total"] == 4000
    assert m["zerotrace_export_queue_spans"] == 1000
    ex.release.set()
    assert b.force_flush(10)
    assert ex.got == 1100
    b.shutdown()


def test_retry_with_backoff_then_success():
    mem = InMemoryExporter()
    mem.fail_next = [ExportResult.RETRYABLE, ExportResult.RETRYABLE]
    b = BatchExporter(mem, schedule_delay_s=0.01, backoff_initial_s=0.01)
    b.submit(spans(10))
    assert b.force_flush(5)
    m = b.metrics()
    assert len(mem.spans) == 10
    assert m["zerotrace_export_retries_total"] == 2
    assert m["zerotrace_export_dropped_total"] == 0
    b.shutdown()


def test_retries_exhausted_and_refused_are_dropped_and_counted():
    mem = InMemoryExporter()
    mem.fail_next = [ExportResult.RETRYABLE] * 3 + [ExportResult.FAILURE]
    b = BatchExporter(
        mem, max_batch=10, schedule_delay_s=0.01, max_attempts=3, backoff_initial_s=0.001
    )
    b.submit(spans(10))
    assert b.force_flush(5)
    b.submit(spans(10))
    assert b.force_flush(5)
    b.submit(spans(5))
    assert b.force_flush(5)
    m = b.metrics()
    assert m["zerotrace_export_dropped_retries_exhausted_total"] == 10
    assert m["zerotrace_export_dropped_refused_total"] == 10
    assert m["zerotrace_export_sent_total"] == 5
    b.shutdown()


def test_exporter_exception_is_retried_not_fatal():
    class Boom(InMemoryExporter):
        calls = 0

        def export(self, batch):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return super().export(batch)

    ex = Boom()
    b = BatchExporter(ex, schedule_delay_s=0.01, backoff_initial_s=0.001)
    b.submit(spans(4))
    assert b.force_flush(5)
    assert len(ex.spans) == 4
    b.shutdown()


def test_shutdown_drops_and_counts_what_cannot_be_sent():
    ex = _Stuck()
    b = BatchExporter(ex, max_batch=10, schedule_delay_s=0.01)
    b.submit(spans(50))
    time.sleep(0.05)
    t = time.perf_counter()
    b.shutdown(timeout_s=0.3)
    assert time.perf_counter() - t < 2
    m = b.metrics()
    assert m["zerotrace_export_dropped_shutdown_total"] >= 30
    assert b.submit(spans(3)) == 0
    ex.release.set()


# -- wire exporters against fake servers ------------------------------------------


def received(req: ingest_pb2.PushRequest) -> list[Span]:
    """The spans of a push, whichever wire carried them."""
    if req.span_columns:
        assert not req.spans
        return spans_from_table(ipc_to_table(req.span_columns))
    return [span_from_pb(m) for m in req.spans]


class _Ingest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ingest_pb2.PushRequest] = []
        self.fail = 0
        self.reject = 0  # spans of the next batch to refuse as invalid, as the server does
        self.old = False  # a server from before span_columns: it sees only `spans`
        self.short = 0  # spans of the next batch neither stored nor refused

    def Push(self, request, context):  # noqa: N802
        if self.fail:
            self.fail -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "try later")
        self.requests.append(request)
        n = len(request.spans) if self.old else len(received(request))
        rejected, self.reject = min(self.reject, n), 0
        n, self.short = n - self.short, 0
        return ingest_pb2.PushResponse(accepted=n - rejected,
                                       rejected=rejected,
                                       errors=["span 0: end_ns before start_ns"] * rejected)


class _Otlp(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list = []

    def Export(self, request, context):  # noqa: N802
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def fake_server():
    srv = grpc.server(futures.ThreadPoolExecutor(4))
    ingest, otlp = _Ingest(), _Otlp()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, srv)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(otlp, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", ingest, otlp
    srv.stop(0)


@pytest.mark.parametrize("wire", ["arrow", "protobuf"])
def test_grpc_exporter_round_trip_and_identity(fake_server, wire):
    addr, ingest, _ = fake_server
    ingest.fail = 1
    ex = GrpcSpanExporter(addr, agent="node-7", wire=wire)
    batch = spans(5)
    batch[0].local = Endpoint("10.0.0.1", 80)
    batch[0].req_seq = 123
    batch[0].attributes = {"n": 5, "s": "x"}
    assert ex.export(batch) is ExportResult.RETRYABLE
    assert "UNAVAILABLE" in ex.last_error
    batch[1].agent = "relayed-from-node-3"
    assert ex.export(batch) is ExportResult.SUCCESS
    (req,) = ingest.requests
    assert req.agent.agent == "node-7" and req.agent.instance
    batch[1].agent = "relayed-from-node-3"
    for s in batch:  # the exporter stamps its name on spans that name no agent
        if not s.agent:
            s.agent = "node-7"
    assert bool(req.span_columns) == (wire == "arrow")
    assert received(req) == batch
    ex.shutdown()


def test_grpc_exporter_unreachable_is_retryable_and_bounded_in_time():
    ex = GrpcSpanExporter("127.0.0.1:1", timeout_s=1)
    t = time.perf_counter()
    assert ex.export(spans(1)) is ExportResult.RETRYABLE
    assert time.perf_counter() - t < 3
    ex.shutdown()


def test_batcher_delivers_after_server_outage(fake_server):
    addr, ingest, _ = fake_server
    ingest.fail = 3
    b = BatchExporter(GrpcSpanExporter(addr), schedule_delay_s=0.01, backoff_initial_s=0.01)
    b.submit(spans(20))
    assert b.force_flush(10)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 20 and m["zerotrace_export_retries_total"] == 3
    assert sum(len(received(r)) for r in ingest.requests) == 20
    b.shutdown()


def test_otlp_exporter(fake_server):
    addr, _, otlp = fake_server
    s = Span(
        trace_id=new_trace_id(),
        kind="client",
        service="front",
        operation="GET /x",
        status="error",
        error="boom",
        start_ns=10,
        end_ns=20,
        pid=42,
        req_seq=9,
        local=Endpoint("10.0.0.1", 5000),
        remote=Endpoint("10.0.0.2", 80),
        attributes={"http.response.status_code": 503},
        resource={"k8s.pod.name": "p"},
    )
    parent = Span(
        trace_id=s.trace_id, service="front", start_ns=0, end_ns=30, resource={"k8s.pod.name": "p"}
    )
    s.parent_span_id = parent.span_id
    ex = OtlpSpanExporter(addr)
    assert ex.export([parent, s]) is ExportResult.SUCCESS
    (req,) = otlp.requests
    rs = req.resource_spans[0]
    res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
    assert res["service.name"] == "front" and res["k8s.pod.name"] == "p"
    o = {x.span_id.hex(): x for x in rs.scope_spans[0].spans}[s.span_id]
    assert o.trace_id.hex() == s.trace_id and o.parent_span_id.hex() == parent.span_id
    assert o.name == "GET /x" and o.status.code == 2 and o.status.message == "boom"
    attrs = {kv.key: kv.value for kv in o.attributes}
    assert attrs["http.response.status_code"].int_value == 503
    assert attrs["zerotrace.req_seq"].int_value == 9
    assert attrs["network.peer.address"].string_value == "10.0.0.2"
    ex.shutdown()


@pytest.mark.parametrize("wire", ["arrow", "protobuf"])
def test_one_malformed_span_is_dropped_alone_and_counted(fake_server, wire):
    addr, ingest, _ = fake_server
    b = BatchExporter(GrpcSpanExporter(addr, wire=wire), schedule_delay_s=0.01,
                      backoff_initial_s=0.01)
    batch = spans(5)
    batch[2].trace_id = "g" * 32  # e.g. from a malformed traceparent header
    batch[3].pid = -1  # a value its column cannot hold
    b.submit(batch)
    assert b.force_flush(10)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 3
    assert m["zerotrace_export_dropped_invalid_total"] == 2
    assert m["zerotrace_export_retries_total"] == 0
    assert [s.operation for r in ingest.requests for s in received(r)] == ["op0", "op1", "op4"]
    b.shutdown()


def test_spans_the_server_rejects_are_counted_as_dropped(fake_server):
    addr, ingest, _ = fake_server
    ingest.reject = 2
    b = BatchExporter(GrpcSpanExporter(addr), schedule_delay_s=0.01)
    b.submit(spans(6))
    assert b.force_flush(10)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 4
    assert m["zerotrace_export_dropped_rejected_total"] == 2
    assert m["zerotrace_export_dropped_total"] == 2
    b.shutdown()


def test_otlp_exporter_drops_a_malformed_span_alone(fake_server):
    addr, _, otlp = fake_server
    b = BatchExporter(OtlpSpanExporter(addr), schedule_delay_s=0.01)
    batch = spans(3)
    batch[0].trace_id = "z" * 32
    b.submit(batch)
    assert b.force_flush(10)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 2
    assert m["zerotrace_export_dropped_invalid_total"] == 1
    assert sum(len(ss.spans) for r in otlp.requests for rs in r.resource_spans
               for ss in rs.scope_spans) == 2
    b.shutdown()


def test_an_older_server_gets_protobuf_and_nothing_is_lost(fake_server):
    # It would ack an Arrow batch 0/0 (it never reads span_columns).
    addr, ingest, _ = fake_server
    ingest.old = True
    b = BatchExporter(GrpcSpanExporter(addr), schedule_delay_s=0.01, backoff_initial_s=0.01)
    b.submit(spans(7))
    assert b.force_flush(10)
    b.submit(spans(3))
    assert b.force_flush(10)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 10 and m["zerotrace_export_dropped_total"] == 0
    assert [bool(r.span_columns) for r in ingest.requests] == [True, False, False]
    assert sum(len(r.spans) for r in ingest.requests) == 10
    b.shutdown()


def test_spans_acked_without_being_stored_are_counted_as_dropped(fake_server):
    addr, ingest, _ = fake_server
    ingest.short = 2
    b = BatchExporter(GrpcSpanExporter(addr), schedule_delay_s=0.01)
    b.submit(spans(6))
    assert b.force_flush(10)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 4
    assert m["zerotrace_export_dropped_unacknowledged_total"] == 2
    b.shutdown()
