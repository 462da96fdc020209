"""The conformance suite on a real ClickHouse server (clickhouse-connect).

Runs when ZEROTRACE_CLICKHOUSE=HOST:PORT (HTTP port) names a reachable server, or one
answers on 127.0.0.1:8123; otherwise skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from storage_conformance import StorageConformance

ADDR = os.environ.get("ZEROTRACE_CLICKHOUSE", "127.0.0.1:8123")


def _reachable() -> str | None:
    host, _, port = ADDR.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError as e:
        return f"no ClickHouse server reachable at {ADDR} ({e}); set ZEROTRACE_CLICKHOUSE"
    try:
        import clickhouse_connect  # noqa: F401
    except ImportError:
        return "clickhouse-connect is not installed"
    return None


_why = _reachable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def store():
    from server.storage.clickhouse_store import ClickHouseStore

    host, _, port = ADDR.rpartition(":")
    s = ClickHouseStore(host=host, port=int(port), db=f"zt_test_{uuid.uuid4().hex[:12]}")
    yield s
    s.drop()
    s.close()


class TestClickHouseConformance(StorageConformance):
    pass
