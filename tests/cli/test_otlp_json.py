"""`zerotrace trace ID -o otlp-json` as a process against a real `zerotrace server`
process: spans the OpenTelemetry SDK exported over OTLP/gRPC come back with every
field the SDK set (the comparison is tests/server/test_otlp_roundtrip.py's)."""

from __future__ import annotations

import json

from cli_proc import zt
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace.export import SpanExportResult

from server.http.otlp_http import _hex_to_base64
from tests.server.test_otlp_roundtrip import _assert_identical, _make_spans


def test_otlp_json_of_sdk_spans_is_what_the_sdk_sent(server, tmp_path):
    spans = _make_spans()
    expected = encode_spans(spans)
    exporter = OTLPSpanExporter(endpoint=server, insecure=True)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    tid = expected.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    r = zt("trace", tid, "--server", server, "-o", "otlp-json")
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    _assert_identical(expected, json_format.ParseDict(_hex_to_base64(doc),
                                                      trace_pb2.TracesData()))
    # --out FILE writes the same document
    out = tmp_path / "trace.otlp.json"
    r = zt("trace", tid, "--server", server, "-o", "otlp-json", "--out", str(out))
    assert r.rc == 0, r.err
    assert json.loads(out.read_text()) == doc
