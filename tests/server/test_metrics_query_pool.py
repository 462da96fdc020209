"""The query pool's refusals reach /metrics (issue 14): zerotrace_server_queries_refused.

A real chDB store with a pool of one session and no room to wait: while the session is
taken, a query is refused (QueryPoolBusy, the server's UNAVAILABLE) and the counter the
server's collector exports moves by exactly the refusals, scraped over HTTP."""

from __future__ import annotations

import urllib.request

import pytest

from server.ingest.writer import BatchWriter
from server.metrics import ServerCollector, serve_collectors

chdb_store = pytest.importorskip("server.storage.chdb_store")


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("zerotrace_server_queries_refused"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_refused_queries_are_counted_and_exported(chdb_root):
    import uuid

    # chDB takes one data directory per process: a database of the shared one, given a
    # pool of its own (one session, no room to wait)
    limits = chdb_store.QueryLimits(sessions=1, waiting=0, wait_s=0.1)
    store = chdb_root.for_database(f"pool_{uuid.uuid4().hex[:12]}")
    store._reads = chdb_store._ReadPool(chdb_root.data_dir, limits)
    writer = BatchWriter(store)
    server, port = serve_collectors("127.0.0.1:0", ServerCollector({}, writer))
    try:
        assert _scrape(port) == {"zerotrace_server_queries_refused_total": 0.0}
        assert store.services(0, 2**62) == []  # the pool answers while it is free
        held = store._reads.acquire()  # a long query holds the only session
        try:
            for _ in range(3):
                with pytest.raises(chdb_store.QueryPoolBusy):
                    store.services(0, 2**62)
        finally:
            store._reads.release(held)
        assert store.services(0, 2**62) == []  # free again: answered, not counted
        assert store.queries_refused == 3
        assert _scrape(port) == {"zerotrace_server_queries_refused_total": 3.0}
    finally:
        server.shutdown()
        writer.close()
        store._reads.close()
        store.drop()


def test_stores_without_a_query_pool_export_no_refusal_series():
    class _NoPool:
        pass

    class _Writer:
        store = _NoPool()
        inserts = 0

    names = {m.name for m in ServerCollector({}, _Writer()).collect()}
    assert "zerotrace_server_queries_refused" not in names
    assert "zerotrace_server_store_inserts" in names
