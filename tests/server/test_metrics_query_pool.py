"""The query pool's refusals reach /metrics (issue 14): zerotrace_server_queries_refused.

A real chDB store with a pool of one session and no room to wait: while the session is
taken, a query is refused (QueryPoolBusy, the server's UNAVAILABLE) and the counter the
server's collector exports moves by exactly the refusals, scraped over HTTP.  The store
runs in a process of its own: chDB opens one data directory per process, and the other
server tests share theirs (tests/server/conftest.py) with a pool of default limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = r"""
import json, sys, urllib.request
from server.ingest.writer import BatchWriter
from server.metrics import ServerCollector, serve_collectors
from server.storage import chdb_store

def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {n: float(v) for n, v in (line.rsplit(" ", 1) for line in text.decode().splitlines()
                                     if line.startswith("zerotrace_server_queries_refused"))}

limits = chdb_store.QueryLimits(sessions=1, waiting=0, wait_s=0.1)
store = chdb_store.ChdbStore(sys.argv[1], query_limits=limits)
writer = BatchWriter(store)
server, port = serve_collectors("127.0.0.1:0", ServerCollector({}, writer))
out = {"before": scrape(port), "free": store.services(0, 2**62)}
held = store._reads.acquire()  # a long query holds the only session
refused = 0
try:
    for _ in range(3):
        try:
            store.services(0, 2**62)
        except chdb_store.QueryPoolBusy:
            refused += 1
finally:
    store._reads.release(held)
out.update(refused=refused, again=store.services(0, 2**62), counted=store.queries_refused,
           after=scrape(port))
server.shutdown()
writer.close()
store.close()
print(json.dumps(out))
"""


def test_refused_queries_are_counted_and_exported(tmp_path):
    pytest.importorskip("chdb")
    r = subprocess.run([sys.executable, "-c", SCENARIO, str(tmp_path / "data")], cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    name = "zerotrace_server_queries_refused_total"
    assert out["before"] == {name: 0.0}
    assert out["free"] == [] and out["again"] == []  # a free pool answers, uncounted
    assert out["refused"] == out["counted"] == 3
    assert out["after"] == {name: 3.0}


def test_stores_without_a_query_pool_export_no_refusal_series():
    from server.metrics import ServerCollector

    class _NoPool:
        pass

    class _Writer:
        store = _NoPool()
        inserts = 0

    names = {m.name for m in ServerCollector({}, _Writer()).collect()}
    assert "zerotrace_server_queries_refused" not in names
    assert "zerotrace_server_store_inserts" in names
