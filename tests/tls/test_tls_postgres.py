"""PostgreSQL over TLS (sslmode=require) under the real probes: postgres 15 with ssl=on
(a self-signed certificate made here), started before the tracer, and psql (libpq, the
system libssl) after it.  The client sends SSLRequest and reads the one-byte 'S' in
clear text, then the handshake and every message go through SSL_read/SSL_write: the
clear-text socket carries nothing more to parse, the plaintext connection starts at the
StartupMessage.  Each statement gives the same spans as in clear text (operation,
status, SQLSTATE, sizes), tls=true, client and server linked.  psycopg 3 (the binary
wheel, whose own libssl-<hash>.so.3 is found by the rescan) speaks the extended query
protocol over TLS, linked too."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.probes.loader import ProbeConfig, SocketTracer
from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK
from tests.e2e.conftest import PY, of, run_client, wait_tcp
from tests.helpers.netns import kill_group, network
from tests.tls.test_tls_openssl import LAST_STATS, assert_linked, capture, shape

pytestmark = pytest.mark.kernel
CLIENT, SERVER = 0, 1
PORT = 5432
PG_BIN = "/usr/lib/postgresql/15/bin"
PROGRAMS = Path(__file__).resolve().parent / "programs"
SUBNET = 242
STATEMENTS = [
    # a temporary table: the same answer in both runs (IF NOT EXISTS would add a notice)
    ("CREATE", "CREATE TEMP TABLE tls_tmp (id int)", STATUS_OK, ""),
    ("INSERT tls_users", "INSERT INTO tls_users VALUES (1, 'ann') ON CONFLICT DO NOTHING",
     STATUS_OK, ""),
    ("SELECT tls_users", "SELECT id, name FROM tls_users WHERE id = 1", STATUS_OK, ""),
    ("SELECT tls_missing", "SELECT * FROM tls_missing", STATUS_ERROR, "42P01"),
]


@pytest.fixture(scope="module")
def world():
    if not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN}); run scripts/setup.sh")
    tmp = tempfile.mkdtemp(prefix="zt-tls-pg-")
    os.chmod(tmp, 0o777)  # initdb runs as postgres
    data = os.path.join(tmp, "data")
    with network(2, subnet=SUBNET) as net:
        srv = net.hosts[SERVER]
        proc = None
        try:
            subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", data,
                            "-U", "postgres", "--auth=trust", "--no-sync"],
                           check=True, capture_output=True)
            cert, key = os.path.join(data, "server.crt"), os.path.join(data, "server.key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", key, "-out", cert, "-days", "1",
                            "-subj", "/CN=zerotrace-pg"], check=True, capture_output=True)
            shutil.chown(cert, "postgres")
            shutil.chown(key, "postgres")
            os.chmod(key, 0o600)
            with open(os.path.join(data, "pg_hba.conf"), "a") as f:
                f.write(f"hostssl all all 10.{SUBNET}.0.0/24 trust\n"
                        f"hostnossl all all 10.{SUBNET}.0.0/24 trust\n")
            proc = net.spawn(srv, "runuser", "-u", "postgres", "--", f"{PG_BIN}/postgres",
                             "-D", data, "-k", tmp, "-h", srv.addr, "-p", str(PORT),
                             "-c", "fsync=off", "-c", "ssl=on",
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_tcp(srv, srv.addr, PORT)
            made = psql(net.hosts[CLIENT], srv.addr,
                        "CREATE TABLE tls_users (id int primary key, name text); "
                        "INSERT INTO tls_users VALUES (1, 'ann')", "disable")
            assert made.rc == 0, made.stderr
            cfg = ProbeConfig(netns={h.inode for h in net.hosts})
            with SocketTracer(cfg) as tracer:
                yield net, tracer
        finally:
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)  # fast shutdown
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
                kill_group(proc)
            shutil.rmtree(tmp, ignore_errors=True)


def psql(host, addr: str, sql: str, sslmode: str):
    """One psql run; sslmode "require" or "disable".  gssencmode=disable: no GSSAPI
    request first (libpq tries one when it finds Kerberos credentials)."""
    conn = (f"host={addr} port={PORT} user=postgres dbname=postgres sslmode={sslmode} "
            "gssencmode=disable")
    return run_client(host, "psql", conn, "-X", "-v", "ON_ERROR_STOP=1", "-c", sql,
                      check=False)


def pg(spans, kind):
    return sorted(of(spans, kind, PORT, "postgresql"), key=lambda s: s.start_ns)


@pytest.mark.parametrize("op,sql,status,code", STATEMENTS, ids=[s[0] for s in STATEMENTS])
def test_psql_over_tls_like_clear_text(world, op, sql, status, code):
    net, tracer = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    runs: dict[str, object] = {}

    def one(mode):
        def go():
            runs[mode] = psql(cli, srv.addr, sql, mode)
            return runs[mode]
        # a statement's span and the STARTUP one, each from both ends
        out = capture(tracer, go, lambda ss: any(s.operation == op for s in
                                                 pg(ss, KIND_SERVER)))
        return (*out[1:], dict(LAST_STATS))

    tls_spans, tls_traced, tls_stats = one("require")
    clear_spans, clear_traced, _ = one("disable")
    # no ciphertext reached a parser: every connection spoke PostgreSQL
    assert not tls_stats.get("unknown_protocol_conns"), tls_stats
    for mode in ("require", "disable"):
        r = runs[mode]
        assert (r.rc != 0) == bool(code), (mode, r.stderr)
    if code:
        assert "does not exist" in runs["require"].stderr
    for spans, traced, tls in ((tls_spans, tls_traced, True),
                               (clear_spans, clear_traced, False)):
        cs = [s for s in pg(spans, KIND_CLIENT) if s.operation == op]
        ss = [s for s in pg(spans, KIND_SERVER) if s.operation == op]
        assert len(cs) == 1 and len(ss) == 1, (tls, [(s.kind, s.operation) for s in spans])
        c, s = cs[0], ss[0]
        assert (c.status, c.status_code) == (s.status, s.status_code) == (status, code)
        assert c.process == "psql" and s.process == "postgres"
        assert_linked(c, s, traced, tls=tls)
        if code:
            assert 'relation "tls_missing" does not exist' in c.error
    # the same spans as in clear text, from both ends
    for kind in (KIND_CLIENT, KIND_SERVER):
        assert [shape(s) for s in pg(tls_spans, kind)] == \
            [shape(s) for s in pg(clear_spans, kind)]


def test_tls_counters_name_the_processes(world):
    """The per-process counters (Prometheus, agent/probes/tls.py TlsCollector): psql
    and postgres moved plaintext both ways."""
    net, tracer = world
    r = psql(net.hosts[CLIENT], net.hosts[SERVER].addr, "SELECT 1", "require")
    assert r.rc == 0, r.stderr
    tracer.poll(0.05)
    got = tracer.tls.process_counters()
    for proc in ("psql", "postgres"):
        for d in ("egress", "ingress"):
            assert got["plaintext_bytes"].get((proc, d), 0) > 0, (proc, d, got)
        assert got["connections"].get((proc,), 0) >= 1


def test_psycopg_binary_own_libssl(world):
    """psycopg-binary loads the libssl its wheel bundles (libssl-<hash>.so.3), a file
    of its own: found by the rescan once the client has imported psycopg, then the
    extended query protocol (Parse/Bind/Execute) over TLS, linked."""
    import json
    import time

    net, tracer = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    p = net.spawn(cli, PY, str(PROGRAMS / "pg_tls_client.py"), srv.addr, str(PORT),
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                  env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        lib = None
        while time.monotonic() < deadline and lib is None:
            tracer.poll(0.1)
            lib = next((x for x in tracer.tls.libraries.values()
                        if p.pid in x.pids and "libssl-" in x.path and x.symbols), None)
        assert lib is not None, [(x.path, x.pids) for x in tracer.tls.libraries.values()]

        def go():
            p.stdin.write("go\n")
            p.stdin.flush()
            return json.loads(p.stdout.readline())

        out, spans, traced = capture(
            tracer, go, lambda ss: sum(s.operation.startswith("SELECT") for s in
                                       pg(ss, KIND_SERVER)) >= 2)
        assert out == {"rows": [["ann"]], "sqlstate": "42P01"}
        for op, status, code in (("SELECT tls_users", STATUS_OK, ""),
                                 ("SELECT tls_missing", STATUS_ERROR, "42P01")):
            (c,) = [s for s in pg(spans, KIND_CLIENT) if s.operation == op]
            (s,) = [s for s in pg(spans, KIND_SERVER) if s.operation == op]
            assert (c.status, c.status_code) == (s.status, s.status_code) == (status, code)
            assert s.process == "postgres" and c.pid == p.pid
            assert_linked(c, s, traced)
    finally:
        kill_group(p)
