"""ClickHouse backend (clickhouse-connect) for users who outgrow one machine.

Same schema and SQL as the embedded store (server/storage/schema.py, sqlstore.py).
Spans are inserted as Arrow columns (proto/columns.py, the agent's wire format)
because a remote server cannot read our .proto schema file; on a cluster pass
`engine="ReplicatedMergeTree(...)"` and put a Distributed table in front (docs/server.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from proto.columns import spans_to_table
from proto.span import Span
from server.storage import schema
from server.storage.base import StorageError
from server.storage.sqlstore import SqlStore


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
        return self.write_span_table(spans_to_table(spans))

    def write_span_table(self, table: pa.Table) -> int:
        if not table.num_rows:
            return 0
        try:
            # self.table is "db.spans"; clickhouse-connect quotes the name it is given.
            # clickhouse-connect writes the Arrow file format, which allows one
            # dictionary per column: batches of several agents must share theirs.
            # A batch may cover more than 100 days (late or replayed spans, no
            # retention): ClickHouse's default would refuse it on every retry.
            self._c.insert_arrow(schema.TABLE, table.unify_dictionaries(), database=self.db,
                                 settings={"max_partitions_per_insert_block": 0})
        except Exception as e:
            raise StorageError(str(e)) from e
        return table.num_rows

    def drop(self) -> None:
        self._command(f"DROP DATABASE IF EXISTS {self.db}")

    def close(self) -> None:
        self._c.close()
