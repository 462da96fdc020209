"""ClickHouse backend (clickhouse-connect) for users who outgrow one machine.

Same schema and SQL as the embedded store (server/storage/schema.py, sqlstore.py).
Spans are inserted as the Arrow table every wire becomes at ingest (`write`, the
one write method; proto/columns.py); columns declared since the table was made are
added when the store opens.  On a cluster pass
`engine="ReplicatedMergeTree(...)"` and put a Distributed table in front (docs/server.md).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

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

    def _create(self, engine: str = "MergeTree") -> None:
        super()._create(engine)
        # Columns declared since the table was made (proto/schema.py).
        schema.migrate(self._select, self._command, self.db, self.fields)

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

    def write(self, table: pa.Table) -> int:
        if not table.num_rows:
            return 0
        names = [f.name for f in self.fields]
        if table.schema.names != names:
            raise ValueError(f"a span batch has the columns {names}, got {table.schema.names}")
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
