"""The embedded default backend: chDB (ClickHouse in-process) in a data directory.

chDB allows one data directory per process, so a process holds one `ChdbStore`
(several databases in it are fine: tests use one per case).  All calls go through
one lock because a chDB session is not safe for concurrent use.  Batches arrive as
Arrow tables (read by ClickHouse's ArrowStream reader) or serialized `SpanList`s
(its ProtobufList reader): the server never builds a Python object per ingested span.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from proto import schema as span_schema
from proto.columns import table_to_ipc
from proto.convert import spans_to_list
from proto.span import Span
from server.storage import schema
from server.storage.base import StorageError
from server.storage.sqlstore import SqlStore

SPAN_PROTO = Path(__file__).resolve().parents[2] / "proto" / "zerotrace" / "v1" / "span.proto"

# Insert-side settings: the schema file of ProtobufList; one thread because the
# ingest budget is one core and batches are small.
# A batch may hold spans of many days (late or replayed spans): ClickHouse's default
# refuses an insert into more than 100 partitions (days), and the batch, retried,
# could never be stored.  A part per day is the cost; such batches are rare.
_MANY_DAYS = "max_partitions_per_insert_block = 0"
_INSERT_SETTINGS = (f"format_schema = '{SPAN_PROTO}:Span', max_insert_threads = 1, "
                    f"max_threads = 1, {_MANY_DAYS}")
# Invalid UTF-8 in stored strings (rows written before ingest refused it) is written
# as U+FFFD instead of raw bytes, so that no stored value can make a query fail.
_SELECT_SETTINGS = (" SETTINGS output_format_json_quote_64bit_integers = 0, "
                    "output_format_json_validate_utf8 = 1")


# Keys of the batches stored (server/ingest/writer.py: a resent batch is acked, not
# stored again).  A day is far longer than an agent retries a batch (8 attempts,
# backoff up to 10 s); the TTL keeps the table small (~20 bytes a batch).
BATCHES_TABLE = "ingest_batches"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class ChdbStore(SqlStore):
    """chDB-backed `SpanStore` persisting under `data_dir`."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        db: str = schema.DATABASE,
        _parent: ChdbStore | None = None,
        *,
        fields: Sequence[span_schema.Field] = span_schema.FIELDS,
        span_type: type[Span] = Span,
    ) -> None:
        super().__init__(db, fields, span_type)
        self.data_dir = str(Path(data_dir).resolve())
        self._closed = False
        self._owner = _parent is None
        if _parent is not None:
            self._lock, self._s = _parent._lock, _parent._s
        else:
            from chdb import session as chdb_session

            try:
                Path(self.data_dir).mkdir(parents=True, exist_ok=True)
                self._s = chdb_session.Session(self.data_dir)
            except Exception as e:  # chDB raises plain RuntimeError subclasses
                raise StorageError(f"cannot open chDB data directory {self.data_dir}: {e}") from e
            self._lock = threading.Lock()
        self._create()

    def _create(self, engine: str = "MergeTree") -> None:
        super()._create(engine)
        self._command(
            f"CREATE TABLE IF NOT EXISTS {self.db}.{BATCHES_TABLE} "
            "(sender String, seq UInt64, spans UInt32, at DateTime DEFAULT now()) "
            "ENGINE = MergeTree ORDER BY (sender, seq) TTL at + INTERVAL 1 DAY"
        )

    def stored_batches(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """{(sender, seq): spans stored} of the `keys` already stored."""
        if not keys:
            return {}
        # Senders are hex (server/ingest/service.py hashes them): a comma list is safe,
        # and bound as one parameter, never spliced into the SQL.
        rows = self._select(
            f"SELECT sender, seq, max(spans) AS spans FROM {self.db}.{BATCHES_TABLE} "
            "WHERE sender IN (SELECT arrayJoin(splitByChar(',', {s:String}))) "
            "AND seq IN (SELECT toUInt64(arrayJoin(splitByChar(',', {q:String})))) "
            "GROUP BY sender, seq",
            {"s": ",".join(sorted({k for k, _ in keys})),
             "q": ",".join(sorted({str(int(q)) for _, q in keys}))},
        )
        wanted = set(keys)
        found = {(r["sender"], int(r["seq"])): int(r["spans"]) for r in rows}
        return {k: n for k, n in found.items() if k in wanted}

    def record_batches(self, batches: Sequence[tuple[tuple[str, int], int]]) -> None:
        """Remember ((sender, seq), spans) of batches just stored."""
        if not batches:
            return
        for (sender, _), _ in batches:
            if not sender or not all(c in "0123456789abcdef" for c in sender):
                raise ValueError(f"batch sender must be lowercase hex, not {sender!r}")
        rows = ",".join(f"{s}:{int(q)}:{int(n)}" for (s, q), n in batches)
        self._command(
            f"INSERT INTO {self.db}.{BATCHES_TABLE} (sender, seq, spans) "
            "SELECT x[1], toUInt64(x[2]), toUInt32(x[3]) FROM "
            "(SELECT splitByChar(':', arrayJoin(splitByChar(',', {r:String}))) AS x)",
            {"r": rows},
        )

    def for_database(self, db: str) -> ChdbStore:
        """A store on another database of the same session (one chDB per process)."""
        return ChdbStore(self.data_dir, db, _parent=self, fields=self.fields,
                         span_type=self.span_type)

    def _select(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            try:
                res = self._s.query(sql + _SELECT_SETTINGS, "JSONEachRow", params=params or None)
            except Exception as e:
                raise StorageError(str(e)) from e
        data = res.bytes()
        if not data:
            return []
        return [json.loads(line) for line in data.splitlines() if line]

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self._lock:
            try:
                self._s.query(sql, "CSV", params=params or None)
            except Exception as e:
                raise StorageError(str(e)) from e

    def write_span_list(self, data: bytes) -> int:
        if not data:
            return 0
        # ProtobufList reads length-delimited envelopes.
        return self._insert("ProtobufList", _varint(len(data)) + data,
                            f" SETTINGS {_INSERT_SETTINGS}")

    def write_span_table(self, table: pa.Table) -> int:
        if not table.num_rows:
            return 0
        # Uncompressed: the columns are copied as they are (~1 us a span to insert,
        # against ~5 for ProtobufList).
        return self._insert("ArrowStream", table_to_ipc(table, compress=False),
                            f" SETTINGS max_insert_threads = 1, max_threads = 1, {_MANY_DAYS}")

    def _insert(self, fmt: str, payload: bytes, settings: str) -> int:
        with self._lock:
            before = self._count_locked()
            try:
                ins = self._s.send_insert(f"INSERT INTO {self.table}{settings}", fmt)
            except Exception as e:
                raise StorageError(str(e)) from e
            try:
                ins.append(payload)
                res = ins.finish()
            except Exception as e:
                # An insert left open blocks every later query of the session.
                try:
                    ins.cancel()
                except Exception:  # noqa: BLE001 - already closed by the failure
                    pass
                raise StorageError(str(e)) from e
            # chDB's streaming insert can report rows written yet commit nothing (a
            # CHECK violation is swallowed), so the ack is based on the table count,
            # which is exact here because every write holds the lock.
            # The search index's and join keys' materialized views count in
            # rows_written too.
            written = int(getattr(res, "rows_written", 0))
            after = self._count_locked()
            stored = after[0] - before[0]
        if stored + sum(after[1:]) - sum(before[1:]) != written:
            raise StorageError(
                f"insert of {written} spans stored {stored}: rows refused by the table "
                "constraints (bad ids or times) or the write failed"
            )
        return stored

    def _count_locked(self) -> tuple[int, ...]:
        """(rows in the span table, in the search index, in the join-key table)."""
        try:
            res = self._s.query(
                f"SELECT (SELECT count() FROM {self.table}), (SELECT count() FROM {self.index}), "
                f"(SELECT count() FROM {self.join_keys})",
                "CSV",
            )
        except Exception as e:
            raise StorageError(str(e)) from e
        return tuple(int(x) for x in res.bytes().decode().strip().split(","))

    def write_spans(self, spans: Sequence[Span]) -> int:
        if not spans:
            return 0
        return self.write_span_list(spans_to_list(spans).SerializeToString())

    def drop(self) -> None:
        """Drop this store's database (tests)."""
        self._command(f"DROP DATABASE IF EXISTS {self.db}")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._owner:
                    self._s.close()
