"""TLS, mTLS and bearer tokens against a real `zerotrace server` process on loopback.

The matrix: no token, unknown token, wrong role (both ways), a plaintext client to a
TLS port, a client trusting the wrong CA, mTLS without a client certificate or with one
from another CA.  Each is refused with a clear message and gets no data.  Then what
must work: the agent's exporters (zerotrace and OTLP) and the CLI with the right
credentials; per-sender limits keyed on the token, not the declared name; token
rotation by SIGHUP; a non-loopback --listen refused without TLS or tokens.
Certificates are made at test time (tests/server/certs.py), never committed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from certs import Pki, make_pki
from cli_capture import run_cli
from factory import now_ns, server_span

from agent.export.base import ExportResult
from agent.export.grpc_exporter import GrpcSpanExporter
from agent.export.otlp_exporter import OtlpSpanExporter
from proto.convert import span_to_pb
from proto.credentials import ClientSecurity
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from server.auth import AuthConfigError, exposure_problem, is_loopback, parse_tokens

REPO = Path(__file__).resolve().parents[2]
INGEST_TOKEN = "ingest-" + "a1" * 16
INGEST_TOKEN_2 = "ingest-" + "b2" * 16
READ_TOKEN = "read-" + "c3" * 16
UNKNOWN_TOKEN = "nobody-" + "d4" * 16
SECRET = "sk_live_do_not_leak_4242"  # stored in a span; no refusal may show it


class Server:
    """`python -m server.cli server ...` on 127.0.0.1:0; `addr` once it listens."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.stderr = tmp / "server.stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0",
             "--data", str(tmp / "data"), "--metrics", "127.0.0.1:0", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self.stderr.open("w"), text=True,
            start_new_session=True)
        line = self.proc.stdout.readline()
        assert "listening on" in line, (line, self.stderr.read_text()[-2000:])
        self.line = line
        self.addr = line.split("listening on ")[1].split()[0]
        self.metrics = line.split("metrics=")[1].split()[0]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _token_file(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    """TLS with client certificates required, and tokens."""
    tmp = tmp_path_factory.mktemp("mtls")
    tokens = _token_file(tmp / "tokens", (
        "# role token [name]\n\n"
        f"ingest {INGEST_TOKEN} node-a\n"
        f"ingest {INGEST_TOKEN_2}\n"
        f"read   {READ_TOKEN}\n"))
    srv = Server(tmp, "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                 "--tls-ca", pki.ca, "--token-file", tokens)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """Tokens on a plaintext loopback port (no TLS)."""
    tmp = tmp_path_factory.mktemp("tokens")
    srv = Server(tmp, "--token-file", _token_file(
        tmp / "tokens", f"ingest {INGEST_TOKEN}\nread {READ_TOKEN}\n"))
    srv.token_path = tmp / "tokens"
    yield srv
    srv.stop()


def _sec(pki: Pki, token: str = "", client_cert: bool = True, ca: str = "") -> ClientSecurity:
    return ClientSecurity(ca=ca or pki.ca, token=token,
                          cert=pki.client_cert if client_cert else "",
                          key=pki.client_key if client_cert else "")


def _push(addr: str, sec: ClientSecurity, spans, agent: str = "t"):
    req = ingest_pb2.PushRequest()
    req.agent.agent = agent
    for s in spans:
        span_to_pb(s, req.spans.add())
    with sec.channel(addr) as ch:
        return ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=20,
                                                          metadata=sec.metadata())


def _get(addr: str, sec: ClientSecurity, tid: str):
    with sec.channel(addr) as ch:
        return query_pb2_grpc.QueryServiceStub(ch).GetTrace(
            query_pb2.GetTraceRequest(trace_id=tid), timeout=20, metadata=sec.metadata())


def _refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() == code, (ei.value.code(), ei.value.details())
    details = ei.value.details() or ""
    for secret in (INGEST_TOKEN, INGEST_TOKEN_2, READ_TOKEN, UNKNOWN_TOKEN, SECRET, "node-a"):
        assert secret not in details
    return details


@pytest.fixture(scope="module")
def stored(mtls_server, pki) -> str:
    """A trace stored through the mTLS server with the right credentials."""
    s = server_span(service="pay", operation=f"GET /charge?key={SECRET}",
                    start_ns=now_ns(), end_ns=now_ns() + 1000)
    r = _push(mtls_server.addr, _sec(pki, INGEST_TOKEN), [s])
    assert r.accepted == 1
    return s.trace_id


# -- the refusal matrix ---------------------------------------------------------


def test_no_token(mtls_server, pki, stored):
    d = _refused(lambda: _get(mtls_server.addr, _sec(pki), stored),
                 grpc.StatusCode.UNAUTHENTICATED)
    assert "authentication required" in d and "Bearer" in d
    d = _refused(lambda: _push(mtls_server.addr, _sec(pki), [server_span(start_ns=1, end_ns=2)]),
                 grpc.StatusCode.UNAUTHENTICATED)


def test_unknown_token(mtls_server, pki, stored):
    d = _refused(lambda: _get(mtls_server.addr, _sec(pki, UNKNOWN_TOKEN), stored),
                 grpc.StatusCode.UNAUTHENTICATED)
    assert d == "authentication failed: token not accepted"
    # "Bearer" with nothing after it, and another scheme, are no better.
    for bad in ("Bearer ", f"Basic {READ_TOKEN}"):
        def call(bad=bad):
            with _sec(pki).channel(mtls_server.addr) as ch:
                return query_pb2_grpc.QueryServiceStub(ch).Services(
                    query_pb2.ServicesRequest(), timeout=20, metadata=(("authorization", bad),))
        _refused(call, grpc.StatusCode.UNAUTHENTICATED)


def test_wrong_role(mtls_server, pki, stored):
    d = _refused(lambda: _get(mtls_server.addr, _sec(pki, INGEST_TOKEN), stored),
                 grpc.StatusCode.PERMISSION_DENIED)
    assert "'read' role" in d and "QueryService/GetTrace" in d
    d = _refused(lambda: _push(mtls_server.addr, _sec(pki, READ_TOKEN),
                               [server_span(start_ns=1, end_ns=2)]),
                 grpc.StatusCode.PERMISSION_DENIED)
    assert "'ingest' role" in d
    # The read token got nothing stored: the search by a unique service finds nothing.
    with _sec(pki, READ_TOKEN).channel(mtls_server.addr) as ch:
        r = query_pb2_grpc.QueryServiceStub(ch).Services(
            query_pb2.ServicesRequest(), timeout=20, metadata=_sec(pki, READ_TOKEN).metadata())
    assert [s.service for s in r.services] == ["pay"]


def test_plaintext_client_to_tls_port(mtls_server, pki, stored, capsys):
    _refused(lambda: _get(mtls_server.addr, ClientSecurity(token=READ_TOKEN), stored),
             grpc.StatusCode.UNAVAILABLE)
    rc, out, err = run_cli(capsys, "trace", stored, "--server", mtls_server.addr,
                           "--timeout", "5")
    assert rc == 1 and out == ""
    assert "TLS with the zerotrace server" in err and err.count("\n") == 1


def test_wrong_ca(mtls_server, pki, stored, capsys):
    _refused(lambda: _get(mtls_server.addr, _sec(pki, READ_TOKEN, ca=pki.other_ca), stored),
             grpc.StatusCode.UNAVAILABLE)
    rc, out, err = run_cli(capsys, "trace", stored, "--server", mtls_server.addr,
                           "--tls-ca", pki.other_ca, "--tls-cert", pki.client_cert,
                           "--tls-key", pki.client_key, "--timeout", "5")
    assert rc == 1 and out == "" and "TLS with the zerotrace server" in err


def test_mtls_without_client_certificate(mtls_server, pki, stored, capsys):
    _refused(lambda: _get(mtls_server.addr, _sec(pki, READ_TOKEN, client_cert=False), stored),
             grpc.StatusCode.UNAVAILABLE)
    # A certificate from another CA is no better.
    other = ClientSecurity(ca=pki.ca, cert=pki.other_client_cert, key=pki.other_client_key,
                           token=READ_TOKEN)
    _refused(lambda: _get(mtls_server.addr, other, stored), grpc.StatusCode.UNAVAILABLE)
    rc, out, err = run_cli(capsys, "trace", stored, "--server", mtls_server.addr,
                           "--tls-ca", pki.ca, "--timeout", "5")
    assert rc == 1 and out == "" and "client certificate" in err


def test_client_options_checked(pki, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "services", "--tls-cert", pki.client_cert, "--tls-ca", pki.ca)
    assert rc == 2 and "--tls-cert and --tls-key go together" in err
    rc, _, err = run_cli(capsys, "services", "--token-file", str(tmp_path / "missing"))
    assert rc == 2 and "cannot read the token file" in err


# -- what must work ---------------------------------------------------------------


def test_cli_with_credentials(mtls_server, pki, stored, capsys, tmp_path, monkeypatch):
    tf = _token_file(tmp_path / "t", f"# my token\n{READ_TOKEN}\n")
    common = ["--server", mtls_server.addr, "--tls-ca", pki.ca, "--tls-cert", pki.client_cert,
              "--tls-key", pki.client_key]
    rc, out, err = run_cli(capsys, "trace", stored, *common, "--token-file", tf, "-o", "json")
    assert rc == 0, err
    assert SECRET in out  # the span came back whole
    monkeypatch.setenv("ZEROTRACE_TOKEN", READ_TOKEN)
    rc, out, err = run_cli(capsys, "services", *common, "-o", "json")
    assert rc == 0 and '"pay"' in out, err
    monkeypatch.setenv("ZEROTRACE_TOKEN", INGEST_TOKEN)
    rc, out, err = run_cli(capsys, "services", *common)
    assert rc == 1 and out == "" and "permission_denied" in err


def test_exporters_with_credentials(mtls_server, pki):
    s1 = server_span(service="via-grpc", start_ns=now_ns(), end_ns=now_ns() + 10)
    s2 = server_span(service="via-otlp", start_ns=now_ns(), end_ns=now_ns() + 10)
    sec = _sec(pki, INGEST_TOKEN)
    g = GrpcSpanExporter(mtls_server.addr, agent="declared-name", security=sec)
    o = OtlpSpanExporter(mtls_server.addr, security=sec)
    try:
        assert g.export([s1]) == ExportResult.SUCCESS, g.last_error
        assert o.export([s2]) == ExportResult.SUCCESS
    finally:
        g.shutdown()
        o.shutdown()
    # Without a token both are refused (retryable for OTLP, as it cannot tell).
    g = GrpcSpanExporter(mtls_server.addr, security=_sec(pki))
    try:
        assert g.export([s1]) == ExportResult.FAILURE
        assert "UNAUTHENTICATED" in g.last_error
    finally:
        g.shutdown()
    read = _sec(pki, READ_TOKEN)
    for s in (s1, s2):
        assert len(_get(mtls_server.addr, read, s.trace_id).spans) == 1


def test_sender_is_the_token_not_the_declared_name(mtls_server, pki):
    """Admission (and the per-sender metrics) key on the token's identity: a client
    declaring many agent names is still one sender."""
    for i in range(3):
        r = _push(mtls_server.addr, _sec(pki, INGEST_TOKEN_2),
                  [server_span(start_ns=now_ns(), end_ns=now_ns() + 5)], agent=f"spoof-{i}")
        assert r.accepted == 1
    text = _mtls_metrics(mtls_server.metrics, pki)
    assert "spoof-" not in text
    assert 'sender="ingest#2"' in text  # the second ingest token, unnamed
    assert 'sender="node-a"' in text  # the named token used by the fixtures


def test_tokens_without_tls_and_sighup_rotation(token_server, capsys):
    plain = ClientSecurity(token=INGEST_TOKEN)
    s = server_span(start_ns=now_ns(), end_ns=now_ns() + 5)
    assert _push(token_server.addr, plain, [s]).accepted == 1
    rc, out, err = run_cli(capsys, "trace", s.trace_id, "--server", token_server.addr)
    assert rc == 1 and "unauthenticated" in err and "authentication required" in err
    # Rotate: the new read token works after SIGHUP, the old one no longer does.
    new_read = "rotated-" + "e5" * 16
    token_server.token_path.write_text(f"ingest {INGEST_TOKEN}\nread {new_read}\n")
    os.kill(token_server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        try:
            _get(token_server.addr, ClientSecurity(token=new_read), s.trace_id)
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    _refused(lambda: _get(token_server.addr, ClientSecurity(token=READ_TOKEN), s.trace_id),
             grpc.StatusCode.UNAUTHENTICATED)
    # A broken file on reload keeps the tokens in force.
    token_server.token_path.write_text("read short\n")
    os.kill(token_server.proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert token_server.proc.poll() is None
    assert len(_get(token_server.addr, ClientSecurity(token=new_read), s.trace_id).spans) == 1


# -- exposure and configuration errors -----------------------------------------------


def _server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_non_loopback_listen_refused_without_tls_or_tokens(tmp_path):
    r = _server_cli("--listen", "0.0.0.0:0", "--data", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "refusing to listen on 0.0.0.0:0" in r.stderr
    assert "--insecure" in r.stderr
    assert not (tmp_path / "d").exists()  # refused before opening anything
    # What lets it through (checked without binding a public address in a test).
    assert exposure_problem("0.0.0.0:4317", tls=False, tokens=False, insecure=False)
    for ok in ({"tls": True}, {"tokens": True}, {"insecure": True}):
        kw = {"tls": False, "tokens": False, "insecure": False} | ok
        assert exposure_problem("0.0.0.0:4317", **kw) == ""
    assert is_loopback("127.0.0.1:4317") and is_loopback("[::1]:4317")
    assert is_loopback("localhost:4317")
    assert not is_loopback(":4317") and not is_loopback("[::]:4317")


def test_bad_server_configuration(tmp_path, pki):
    bad = _token_file(tmp_path / "bad", f"admin {READ_TOKEN}\n")
    r = _server_cli("--data", str(tmp_path / "d"), "--token-file", bad)
    assert r.returncode == 2 and "line 1" in r.stderr and READ_TOKEN not in r.stderr
    r = _server_cli("--data", str(tmp_path / "d"), "--tls-cert", pki.server_cert)
    assert r.returncode == 2 and "--tls-key" in r.stderr
    r = _server_cli("--data", str(tmp_path / "d"), "--tls-cert", pki.server_cert,
                    "--tls-key", str(tmp_path / "missing.key"))
    assert r.returncode == 2 and "missing.key" in r.stderr


def test_token_file_parsing():
    es = parse_tokens(f"# c\n\ningest {INGEST_TOKEN} n1\nread {READ_TOKEN}\n"
                      f"read {INGEST_TOKEN}\n")
    assert [(e.role, e.name) for e in es] == [("ingest", "n1"), ("read", "read#1"),
                                              ("read", "read#2")]
    for text, why in ((f"write {READ_TOKEN}", "ROLE"), ("read short", "shorter"),
                      (f"read {READ_TOKEN}\nread {READ_TOKEN}", "twice"), ("# none\n", "no token"),
                      (f"read {READ_TOKEN} name extra", "ROLE")):
        with pytest.raises(AuthConfigError, match=why) as ei:
            parse_tokens(text)
        assert READ_TOKEN not in str(ei.value)


def test_mtls_without_tokens_keys_senders_on_the_certificate(tmp_path, pki):
    """mTLS alone authenticates too: the sender is the certificate's name, not the
    agent name the batch declares."""
    srv = Server(tmp_path, "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                 "--tls-ca", pki.ca)
    try:
        assert "tls=mtls tokens=off" in srv.line
        for i in range(2):
            r = _push(srv.addr, _sec(pki), [server_span(start_ns=now_ns(), end_ns=now_ns() + 5)],
                      agent=f"spoof-{i}")
            assert r.accepted == 1
        text = _mtls_metrics(srv.metrics, pki)
        assert "spoof-" not in text and 'sender="cert:agent-1"' in text
    finally:
        srv.stop()


def test_authorize_for_other_ports(tmp_path):
    """`server.auth.authorize` is what an HTTP API checks a header with: the same
    refusals, mapped to 401/403."""
    from server.auth import TokenTable, authorize

    table = TokenTable(_token_file(tmp_path / "t", f"read {READ_TOKEN} grafana\n"
                                                   f"ingest {INGEST_TOKEN}\n"))
    ok = authorize(table, f"Bearer {READ_TOKEN}", "read", "GET /api/search")
    assert ok.allowed and ok.identity == "grafana" and ok.http_status == 200
    for header, status in ((None, 401), ("", 401), (f"Basic {READ_TOKEN}", 401),
                           (f"Bearer {UNKNOWN_TOKEN}", 401), (f"Bearer {INGEST_TOKEN}", 403),
                           (f"bearer  {READ_TOKEN}x", 401)):
        d = authorize(table, header, "read", "GET /api/search")
        assert not d.allowed and d.http_status == status, header
        assert READ_TOKEN not in d.message and INGEST_TOKEN not in d.message


@pytest.mark.parametrize("via", ["flags", "config"])
def test_agent_command_line_reaches_the_mtls_server(mtls_server, pki, tmp_path, via):
    """`zerotrace agent --server ... --tls-ca ... --tls-cert ... --tls-key ...
    --token-file ...` (or the same keys in its config file) builds exporters that the
    server accepts: spans submitted to them are stored (probes are not needed)."""
    import yaml

    from agent.cli import build_parser
    from agent.pipeline import Pipeline

    tf = _token_file(tmp_path / "token", f"{INGEST_TOKEN}\n")
    opts = {"tls-ca": pki.ca, "tls-cert": pki.client_cert, "tls-key": pki.client_key,
            "token-file": tf}
    argv = ["agent", "--server", mtls_server.addr, "--otlp", mtls_server.addr,
            "--metrics-port", "0"]
    if via == "flags":
        for k, v in opts.items():
            argv += [f"--{k}", v]
    else:
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(yaml.safe_dump({k.replace("-", "_"): v for k, v in opts.items()}))
        argv += ["--config", str(cfg)]
    p = Pipeline.from_args(build_parser().parse_args(argv))
    spans = {name: server_span(service=f"agent-{via}-{name}", start_ns=now_ns(),
                               end_ns=now_ns() + 5) for name, _ in p.exporters}
    assert set(spans) == {"server", "otlp"}
    try:
        for name, batcher in p.exporters:
            batcher.submit([spans[name]])
            assert batcher.force_flush(20)
            assert batcher.metrics()["zerotrace_export_sent_total"] == 1, batcher.metrics()
    finally:
        for _, batcher in p.exporters:
            batcher.shutdown(5)
    for s in spans.values():
        assert len(_get(mtls_server.addr, _sec(pki, READ_TOKEN), s.trace_id).spans) == 1


def test_health_check_needs_no_token_and_opens_nothing_else(token_server):
    """grpc.health.v1 answers without a token (kubelet's gRPC probe sends none); the
    same tokenless channel is still refused by every other service."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(token_server.addr) as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        for service in ("", "zerotrace.v1.IngestService", "zerotrace.v1.QueryService"):
            r = check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as e:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(token_server.addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            query_pb2_grpc.QueryServiceStub(ch).GetTrace(
                query_pb2.GetTraceRequest(trace_id="ab" * 16), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- TLS on the HTTP ports (issue 14): /metrics with the server's --tls-cert ---------


def _https_get(url: str, ca: str, cert: tuple[str, str] | None = None) -> str:
    import ssl

    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(*cert)
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return r.read().decode()


def _mtls_metrics(url: str, pki: Pki) -> str:
    """/metrics of a server with --tls-cert and --tls-ca: HTTPS with a client certificate
    (the port speaks TLS only; the start-up line may still say http://)."""
    return _https_get(url.replace("http://", "https://", 1), pki.ca,
                      (pki.client_cert, pki.client_key))


def _plain_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize("mtls", [False, True])
def test_metrics_port_speaks_tls_only_with_tls_cert(chdb_root, pki, mtls):
    import ssl
    import urllib.error
    import uuid

    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"tlsm_{uuid.uuid4().hex[:12]}")
    srv = ZerotraceServer("127.0.0.1:0", store=store, metrics_listen="127.0.0.1:0",
                          tls_cert=pki.server_cert, tls_key=pki.server_key,
                          tls_ca=pki.ca if mtls else "")
    srv.start()
    try:
        https = f"https://127.0.0.1:{srv.metrics_port}/metrics"
        client = (pki.client_cert, pki.client_key) if mtls else None
        assert "zerotrace_server_store_inserts" in _https_get(https, pki.ca, client)
        # plain HTTP gets no metrics: the TLS handshake fails, nothing is answered
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as ei:
            _plain_get(f"http://127.0.0.1:{srv.metrics_port}/metrics")
        assert "zerotrace_server" not in str(ei.value)
        # a client trusting another CA refuses the server
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _https_get(https, pki.other_ca, client)
        if mtls:
            # --tls-ca: client certificates required, as on the gRPC port
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _https_get(https, pki.ca)
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _https_get(https, pki.ca, (pki.other_client_cert, pki.other_client_key))
        # a client that connects and sends nothing does not hold the port
        with socket.create_connection(("127.0.0.1", srv.metrics_port)):
            assert "zerotrace_server" in _https_get(https, pki.ca, client)
    finally:
        srv.stop(grace=0.5)
        store.drop()


def test_serve_tls_on_a_stdlib_http_server(pki):
    """server.auth.serve_tls, as the HTTP API (server/http) uses it on its
    ThreadingHTTPServer: HTTPS answered, plain HTTP not."""
    import threading
    import urllib.error
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from server.auth import AuthConfigError, http_tls_context, serve_tls

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"secret trace"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    httpd.daemon_threads = True
    serve_tls(httpd, http_tls_context(pki.server_cert, pki.server_key))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        assert _https_get(f"https://localhost:{port}/", pki.ca) == "secret trace"
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as ei:
            _plain_get(f"http://127.0.0.1:{port}/")
        assert "secret" not in str(ei.value)
    finally:
        httpd.shutdown()
        httpd.server_close()
    with pytest.raises(AuthConfigError, match="cannot use the TLS files"):
        http_tls_context(pki.ca, pki.server_key)  # key does not match the certificate


def test_http_api_speaks_tls_with_the_servers_certificate(tmp_path, pki):
    """`zerotrace server --tls-cert ... --tls-ca ... --http`: the Tempo/Jaeger/OTLP HTTP
    API is HTTPS only, with client certificates required as on the gRPC port."""
    import ssl
    import urllib.error

    tokens = _token_file(tmp_path / "tokens", f"read {READ_TOKEN}\n")
    srv = Server(tmp_path, "--http", "127.0.0.1:0", "--tls-cert", pki.server_cert,
                 "--tls-key", pki.server_key, "--tls-ca", pki.ca, "--token-file", tokens)
    try:
        line = srv.proc.stdout.readline()
        assert "HTTP API" in line and "https://" in line, line
        base = "https://" + line.split("https://")[1].split()[0]
        client = (pki.client_cert, pki.client_key)

        def get(path: str, cert=client, ca: str = pki.ca) -> int:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.check_hostname = False  # the server certificate names localhost
            if cert:
                ctx.load_cert_chain(*cert)
            req = urllib.request.Request(base + path,
                                         headers={"Authorization": f"Bearer {READ_TOKEN}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert get("/api/echo") == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get("/api/echo", cert=None)  # no client certificate
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get("/api/echo", ca=pki.other_ca)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _plain_get(base.replace("https://", "http://") + "/api/echo")
        assert "metrics=https://" in srv.line
    finally:
        srv.stop()
