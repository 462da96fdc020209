"""Server test fixtures: one chDB session per test process (chDB allows one data
directory per process), shared by every in-process store and server."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def chdb_root():
    from server.storage.chdb_store import ChdbStore

    d = tempfile.mkdtemp(prefix="zt-chdb-")
    s = ChdbStore(d, db="zt_root")
    yield s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def zt_server(chdb_root):
    """A real gRPC server on a loopback port over a fresh database; yields it."""
    import uuid

    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"srv_{uuid.uuid4().hex[:12]}")
    srv = ZerotraceServer("127.0.0.1:0", store=store)
    srv.start()
    srv.addr = f"127.0.0.1:{srv.port}"
    yield srv
    srv.stop(grace=0.5)
    store.drop()
