"""A real `zerotrace server` process takes OTLP/HTTP (POST /v1/traces) on its HTTP API
port and on OTLP/HTTP's own port (--otlp-http, default 127.0.0.1:4318, the SDKs'
default): the SDK's own protobuf encoding posted there comes back identical through
`zerotrace trace -o otlp-json`, and a body that is no OTLP gets a 400 and stores
nothing.  The OTLP port serves nothing else."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

from cli_proc import free_port, start_server, zt
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1 import trace_pb2

from server.http.otlp_http import _hex_to_base64
from tests.server.test_otlp_roundtrip import _assert_identical, _make_spans


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _wait_port(srv, http: str) -> None:
    deadline = time.monotonic() + 60  # the HTTP ports open after the gRPC port
    while True:
        try:
            socket.create_connection(("127.0.0.1", int(http.split(":")[1])), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "".join(srv.lines[-20:])
            time.sleep(0.2)


def test_otlp_http_on_its_own_port_and_on_the_http_port(tmp_path):
    http, otlp = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    srv, addr = start_server(tmp_path / "data", "--http", http, "--otlp-http", otlp)
    try:
        _wait_port(srv, http)
        _wait_port(srv, otlp)
        sent = []
        for port in (otlp, http):
            expected = encode_spans(_make_spans())
            assert post(f"http://{port}/v1/traces", expected.SerializeToString()) == 200
            assert post(f"http://{port}/v1/traces", b"\xff\x00not otlp") == 400
            sent.append(expected)
        # the OTLP port is OTLP's alone: no Tempo/Jaeger route there
        try:
            urllib.request.urlopen(f"http://{otlp}/api/echo", timeout=10)
            raise AssertionError("the OTLP/HTTP port answered a Tempo query")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        assert urllib.request.urlopen(f"http://{http}/api/echo", timeout=10).status == 200
        for expected in sent:
            tid = expected.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
            r = zt("trace", tid, "--server", addr, "-o", "otlp-json")
            assert r.rc == 0, r.err
            _assert_identical(expected, json_format.ParseDict(
                _hex_to_base64(json.loads(r.out)), trace_pb2.TracesData()))
    finally:
        srv.stop()


def test_otlp_http_defaults_to_the_sdks_port():
    from agent.cli import build_parser
    from server.http import DEFAULT_OTLP_HTTP

    assert DEFAULT_OTLP_HTTP == "127.0.0.1:4318"
    args = build_parser().parse_args(["server"])
    assert args.otlp_http is None  # None: the default; '' turns it off


def test_otlp_http_on_the_servers_http_port(tmp_path):
    http = f"127.0.0.1:{free_port()}"
    srv, addr = start_server(tmp_path / "data", "--http", http)
    try:
        _wait_port(srv, http)
        expected = encode_spans(_make_spans())
        assert post(f"http://{http}/v1/traces", expected.SerializeToString()) == 200
        assert post(f"http://{http}/v1/traces", b"\xff\x00not otlp") == 400
        tid = expected.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
        r = zt("trace", tid, "--server", addr, "-o", "otlp-json")
        assert r.rc == 0, r.err
        _assert_identical(expected, json_format.ParseDict(_hex_to_base64(json.loads(r.out)),
                                                          trace_pb2.TracesData()))
    finally:
        srv.stop()
