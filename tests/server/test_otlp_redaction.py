"""OTLP spans are redacted at ingest with the agent's rules (issue 14, redaction).

An OpenTelemetry SDK span carrying secrets (an api key in `url.query`, SQL literals,
a JWT, command-line passwords and URL credentials in the resource) is exported by the
real SDK over OTLP/gRPC (and encoded by it and POSTed to OTLP/HTTP) and read back
masked; with redaction off the server stores it as sent.  The vectorised table
redaction equals the agent's per-span rules (`redact.reference_spans`) on hostile
values.
"""

from __future__ import annotations

import uuid

import pytest
from factory import now_ns, server_span

from agent.protocols import redact
from proto.columns import spans_from_table, spans_to_table
from server.ingest.redact import redact_table

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNlY3JldA"
SECRETS = ("sk_abcdef123456", "tok-998877665544", "123-45-6789", "4111111111111111",
           "sk_live_abcdefgh12345678", JWT, "s3cr3tPW", "dbpa55word")
ATTRS = {
    "url.query": "api_key=sk_abcdef123456&page=2&access_token=tok-998877665544",
    "db.query.text": "SELECT * FROM users WHERE ssn = '123-45-6789' AND card = 4111111111111111"
                     " AND key = 'sk_live_abcdefgh12345678'",
    "app.note": f"forwarded Authorization: Bearer {JWT}",
    "http.request.method": "GET",
}
RESOURCE = {
    "service.name": "checkout",
    "process.command_line": "/app/bin/server --password=s3cr3tPW "
                            "--db postgres://app:dbpa55word@db:5432/shop",
}
OPERATION = "GET /search?token=tok-998877665544&q=shoes"
ERROR = f"upstream refused Bearer {JWT}"


def _export_with_sdk(addr: str) -> str:
    """One span with the secrets, exported by the OTel SDK over OTLP/gRPC; its trace id."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return _sdk_span(OTLPSpanExporter(endpoint=addr, insecure=True, timeout=20))


def _sdk_span(exporter) -> str:
    """One span with the secrets made by the OTel SDK and handed to `exporter`."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(resource=Resource.create(RESOURCE))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("redaction-test")
    with tracer.start_as_current_span(OPERATION, kind=SpanKind.SERVER,
                                      attributes=ATTRS) as span:
        span.set_status(Status(StatusCode.ERROR, ERROR))
        tid = f"{span.get_span_context().trace_id:032x}"
    provider.shutdown()
    return tid


def _stored_text(s) -> str:
    return " ".join([s.operation, s.error, *map(str, s.attributes.values()),
                     *s.resource.values()])


def _post_with_sdk(srv) -> str:
    """The same span, encoded by the SDK's OTLP encoder and POSTed to /v1/traces."""
    import http.client

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from server.http import HttpApi
    from server.http.otlp_http import OtlpHttpReceiver

    mem = InMemorySpanExporter()
    tid = _sdk_span(mem)
    body = encode_spans(mem.get_finished_spans()).SerializeToString()
    api = HttpApi(srv.store, "127.0.0.1:0", otlp=OtlpHttpReceiver.for_server(srv))
    port = api.start()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/traces", body=body,
                  headers={"Content-Type": "application/x-protobuf"})
        r = c.getresponse()
        assert r.status == 200, r.read()
        c.close()
    finally:
        api.stop()
    return tid


@pytest.mark.parametrize("wire", ["grpc", "http"])
def test_sdk_span_secrets_are_masked_at_ingest(zt_server, wire):
    tid = _export_with_sdk(zt_server.addr) if wire == "grpc" else _post_with_sdk(zt_server)
    (s,) = zt_server.store.get_trace(tid)
    text = _stored_text(s)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} stored: {text}"
    # What is kept: the shapes a reader needs.
    assert s.attributes["url.query"] == f"api_key={redact.MASK}&page=2&access_token={redact.MASK}"
    assert s.attributes["db.query.text"] == \
        "SELECT * FROM users WHERE ssn = ? AND card = ? AND key = ?"
    assert s.attributes["app.note"] == f"forwarded Authorization: Bearer {redact.MASK}"
    assert s.attributes["http.request.method"] == "GET"
    assert s.resource["process.command_line"] == (
        f"/app/bin/server --password={redact.MASK} "
        f"--db postgres://app:{redact.MASK}@db:5432/shop")
    assert s.operation == f"GET /search?token={redact.MASK}&q=shoes"
    assert s.error == f"upstream refused Bearer {redact.MASK}"
    assert s.service == "checkout" and s.source == "A"


def test_redaction_off_stores_sdk_spans_as_sent(chdb_root):
    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"raw_{uuid.uuid4().hex[:12]}")
    srv = ZerotraceServer("127.0.0.1:0", store=store, redact_otlp=False)
    try:
        tid = _export_with_sdk(f"127.0.0.1:{srv.start()}")
        (s,) = store.get_trace(tid)
    finally:
        srv.stop(0.5)
        store.drop()
    assert {k: s.attributes[k] for k in ATTRS} == ATTRS
    assert s.resource["process.command_line"] == RESOURCE["process.command_line"]
    assert (s.operation, s.error) == (OPERATION, ERROR)


def test_table_redaction_equals_the_agents_rules():
    """`redact_table` on a batch gives what `redact.reference_spans` gives span by span,
    values that change and values that must not alike."""
    t0 = now_ns()
    values = [*ATTRS.values(), *RESOURCE.values(), OPERATION, ERROR, "short", "",
              "x" * 40, "GET /a?b=c", "SELECT 1", "ñandú?token=ábcdefghij&x=1",
              "https://u:pw123456@example.com/path?sig=abcdef", "AKIAABCDEFGHIJKLMNOP",
              "ghp_" + "a" * 30, "password for bob = 'x'", "Basic dXNlcjpwYXNzd29yZA=="]
    keys = ["url.query", "url.full", "db.statement", "db.query.text",
            "process.command_line", "app.x", "token"]
    spans = []
    for i, v in enumerate(values):
        k = keys[i % len(keys)]
        spans.append(server_span(
            start_ns=t0, end_ns=t0 + 1, operation=values[(i + 3) % len(values)],
            status="error", error=values[(i + 5) % len(values)],
            attributes={k: v, "n": i, "plain": values[(i + 1) % len(values)]},
            resource={keys[(i + 2) % len(keys)]: values[(i + 7) % len(values)]}))
    table = spans_to_table(spans)
    got = spans_from_table(redact_table(table))
    want = redact.reference_spans(spans)
    assert got == want
    assert got != spans  # something was masked: the comparison is not vacuous
    # A sliced table (offsets not at zero) redacts the same rows.
    part = table.slice(3, 5)
    assert spans_from_table(redact_table(part)) == want[3:8]


def test_nothing_to_mask_returns_the_table_itself():
    t0 = now_ns()
    table = spans_to_table([server_span(start_ns=t0, end_ns=t0 + 1, operation="GET /",
                                        attributes={"k": "v"})])
    assert redact_table(table) is table


@pytest.fixture(autouse=True)
def _rules_on():
    assert redact.REDACT  # the agent's switch: these tests assume the default
    yield
