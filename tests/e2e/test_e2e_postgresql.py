"""PostgreSQL 15: postgres in one namespace; psql (simple query) and psycopg 3 (extended
query protocol, server-side parameters) in another."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK
from tests.e2e.conftest import (
    CLIENT,
    PY,
    SERVER,
    assert_pair_timing,
    of,
    pair_by_seq,
    run_client,
    wait_tcp,
    within,
)
from tests.helpers.netns import kill_group

pytestmark = pytest.mark.kernel
PORT = 5432
PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="module")
def pg_server(net):
    if not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN}); run scripts/setup.sh")
    host = net.hosts[SERVER]
    tmp = tempfile.mkdtemp(prefix="zt-e2e-pg-")
    os.chmod(tmp, 0o777)
    data = os.path.join(tmp, "data")
    proc = None
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", data,
                        "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True)
        with open(os.path.join(data, "pg_hba.conf"), "a") as f:
            f.write("host all all 10.231.0.0/24 trust\n")
        proc = net.spawn(host, "runuser", "-u", "postgres", "--", f"{PG_BIN}/postgres",
                         "-D", data, "-k", tmp, "-h", host.addr, "-p", str(PORT),
                         "-c", "fsync=off", "-c", "ssl=off",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_tcp(host, host.addr, PORT)
        yield host.addr
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # fast shutdown
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def psql(host, addr: str, sql: str, check: bool = True):
    return run_client(host, "psql", "-h", addr, "-p", str(PORT), "-U", "postgres", "-X",
                      "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql, check=check)


def test_psql_simple_queries_and_error(net, sink, pg_server):
    cli = net.hosts[CLIENT]
    runs = [
        ("CREATE", psql(cli, pg_server, "CREATE TABLE e2e_users (id int primary key, "
                                         "name text)"), STATUS_OK, ""),
        ("INSERT e2e_users", psql(cli, pg_server, "INSERT INTO e2e_users VALUES "
                                                   "(1, 'ann'), (2, 'bob')"), STATUS_OK, ""),
        ("SELECT e2e_users", psql(cli, pg_server, "SELECT id, name FROM e2e_users "
                                                   "WHERE id = 1"), STATUS_OK, ""),
        ("SELECT e2e_missing", psql(cli, pg_server, "SELECT * FROM e2e_missing", check=False),
         STATUS_ERROR, "42P01"),
    ]
    assert runs[-1][1].rc != 0 and "does not exist" in runs[-1][1].stderr
    sink.wait_for(lambda s: s.operation == "SELECT e2e_missing", 2)
    for op, run, status, code in runs:
        pairs = [(c, s) for c, s in pair_by_seq(sink.spans, PORT)
                 if c.operation == op and within(c, run.t0, run.t1)]
        assert len(pairs) == 1, (op, [(s.kind, s.operation, s.req_seq) for s in sink.spans])
        c, s = pairs[0]
        assert c.protocol == s.protocol == "postgresql"
        assert_pair_timing(c, s, run.t0, run.t1)
        assert c.process == "psql" and s.process == "postgres"
        assert (c.status, c.status_code) == (s.status, s.status_code) == (status, code)
        if code:
            assert 'relation "e2e_missing" does not exist' in c.error


def test_psycopg_extended_protocol(net, sink, pg_server):
    run = run_client(net.hosts[CLIENT], PY, "-m", "tests.e2e.clients.pg_client", pg_server,
                     cwd=os.getcwd())
    info = run.json()
    ops = info["ops"]
    assert info["rows"] == [["ann"]] and ops[-1]["sqlstate"] == "42P01"
    sink.wait_for(lambda s: s.operation == "SELECT e2e_missing"
                  and s.start_ns >= ops[-1]["t0"] - 1_000_000, 2)
    for o in ops:
        mine = [s for s in sink.spans if s.protocol == "postgresql"
                and within(s, o["t0"], o["t1"])]
        client = of(mine, KIND_CLIENT, PORT)
        server = of(mine, KIND_SERVER, PORT)
        assert [s.operation for s in client] == [o["op"]], (o, [s.operation for s in mine])
        assert len(server) == 1 and client[0].pid == info["pid"]
        pairs = pair_by_seq(mine, PORT)
        assert len(pairs) == 1
        c, s = pairs[0]
        assert_pair_timing(c, s, o["t0"], o["t1"])
        if "sqlstate" in o:
            assert c.status == s.status == STATUS_ERROR
            assert c.status_code == s.status_code == "42P01"
        else:
            assert c.status == s.status == STATUS_OK
        # extended protocol: the SQL text came from Parse, with placeholders, no values
        text = c.attributes.get("db.query.text", "")
        assert "$1" in text and "'seven'" not in text, c.attributes


def test_backend_spans_not_midstream(net, sink, pg_server):
    run = psql(net.hosts[CLIENT], pg_server, "SELECT 1")
    sink.wait_for(lambda s: s.kind == KIND_SERVER and within(s, run.t0, run.t1), 1)
    server = [s for s in of(sink.spans, KIND_SERVER, PORT) if within(s, run.t0, run.t1)]
    assert [s.operation for s in server] == ["SELECT"]
    assert [s.operation for s in server if s.attributes.get("zerotrace.midstream")] == []
