"""ClickHouse backend (clickhouse-connect) for users who outgrow one machine.

Same schema and SQL as the embedded store (server/storage/schema.py, sqlstore.py).
Spans are inserted as columns because a remote server cannot read our .proto
schema file; on a cluster pass `engine="ReplicatedMergeTree(...)"` and put a
Distributed table in front (docs/server.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from proto.span import Span
from server.storage import schema
from server.storage.base import StorageError
from server.storage.sqlstore import SqlStore


def span_row(s: Span) -> list[Any]:
    """One insert row in `schema.COLUMN_NAMES` order."""
    plain = {k: v for k, v in s.attributes.items() if isinstance(v, str)}
    typed = {
        k: json.dumps(v, separators=(",", ":"))
        for k, v in s.attributes.items()
        if not isinstance(v, str)
    }
    return [
        bytes.fromhex(s.trace_id),
        bytes.fromhex(s.span_id),
        bytes.fromhex(s.parent_span_id),
        s.kind, s.source, s.protocol, s.operation, s.status, s.status_code, s.error,
        s.start_ns, s.end_ns, s.service, s.pid, s.tid, s.process, s.cgroup_id, s.netns,
        s.transport, s.local.addr, s.local.port, s.remote.addr, s.remote.port,
        s.req_seq, s.resp_seq, s.req_offset, s.resp_offset, s.req_bytes, s.resp_bytes,
        dict(s.trace_headers), plain, typed, {k: str(v) for k, v in s.resource.items()},
        s.incomplete, s.agent,
    ]  # fmt: skip


class ClickHouseStore(SqlStore):
    """`SpanStore` on a ClickHouse server reached over HTTP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8123,
        username: str = "default",
        password: str = "",
        db: str = schema.DATABASE,
        engine: str = "MergeTree",
        connect_timeout: float = 3.0,
    ) -> None:
        super().__init__(db)
        import clickhouse_connect

        try:
            self._c = clickhouse_connect.get_client(
                host=host, port=port, username=username, password=password,
                connect_timeout=connect_timeout,
            )
        except Exception as e:
            raise StorageError(f"cannot reach ClickHouse at {host}:{port}: {e}") from e
        self._create(engine)

    def _select(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            return list(self._c.query(sql, parameters=params or None).named_results())
        except Exception as e:
            raise StorageError(str(e)) from e

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        try:
            self._c.command(sql, parameters=params or None)
        except Exception as e:
            raise StorageError(str(e)) from e

    def write_spans(self, spans: Sequence[Span]) -> int:
        if not spans:
            return 0
        try:
            self._c.insert(
                self.table, [span_row(s) for s in spans], column_names=schema.COLUMN_NAMES
            )
        except Exception as e:
            raise StorageError(str(e)) from e
        return len(spans)

    def drop(self) -> None:
        self._command(f"DROP DATABASE IF EXISTS {self.db}")

    def close(self) -> None:
        self._c.close()
