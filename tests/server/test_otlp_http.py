"""OTLP/HTTP receiver (`POST /v1/traces`): status codes, bodies and headers as the OTLP
specification asks, tokens as on the gRPC port, partial success, the same store path."""

from __future__ import annotations

import gzip
import http.client
import json
import os

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from proto.span import new_trace_id
from server.auth import TokenTable
from server.http import HttpApi
from server.http.otlp_http import OtlpHttpReceiver
from tests.server.cli_capture import run_cli

INGEST = "ingest-token-0123456789"
READ = "read-token-0123456789ab"


def _request(trace_id: str, n: int = 1,
             bad_ids: int = 0) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "http-sdk"
    ss = rs.scope_spans.add()
    for i in range(n + bad_ids):
        s = ss.spans.add(name=f"op{i}", kind=trace_pb2.Span.SPAN_KIND_SERVER,
                         start_time_unix_nano=1_700_000_000_000_000_000 + i,
                         end_time_unix_nano=1_700_000_000_000_100_000 + i)
        s.trace_id = bytes.fromhex(trace_id)
        s.span_id = os.urandom(8) if i < n else b"\x01\x02\x03"  # 3 bytes: refused
    return req


def _post(port: int, body: bytes, headers: dict[str, str], method: str = "POST",
          path: str = "/v1/traces") -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.fixture
def api(zt_server):
    a = HttpApi(zt_server.store, "127.0.0.1:0", otlp=OtlpHttpReceiver.for_server(zt_server))
    a.start()
    yield a
    a.stop()


@pytest.fixture
def token_api(zt_server, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"ingest {INGEST} sdk-a\nread {READ}\n")
    a = HttpApi(zt_server.store, "127.0.0.1:0", tokens=TokenTable(str(path)),
                otlp=OtlpHttpReceiver.for_server(zt_server))
    a.start()
    yield a
    a.stop()


def _count(capsys, addr: str, tid: str) -> int:
    rc, out, _err = run_cli(capsys, "trace", tid, "--server", addr, "-o", "json")
    return len(json.loads(out)["spans"]) if rc == 0 else 0


def test_protobuf_export_stored(zt_server, api, capsys):
    tid = new_trace_id()
    status, h, body = _post(api.port, _request(tid, 3).SerializeToString(),
                            {"Content-Type": "application/x-protobuf"})
    assert status == 200 and h["content-type"] == "application/x-protobuf"
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert not resp.HasField("partial_success")
    assert _count(capsys, zt_server.addr, tid) == 3


def test_partial_success_names_refused_spans(zt_server, api, capsys):
    tid = new_trace_id()
    status, _h, body = _post(api.port, _request(tid, 2, bad_ids=1).SerializeToString(),
                             {"Content-Type": "application/x-protobuf"})
    assert status == 200  # partly accepted is still 200, as OTLP/HTTP says
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 1
    assert "span_id" in resp.partial_success.error_message
    assert _count(capsys, zt_server.addr, tid) == 2
    # the same in JSON: the response comes back in the request's encoding
    status, h, body = _post(api.port, json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": new_trace_id(), "spanId": "0102", "name": "x",
         "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}).encode(),
        {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and h["content-type"] == "application/json"
    assert json.loads(body)["partialSuccess"]["rejectedSpans"] == "1"


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400),
    (b"{not json", {"Content-Type": "application/json"}, 400),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
     {"Content-Type": "application/json"}, 400),
    (b"not gzip", {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, 400),
    (b"x", {"Content-Type": "text/plain"}, 415),
    (b"x", {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, 415),
])
def test_bad_requests(api, body, headers, status):
    got, h, rbody = _post(api.port, body, headers)
    assert got == status
    ctype = "application/json" if "json" in headers["Content-Type"] else "application/x-protobuf"
    assert h["content-type"] == ctype
    st = (status_pb2.Status(**json.loads(rbody)) if ctype == "application/json"
          else status_pb2.Status.FromString(rbody))
    assert st.message and st.code == 3  # INVALID_ARGUMENT


def test_too_large_and_gzip_bomb(api, zt_server):
    api.otlp.max_body_bytes = 1024
    status, _h, _b = _post(api.port, b"x" * 2048, {"Content-Type": "application/x-protobuf"})
    assert status == 413
    bomb = gzip.compress(b"\0" * (512 << 10))  # ~0.5 KiB that inflates to 512 KiB
    assert len(bomb) < 1024
    status, _h, body = _post(api.port, bomb, {"Content-Type": "application/x-protobuf",
                                              "Content-Encoding": "gzip"})
    assert status == 413 and b"decompressed" in body


def test_methods_and_missing_receiver(zt_server, api):
    status, h, _b = _post(api.port, b"", {}, method="GET")
    assert status == 405 and h["allow"] == "POST"
    plain = HttpApi(zt_server.store, "127.0.0.1:0")  # a query-only port
    plain.start()
    try:
        status, _h, _b = _post(plain.port, b"x", {"Content-Type": "application/x-protobuf"})
        assert status == 404
    finally:
        plain.stop()


def test_tokens(zt_server, token_api, capsys):
    body = _request(new_trace_id()).SerializeToString()
    ctype = {"Content-Type": "application/x-protobuf"}
    status, h, _b = _post(token_api.port, body, ctype)
    assert status == 401 and h["www-authenticate"] == "Bearer"
    assert _post(token_api.port, body, {**ctype, "Authorization": "Bearer nope-nope-nope-nope"}
                 )[0] == 401
    # a read token may not write, an ingest token may
    assert _post(token_api.port, body, {**ctype, "Authorization": f"Bearer {READ}"})[0] == 403
    tid = new_trace_id()
    status, _h, _b = _post(token_api.port, _request(tid).SerializeToString(),
                           {**ctype, "Authorization": f"Bearer {INGEST}"})
    assert status == 200
    assert _count(capsys, zt_server.addr, tid) == 1
    # admitted under the token's name, as on the gRPC port
    assert "sdk-a" in zt_server.admissions["otlp"].snapshot()


def test_busy_sender_gets_429_with_retry_after(zt_server, api):
    adm = zt_server.admissions["otlp"]
    sender = "ipv4:127.0.0.1"
    for _ in range(adm.limit):  # the sender's share already in flight
        assert adm.enter(sender)
    try:
        status, h, body = _post(api.port, _request(new_trace_id()).SerializeToString(),
                                {"Content-Type": "application/x-protobuf"})
    finally:
        for _ in range(adm.limit):
            adm.leave(sender)
    assert status == 429 and h["retry-after"].isdigit()
    assert status_pb2.Status.FromString(body).code == 8  # RESOURCE_EXHAUSTED


def test_refused_body_closes_the_connection(token_api):
    """A body left unread must not be parsed as the next request on the connection."""
    c = http.client.HTTPConnection("127.0.0.1", token_api.port, timeout=30)
    try:
        c.request("POST", "/v1/traces", body=b"GET /api/echo HTTP/1.1\r\n\r\n",
                  headers={"Content-Type": "application/x-protobuf"})
        r = c.getresponse()
        r.read()
        assert r.status == 401 and r.getheader("connection") == "close"
    finally:
        c.close()


def test_chunked_body(zt_server, api, capsys):
    tid = new_trace_id()
    c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
    data = _request(tid, 2).SerializeToString()
    try:
        c.request("POST", "/v1/traces", body=iter([data[:10], data[10:]]),
                  headers={"Content-Type": "application/x-protobuf"}, encode_chunked=True)
        assert c.getresponse().status == 200
    finally:
        c.close()
    assert _count(capsys, zt_server.addr, tid) == 2
