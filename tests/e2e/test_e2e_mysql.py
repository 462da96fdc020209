"""MariaDB: mariadbd in one namespace; the mariadb client (COM_QUERY, and PREPARE /
EXECUTE as SQL, which is still COM_QUERY) and pymysql driving real server-side prepared
statements (COM_STMT_PREPARE / COM_STMT_EXECUTE) in another."""

from __future__ import annotations

import os
import shutil
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
PORT = 3306


@pytest.fixture(scope="module")
def my_server(net):
    host = net.hosts[SERVER]
    tmp = tempfile.mkdtemp(prefix="zt-e2e-my-")
    data, sock = os.path.join(tmp, "data"), os.path.join(tmp, "sock")
    proc = None
    try:
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                        "--user=root", "--auth-root-authentication-method=normal",
                        "--skip-test-db"], check=True, capture_output=True)
        proc = net.spawn(host, "mariadbd", "--no-defaults", f"--datadir={data}",
                         "--user=root", f"--socket={sock}", f"--port={PORT}",
                         f"--bind-address={host.addr}", "--skip-grant-tables",
                         "--skip-log-bin", "--innodb-buffer-pool-size=16M",
                         f"--pid-file={tmp}/pid", f"--log-error={tmp}/err.log",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_tcp(host, host.addr, PORT)
        subprocess.run(host.cmd("mariadb", f"--socket={sock}", "-uroot", "-e",
                                "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY "
                                "KEY, name VARCHAR(50)); INSERT INTO shop.items VALUES "
                                "(1, 'pen'), (2, 'ink')"), check=True, capture_output=True)
        yield host.addr
    finally:
        if proc is not None:
            kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def mariadb(host, addr: str, sql: str, check: bool = True):
    return run_client(host, "mariadb", "-h", addr, "-P", str(PORT), "-uroot", "--skip-ssl",
                      "shop", "-e", sql, check=check)


def test_mariadb_client_queries_and_error(net, sink, my_server):
    cli = net.hosts[CLIENT]
    runs = [
        ("SELECT items", mariadb(cli, my_server, "SELECT id, name FROM items ORDER BY id"),
         STATUS_OK, ""),
        ("INSERT items", mariadb(cli, my_server, "INSERT INTO items VALUES (3, 'cap')"),
         STATUS_OK, ""),
        ("SELECT nope", mariadb(cli, my_server, "SELECT * FROM nope", check=False),
         STATUS_ERROR, "1146"),
        ("INSERT items", mariadb(cli, my_server, "INSERT INTO items VALUES (1, 'dup')",
                                 check=False), STATUS_ERROR, "1062"),
    ]
    assert runs[2][1].rc != 0 and "1146" in runs[2][1].stderr
    sink.wait_for(lambda s: s.protocol == "mysql" and s.status_code == "1062", 2)
    for op, run, status, code in runs:
        pairs = [(c, s) for c, s in pair_by_seq(sink.spans, PORT)
                 if c.operation == op and within(c, run.t0, run.t1)]
        assert len(pairs) == 1, (op, [(s.kind, s.operation) for s in sink.spans])
        c, s = pairs[0]
        assert c.protocol == s.protocol == "mysql"
        assert_pair_timing(c, s, run.t0, run.t1)
        assert c.process == "mariadb" and s.process == "mariadbd"
        assert (c.status, c.status_code) == (s.status, s.status_code) == (status, code)


def test_mariadb_client_sql_prepare_is_com_query(net, sink, my_server):
    """PREPARE/EXECUTE written as SQL: the client sends COM_QUERY, so the spans are the
    PREPARE and EXECUTE statements themselves."""
    run = mariadb(net.hosts[CLIENT], my_server,
                  "PREPARE s FROM 'SELECT name FROM items WHERE id = ?'; SET @a = 2; "
                  "EXECUTE s USING @a; DEALLOCATE PREPARE s")
    assert "ink" in run.stdout
    sink.wait_for(lambda s: s.protocol == "mysql" and within(s, run.t0, run.t1)
                  and s.operation.startswith("DEALLOCATE"), 2)
    pairs = [(c, s) for c, s in pair_by_seq(sink.spans, PORT) if within(c, run.t0, run.t1)]
    ops = [c.operation.split()[0] for c, _ in sorted(pairs, key=lambda p: p[0].start_ns)]
    assert ops[-4:] == ["PREPARE", "SET", "EXECUTE", "DEALLOCATE"], ops
    for c, s in pairs:
        assert_pair_timing(c, s, run.t0, run.t1)
        assert c.status == STATUS_OK


def test_pymysql_server_side_prepared_statements(net, sink, my_server):
    run = run_client(net.hosts[CLIENT], PY, "-m", "tests.e2e.clients.mysql_client",
                     my_server, cwd=os.getcwd())
    info = run.json()
    ops = info["ops"]
    assert ops[-1]["code"] == 1146 and ops[2]["rows"] == 1
    sink.wait_for(lambda s: s.protocol == "mysql" and s.status_code == "1146"
                  and s.start_ns >= ops[-1]["t0"], 2)
    for o in ops:
        mine = [s for s in sink.spans if s.protocol == "mysql" and within(s, o["t0"], o["t1"])]
        client, server = of(mine, KIND_CLIENT, PORT), of(mine, KIND_SERVER, PORT)
        assert [s.operation for s in client] == [o["op"]], (o, [s.operation for s in mine])
        assert len(server) == 1 and client[0].pid == info["pid"]
        (c, s), = pair_by_seq(mine, PORT)
        assert_pair_timing(c, s, o["t0"], o["t1"])
        if "code" in o:
            assert (c.status, c.status_code) == (s.status, s.status_code) \
                == (STATUS_ERROR, "1146")
            assert "nope" in c.error
        else:
            assert c.status == s.status == STATUS_OK
        if o.get("prepared"):  # EXECUTE of a statement prepared earlier keeps its SQL
            assert "?" in c.attributes.get("db.query.text", ""), c.attributes
