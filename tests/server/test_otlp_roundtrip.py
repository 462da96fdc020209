"""OTLP round trip with the real OpenTelemetry SDK: every field the SDK sets comes back.

Spans are made by the SDK (opentelemetry-sdk) with attributes of every type, events
(an exception among them), links with trace state and attributes, trace state, every
kind, status codes and messages, an instrumentation scope with version, attributes and
schema URL, typed resource attributes, and span limits low enough that attributes,
events and links are dropped and counted.  They are sent over OTLP/gRPC (the SDK's own
exporter) and OTLP/HTTP (the SDK's encoder, as its HTTP exporter sends it: protobuf,
gzip, and JSON), read back with `zerotrace trace ID -o otlp-json`, and compared field
by field with what the SDK encoded.  The only difference allowed: the attributes the
server adds (zerotrace.source, ...: server/http/otlp_map.py VIRTUAL_ATTRIBUTES).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import urllib.request

import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from server.http import HttpApi
from server.http.otlp_http import OtlpHttpReceiver, _hex_to_base64
from server.http.otlp_map import VIRTUAL_ATTRIBUTES
from tests.server.cli_capture import run_cli

TYPED = {
    "s": "text", "empty": "", "unicode": "é ✓ 漢", "b": True, "f": False,
    "i": 42, "neg": -7, "big": 2**62, "zero": 0, "d": 12.5, "tiny": 1e-300, "inf": float("inf"),
    "ls": ["a", "b"], "lb": [True, False], "li": [1, -2, 3], "ld": [0.5, 1.5],
}


@pytest.fixture
def http_api(zt_server):
    api = HttpApi(zt_server.store, "127.0.0.1:0", otlp=OtlpHttpReceiver.for_server(zt_server))
    api.start()
    yield api
    api.stop()


def _make_spans() -> list:
    """Spans of one new trace, made and ended by the SDK (kept in memory)."""
    mem = InMemorySpanExporter()
    resource = Resource({"service.name": "rt-shop", "service.version": "2.0",
                         "process.pid": os.getpid(), "host.arch.bits": 64,
                         "deployment.canary": True, "weights": [1.5, 2.5]},
                        schema_url="https://opentelemetry.io/schemas/1.26.0")
    limits = SpanLimits(max_span_attributes=24, max_events=4, max_links=3,
                        max_event_attributes=5, max_link_attributes=3)
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tracer = provider.get_tracer("rt.checkout", "1.2.3",
                                 schema_url="https://opentelemetry.io/schemas/1.24.0",
                                 attributes={"scope.team": "payments", "scope.n": 3})
    other = provider.get_tracer("rt.worker")  # a second scope, no version
    # The request came in with a traceparent and a tracestate (a remote parent).
    remote = SpanContext(int(os.urandom(16).hex(), 16), int(os.urandom(8).hex(), 16),
                         is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED),
                         trace_state=TraceState([("vendor", "v1"), ("zt", "k:v")]))
    linked = SpanContext(int(os.urandom(16).hex(), 16), int(os.urandom(8).hex(), 16),
                         is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED),
                         trace_state=TraceState([("lk", "1")]))
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    with tracer.start_as_current_span("POST /checkout", context=ctx, kind=SpanKind.SERVER,
                                      attributes=TYPED) as root:
        root.add_event("cart loaded", {"items": 3, "cart.id": "c-9", "ok": True,
                                       "sizes": [1, 2]}, timestamp=root.start_time + 1000)
        root.add_event("no attributes")
        with tracer.start_as_current_span("publish order", kind=SpanKind.PRODUCER,
                                          links=[Link(linked, {"why": "batch", "n": 2})]):
            pass
        with other.start_as_current_span("consume order", kind=SpanKind.CONSUMER) as c:
            c.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as charge:
            try:
                raise ValueError("card declined")
            except ValueError as e:
                charge.record_exception(e, {"retry": False})
            charge.set_status(Status(StatusCode.ERROR, "card declined"))
        # Over every limit: attributes, events, event attributes, links all dropped.
        links = [Link(linked, {f"l{i}": i for i in range(5)}) for _ in range(5)]
        with tracer.start_as_current_span("crowded", links=links) as crowded:
            for i in range(30):
                crowded.set_attribute(f"a{i:02d}", i)
            for i in range(6):
                crowded.add_event(f"e{i}", {f"k{j}": j for j in range(7)})
        root.set_status(Status(StatusCode.ERROR, "payment failed"))
    provider.shutdown()
    spans = list(mem.get_finished_spans())
    assert len(spans) == 5
    return spans


def _canon(span: trace_pb2.Span) -> trace_pb2.Span:
    """`span` with attribute lists in key order (OTLP attributes are maps)."""
    out = trace_pb2.Span()
    out.CopyFrom(span)
    for owner in (out, *out.events, *out.links):
        items = sorted(owner.attributes, key=lambda kv: kv.key)
        del owner.attributes[:]
        owner.attributes.extend(items)
    return out


def _by_span(td) -> dict[bytes, tuple]:
    """{span id: (span, resource, scope, resource schema URL, scope schema URL)}."""
    out = {}
    for rs in td.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                out[s.span_id] = (s, rs.resource, ss.scope, rs.schema_url, ss.schema_url)
    return out


def _attrs(kvs) -> dict[str, str]:
    return {kv.key: kv.value.SerializeToString(deterministic=True) for kv in kvs}


def _read_back(capsys, addr: str, trace_id: bytes) -> trace_pb2.TracesData:
    rc, out, err = run_cli(capsys, "trace", trace_id.hex(), "--server", addr, "-o", "otlp-json")
    assert rc == 0, err
    doc = json.loads(out)
    # OTLP/JSON: ids in hex (never base64), as the spec says
    first = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(first["traceId"]) == 32 and int(first["traceId"], 16) >= 0
    return json_format.ParseDict(_hex_to_base64(doc), trace_pb2.TracesData())


def _assert_identical(expected_req, got: trace_pb2.TracesData) -> None:
    want, have = _by_span(expected_req), _by_span(got)
    assert set(have) == set(want)
    for sid, (w, wres, wscope, wrurl, wsurl) in want.items():
        h, hres, hscope, hrurl, hsurl = have[sid]
        # the attributes the server adds are zerotrace's own, never the SDK's names
        added = set(_attrs(h.attributes)) - set(_attrs(w.attributes))
        assert added <= set(VIRTUAL_ATTRIBUTES), added
        h = _canon(h)
        kept = [kv for kv in h.attributes if kv.key not in added]
        del h.attributes[:]
        h.attributes.extend(kept)
        w = _canon(w)
        assert h == w, (w.name, json_format.MessageToDict(w), json_format.MessageToDict(h))
        assert _attrs(hres.attributes) == _attrs(wres.attributes)
        assert hres.dropped_attributes_count == wres.dropped_attributes_count
        assert hrurl == wrurl and hsurl == wsurl
        assert (hscope.name, hscope.version) == (wscope.name, wscope.version)
        assert _attrs(hscope.attributes) == _attrs(wscope.attributes)


def _check_sdk_request(req) -> None:
    """The SDK really set what this test claims to check (a guard on the test itself)."""
    spans = {s.name: s for _sid, (s, *_r) in _by_span(req).items()}
    kinds = {s.kind for s in spans.values()}
    assert kinds == {trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_PRODUCER,
                     trace_pb2.Span.SPAN_KIND_CONSUMER, trace_pb2.Span.SPAN_KIND_CLIENT,
                     trace_pb2.Span.SPAN_KIND_INTERNAL}
    root, crowded = spans["POST /checkout"], spans["crowded"]
    assert root.trace_state == "vendor=v1,zt=k:v" and len(root.events) == 2
    assert any(e.name == "exception" for e in spans["charge card"].events)
    assert spans["publish order"].links[0].attributes
    assert crowded.dropped_attributes_count and crowded.dropped_events_count
    assert crowded.dropped_links_count and crowded.events[0].dropped_attributes_count
    assert crowded.links[0].dropped_attributes_count and root.flags
    assert spans["charge card"].status.message == "card declined"


def test_roundtrip_over_otlp_grpc(zt_server, capsys):
    spans = _make_spans()
    expected = encode_spans(spans)
    _check_sdk_request(expected)
    exporter = OTLPSpanExporter(endpoint=zt_server.addr, insecure=True)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    got = _read_back(capsys, zt_server.addr, expected.resource_spans[0].scope_spans[0]
                     .spans[0].trace_id)
    _assert_identical(expected, got)


def _post(api: HttpApi, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{api.port}/v1/traces", data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("encoding", ["protobuf", "protobuf+gzip", "json", "json+gzip"])
def test_roundtrip_over_otlp_http(zt_server, http_api, capsys, encoding):
    spans = _make_spans()
    expected = encode_spans(spans)
    if encoding.startswith("protobuf"):
        body, ctype = expected.SerializeToString(), "application/x-protobuf"
    else:
        # OTLP/JSON as the spec writes it: ids in hex, enums as integers
        doc = json_format.MessageToDict(expected, use_integers_for_enums=True)

        def hexify(o):
            if isinstance(o, dict):
                return {k: (base64.b64decode(v).hex()
                            if k in ("traceId", "spanId", "parentSpanId") else hexify(v))
                        for k, v in o.items()}
            return [hexify(x) for x in o] if isinstance(o, list) else o

        body, ctype = json.dumps(hexify(doc)).encode(), "application/json"
    headers = {"Content-Type": ctype}
    if encoding.endswith("gzip"):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    status, rh, rbody = _post(http_api, body, headers)
    assert status == 200, rbody
    assert rh["Content-Type"] == ctype
    if ctype == "application/json":
        assert json.loads(rbody) == {}  # an ExportTraceServiceResponse, nothing refused
    got = _read_back(capsys, zt_server.addr,
                     expected.resource_spans[0].scope_spans[0].spans[0].trace_id)
    _assert_identical(expected, got)
