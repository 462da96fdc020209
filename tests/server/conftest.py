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
