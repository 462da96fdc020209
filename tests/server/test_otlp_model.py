"""OTLP fields the SDK does not set but the model has, and the caps on what is kept:
sent as raw `ExportTraceServiceRequest`s over gRPC, read back with `-o otlp-json`."""

from __future__ import annotations

import json
import os

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from server.http.otlp_http import _hex_to_base64
from server.ingest.caps import FLAG, MAX_VALUE_BYTES
from server.ingest.otlp import MAX_EVENTS, MAX_LINKS, MODEL_KEY
from tests.server.cli_capture import run_cli

T0 = 1_700_000_000_000_000_000


def _export(addr: str, req) -> trace_service_pb2.ExportTraceServiceResponse:
    with grpc.insecure_channel(addr) as ch:
        return trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=60)


def _back(capsys, addr: str, tid: bytes) -> dict[bytes, tuple]:
    rc, out, err = run_cli(capsys, "trace", tid.hex(), "--server", addr, "-o", "otlp-json")
    assert rc == 0, err
    td = json_format.ParseDict(_hex_to_base64(json.loads(out)), trace_pb2.TracesData())
    return {s.span_id: (s, rs, ss) for rs in td.resource_spans for ss in rs.scope_spans
            for s in ss.spans}


def _span(ss, tid: bytes, **kw) -> trace_pb2.Span:
    s = ss.spans.add(trace_id=tid, span_id=os.urandom(8), start_time_unix_nano=T0,
                     end_time_unix_nano=T0 + 1000, **kw)
    return s


def test_model_fields_beyond_the_sdk(zt_server, capsys):
    tid = os.urandom(16)
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.dropped_attributes_count = 4
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "raw"
    kv = rs.resource.attributes.add(key="k8s.labels")
    kv.value.kvlist_value.values.add(key="app").value.string_value = "web"
    ss = rs.scope_spans.add()  # an empty scope: comes back empty, not as ours
    s = _span(ss, tid, name="", kind=trace_pb2.Span.SPAN_KIND_UNSPECIFIED)
    s.status.code, s.status.message = trace_pb2.Status.STATUS_CODE_UNSET, "odd but allowed"
    s.attributes.add(key="nothing")  # an empty AnyValue
    nested = s.attributes.add(key="nested").value
    inner = nested.array_value.values.add().kvlist_value.values.add(key="x")
    inner.value.array_value.values.add().int_value = 1
    lk = s.links.add(trace_id=os.urandom(16), span_id=os.urandom(8), trace_state="a=b",
                     flags=0x301)
    lk.attributes.add(key="why").value.string_value = "retry"
    assert not _export(zt_server.addr, req).HasField("partial_success")
    ((got, grs, gss),) = _back(capsys, zt_server.addr, tid).values()
    assert got.name == "" and got.kind == trace_pb2.Span.SPAN_KIND_UNSPECIFIED
    assert got.status.message == "odd but allowed"
    attrs = {a.key: a.value for a in got.attributes}
    assert attrs["nothing"] == s.attributes[0].value
    assert attrs["nested"] == nested
    assert got.links[0] == lk
    assert gss.scope.name == "" and grs.resource.dropped_attributes_count == 4
    res = {a.key: a.value for a in grs.resource.attributes}
    assert res["k8s.labels"] == rs.resource.attributes[1].value


def test_events_and_links_over_the_caps_are_counted_as_dropped(zt_server, capsys):
    tid = os.urandom(16)
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    s = _span(ss, tid, name="busy", dropped_events_count=5)
    for i in range(MAX_EVENTS + 72):
        s.events.add(time_unix_nano=T0 + i, name=f"e{i}")
    big = s.events[0].attributes.add(key="exception.stacktrace")
    big.value.string_value = "x" * (3 * MAX_VALUE_BYTES)
    for _ in range(MAX_LINKS + 3):
        s.links.add(trace_id=os.urandom(16), span_id=os.urandom(8))
    _export(zt_server.addr, req)
    ((got, _rs, _ss),) = _back(capsys, zt_server.addr, tid).values()
    assert len(got.events) == MAX_EVENTS and got.dropped_events_count == 5 + 72
    assert [e.name for e in got.events] == [f"e{i}" for i in range(MAX_EVENTS)]
    assert len(got.links) == MAX_LINKS and got.dropped_links_count == 3
    value = got.events[0].attributes[0].value.string_value
    assert len(value.encode()) <= MAX_VALUE_BYTES and value.endswith("…")
    attrs = {a.key: a.value.string_value for a in got.attributes}
    assert attrs[FLAG] == "values=1 dropped=75"  # the span says it is not whole
    assert MODEL_KEY not in attrs  # stored fields, never shown as an attribute
