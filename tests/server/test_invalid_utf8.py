"""Invalid UTF-8 cannot break queries (issue 14, item 2).

A protobuf span with invalid UTF-8 in a string field used to be stored as it was;
afterwards `Services`, `SearchTraces` and `GetTrace` failed for everyone.  Now:
- zerotrace protobuf wire: such a span is refused with a reason, the rest of its
  batch stored;
- Arrow wire: the batch is refused as invalid Arrow (INVALID_ARGUMENT, with a reason);
- OTLP wire: the request cannot be decoded: INVALID_ARGUMENT with the reason, nothing
  is stored (one OTLP request is one protobuf message; it has no per-span framing);
- and data that is already stored (a database written before this check) is read
  with the bad bytes replaced by U+FFFD, so queries never fail because of it.
"""

from __future__ import annotations

import grpc
import pyarrow as pa
import pytest
from cli_capture import run_cli
from factory import now_ns, server_span
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from proto.columns import spans_to_table, table_to_ipc
from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

MARK = "svcMARK1"  # replaced by invalid UTF-8 of the same length on the wire
BAD = b"svc\xff\xfe\xc3(1"


def _poison(raw: bytes) -> bytes:
    assert raw.count(MARK.encode()) >= 1
    return raw.replace(MARK.encode(), BAD)


def _queries_work(addr: str, tid: str | None = None) -> None:
    with grpc.insecure_channel(addr) as ch:
        q = query_pb2_grpc.QueryServiceStub(ch)
        q.Services(query_pb2.ServicesRequest(), timeout=20)
        q.SearchTraces(query_pb2.SearchTracesRequest(limit=100), timeout=20)
        q.Dependencies(query_pb2.DependenciesRequest(), timeout=20)
        if tid:
            q.GetTrace(query_pb2.GetTraceRequest(trace_id=tid), timeout=20)


def _push_raw(addr: str, spans_raw: list[bytes], agent: str = "utf8") -> ingest_pb2.PushResponse:
    env = ingest_pb2.PushEnvelope(spans=spans_raw)
    env.agent.agent = agent
    with grpc.insecure_channel(addr) as ch:
        push = ch.unary_unary("/zerotrace.v1.IngestService/Push",
                              request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=ingest_pb2.PushResponse.FromString)
        return push(env, timeout=20)


@pytest.mark.parametrize("field", ["service", "operation", "attribute value", "attribute key",
                                   "resource", "trace header"])
def test_protobuf_span_with_invalid_utf8_is_refused(zt_server, field):
    t0 = now_ns()
    kw = {"service": "ok", "operation": "GET /"}
    if field in ("service", "operation"):
        kw[field] = MARK
    elif field == "attribute value":
        kw["attributes"] = {"k": MARK}
    elif field == "attribute key":
        kw["attributes"] = {MARK: "v"}
    elif field == "resource":
        kw["resource"] = {"k8s.pod.name": MARK}
    else:
        kw["trace_headers"] = {"x-request-id": MARK}
    bad = server_span(start_ns=t0, end_ns=t0 + 10, **kw)
    good = [server_span(start_ns=t0, end_ns=t0 + 10, service="fine") for _ in range(3)]
    raws = [span_to_pb(s).SerializeToString() for s in good[:1] + [bad] + good[1:]]
    raws[1] = _poison(raws[1])
    r = _push_raw(zt_server.addr, raws)
    assert (r.accepted, r.rejected) == (3, 1)
    assert r.errors and r.errors[0].startswith("span 1: ") and "UTF-8" in r.errors[0]
    _queries_work(zt_server.addr, good[0].trace_id)
    with grpc.insecure_channel(zt_server.addr) as ch:
        q = query_pb2_grpc.QueryServiceStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            q.GetTrace(query_pb2.GetTraceRequest(trace_id=bad.trace_id), timeout=20)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND


def test_arrow_batch_with_invalid_utf8_is_refused(zt_server):
    t0 = now_ns()
    table = spans_to_table([server_span(start_ns=t0, end_ns=t0 + 1, service=MARK)], "a")
    i = table.schema.get_field_index("service")
    col = table.column(i)
    # Same bytes with the marker poisoned, relabelled as strings without validation.
    raw = pa.array([_poison(v.as_py().encode()) for v in col.combine_chunks().dictionary]
                   if pa.types.is_dictionary(col.type) else
                   [_poison(v.as_py().encode()) for v in col], pa.binary())
    if pa.types.is_dictionary(col.type):
        arr = pa.DictionaryArray.from_arrays(col.combine_chunks().indices, raw.view(pa.string()))
    else:
        arr = raw.view(pa.string())
    bad = table.set_column(i, table.schema.field(i), arr)
    req = ingest_pb2.PushRequest(span_columns=table_to_ipc(bad))
    with grpc.insecure_channel(zt_server.addr) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=20)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in ei.value.details() or "utf" in ei.value.details().lower()
    _queries_work(zt_server.addr)


def test_otlp_request_with_invalid_utf8_stores_nothing(zt_server):
    from opentelemetry.proto.trace.v1 import trace_pb2

    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", MARK
    sp = rs.scope_spans.add().spans.add()
    sp.trace_id, sp.span_id, sp.name = b"\x01" * 16, b"\x02" * 8, "op"
    sp.start_time_unix_nano, sp.end_time_unix_nano = now_ns(), now_ns() + 5
    sp.kind = trace_pb2.Span.SPAN_KIND_SERVER
    raw = _poison(req.SerializeToString())
    with grpc.insecure_channel(zt_server.addr) as ch:
        export = ch.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda b: b,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        with pytest.raises(grpc.RpcError) as ei:
            export(raw, timeout=20)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in ei.value.details() and "nothing stored" in ei.value.details()
    _queries_work(zt_server.addr)
    with grpc.insecure_channel(zt_server.addr) as ch:
        r = query_pb2_grpc.QueryServiceStub(ch).Services(query_pb2.ServicesRequest(), timeout=20)
    assert all("svc" not in s.service for s in r.services)


def test_stored_invalid_utf8_does_not_break_queries(zt_server, capsys):
    """Rows written before the check (straight into the store here) read back with
    U+FFFD in place of the bad bytes: every query and the CLI still work."""
    t0 = now_ns()
    s = server_span(start_ns=t0, end_ns=t0 + 2_000_000, service=MARK, operation=MARK,
                    attributes={"k": MARK})
    # The table as an older server stored such a span: the IPC bytes poisoned, read
    # back without the UTF-8 validation ingest applies (IPC reads check no text).
    raw = _poison(table_to_ipc(spans_to_table([s]), compress=False))
    with pa.ipc.open_stream(pa.py_buffer(raw)) as r:
        poisoned = r.read_all()
    assert zt_server.store.write(poisoned) == 1
    _queries_work(zt_server.addr, s.trace_id)
    with grpc.insecure_channel(zt_server.addr) as ch:
        q = query_pb2_grpc.QueryServiceStub(ch)
        r = q.GetTrace(query_pb2.GetTraceRequest(trace_id=s.trace_id), timeout=20)
        assert r.spans[0].service.startswith("svc\ufffd")
        found = q.SearchTraces(query_pb2.SearchTracesRequest(min_duration_ns=1_000_000),
                               timeout=20)
        assert s.trace_id in [t.trace_id for t in found.traces]
    for argv in (["services"], ["traces"], ["trace", s.trace_id], ["dependencies"]):
        rc, out, err = run_cli(capsys, *argv, "--server", zt_server.addr, "-o", "json")
        assert rc == 0, (argv, err)
