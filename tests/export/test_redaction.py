"""Redaction on by default, at the export boundary (issue 14, "Redaction").

Hostile but real-looking values, as traffic and hosts carry them, go through the
agent's `BatchExporter` (every exported span passes there, whichever parser or
enricher made it) and through /proc of a real process: URL query values of sensitive
names, SQL literals (strings and numbers become `?`, the statement's shape kept),
bearer tokens and JWTs anywhere, API keys of known shapes, credentials in URLs, and
secrets in process command lines.  Ordinary values must come out unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from agent.enrich.process import read_process
from agent.export import BatchExporter
from agent.export.memory import InMemoryExporter
from agent.protocols import redact
from proto.span import Span

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4i"
       "LCJhZG1pbiI6dHJ1ZX0.TJVA95OrM7E2cBab30RMHrHDcEfxjoYZgeFONFh7HgQ")
SECRETS = ("hunter2", "s3cr3t", "sk_live_51HcZq2abcdefghij", "123-45-6789", JWT, "9f8e7d6c5b4a",
           "ghp_0123456789abcdefghijABCDEFGHIJ", "AKIAIOSFODNN7EXAMPLE", "4242.17")


def _export(span: Span) -> Span:
    mem = InMemoryExporter()
    b = BatchExporter(mem, schedule_delay_s=0.01)
    b.submit([span])
    assert b.force_flush(10)
    b.shutdown(5)
    [out] = mem.spans
    return out


def _hostile() -> Span:
    return Span(
        trace_id="1" * 32, service="api", kind="server", protocol="http",
        operation="GET /v1/charges",
        error=f"upstream said: invalid token Bearer {JWT}",
        attributes={
            "url.path": "/v1/charges",
            "url.query": "customer=cus_42&api_key=sk_live_51HcZq2abcdefghij&page=2"
                         "&access_token=9f8e7d6c5b4a&X-Amz-Signature=9f8e7d6c5b4a",
            "url.full": "https://pay.example/v1?client_secret=s3cr3t&limit=10",
            "http.request.header.x-forwarded-auth": f"Bearer {JWT}",
            "http.request.header.x-api-key": "ghp_0123456789abcdefghijABCDEFGHIJ",
            "db.query.text": "SELECT name FROM users WHERE ssn = '123-45-6789' AND "
                             "balance > 4242.17 AND id = $1 LIMIT 10",
            "messaging.payload": "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
            "user_agent.original": "curl/8.5.0",
            "server.port": 443,
        },
        resource={
            "process.command_line": "/usr/bin/worker --db-password=hunter2 "
                                    "--dsn postgres://app:s3cr3t@db:5432/shop -v",
            "k8s.pod.name": "api-7f9c-abcde",
        },
    )


def test_exported_spans_carry_no_secret():
    out = _export(_hostile())
    blob = repr(out.to_dict())
    leaked = [s for s in SECRETS if s in blob]
    assert not leaked, leaked
    a = out.attributes
    # What stays is what makes the span useful.
    assert a["url.query"] == ("customer=cus_42&api_key=[REDACTED]&page=2"
                              "&access_token=[REDACTED]&X-Amz-Signature=[REDACTED]")
    assert a["url.full"] == "https://pay.example/v1?client_secret=[REDACTED]&limit=10"
    assert a["db.query.text"] == ("SELECT name FROM users WHERE ssn = ? AND balance > ? "
                                  "AND id = $1 LIMIT ?")
    assert a["http.request.header.x-forwarded-auth"] == "Bearer [REDACTED]"
    assert a["user_agent.original"] == "curl/8.5.0" and a["server.port"] == 443
    assert out.resource["process.command_line"] == (
        "/usr/bin/worker --db-password=[REDACTED] "
        "--dsn postgres://app:[REDACTED]@db:5432/shop -v")
    assert out.resource["k8s.pod.name"] == "api-7f9c-abcde"
    assert out.error == "upstream said: invalid token Bearer [REDACTED]"
    assert out.operation == "GET /v1/charges"


def test_originals_are_left_as_they_are():
    """Others hold the spans the exporter gets (printed traces, the demo's fidelity
    count, which finds request nonces in SQL literals): they see the values."""
    span = _hostile()
    before = span.to_dict()
    out = _export(span)
    assert span.to_dict() == before and out is not span
    plain = Span(trace_id="2" * 32, operation="GET /x", attributes={"url.path": "/x"})
    assert redact.spans([plain])[0] is plain  # nothing to mask: not copied


def test_redaction_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(redact, "REDACT", False)
    span = _hostile()
    want = span.to_dict()
    assert _export(span).to_dict() == want


@pytest.mark.parametrize("sql, want", [
    ("INSERT INTO users (name, ssn) VALUES ('O''Brien', '078-05-1120')",
     "INSERT INTO users (name, ssn) VALUES (?, ?)"),
    ("UPDATE accounts SET key = E'sk_live_\\'x' WHERE id = -7 AND f = 1.5e3",
     "UPDATE accounts SET key = ? WHERE id = ? AND f = ?"),
    ("SELECT * FROM \"Users\" u WHERE u.token = $tok$eyJhbGciOi$tok$ AND t2.c = 0xFF",
     "SELECT * FROM \"Users\" u WHERE u.token = ? AND t2.c = ?"),
    ("SELECT a FROM b WHERE c = :name AND d = ? AND e IN (1, 2, 3) /* app='x' */",
     "SELECT a FROM b WHERE c = :name AND d = ? AND e IN (?, ?, ?) /* app='x' */"),
    ("SELECT * FROM t WHERE password = 'cut by the capt", "SELECT * FROM t WHERE password = ?"),
    ("SELECT col1, t3.col2 FROM t3 WHERE x = y", "SELECT col1, t3.col2 FROM t3 WHERE x = y"),
])
def test_sql_literals(sql, want):
    assert redact.sql_literals(sql) == want


def test_query_names_that_only_contain_a_sensitive_word_are_kept():
    q = "classname=Foo&footprint=3&author=bob&api_key=k1&otp=123456&Auth=x"
    assert redact.url_query(q) == ("classname=Foo&footprint=3&author=bob"
                                   "&api_key=[REDACTED]&otp=[REDACTED]&Auth=[REDACTED]")


@pytest.mark.parametrize("cmd, secret", [
    ("mysql -u root --password hunter2 -h db", "hunter2"),
    ("java -Dspring.datasource.password=hunter2 -jar app.jar", "hunter2"),
    ("env PGPASSWORD=hunter2 psql -h db", "hunter2"),
    ("redis-cli -u redis://default:hunter2@cache:6379", "hunter2"),
    ("app --api-key=ghp_0123456789abcdefghijABCDEFGHIJ", "ghp_0123"),
    ("curl -H 'Authorization: Bearer abc.def-123456' https://x", "abc.def-123456"),
])
def test_command_line_secrets(cmd, secret):
    out = redact.command_line(cmd)
    assert secret not in out and redact.MASK in out


@pytest.mark.parametrize("ordinary", [
    "python -m http.server 8000", "nginx -g daemon off;", "postgres -D /var/lib/pg",
    "GET /users/42?page=3&sort=name", "Token expired", "https://example.com:8443/path",
    "zerotrace agent --token-file /etc/zerotrace/token --server zt:4317",
])
def test_ordinary_values_unchanged(ordinary):
    assert redact.command_line(ordinary) == ordinary
    assert redact.text(ordinary) == ordinary


def test_command_line_of_a_real_process_is_masked():
    """A real process started with secrets in its argv: /proc gives them to anyone on
    the host, the agent must not pass them on."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                          "--password=hunter2", "postgres://app:s3cr3t@db/x", "--port", "5432"])
    try:
        for _ in range(50):
            info = read_process(p.pid)
            if info and "--password" in info.cmdline:
                break
            time.sleep(0.05)
        assert info is not None
        assert "hunter2" not in info.cmdline and "s3cr3t" not in info.cmdline
        assert "--password=[REDACTED]" in info.cmdline
        assert "postgres://app:[REDACTED]@db/x --port 5432" in info.cmdline
    finally:
        p.kill()
        p.wait()
