"""The embedded default backend: chDB (ClickHouse in-process) in a data directory.

chDB allows one data directory per process, so a process holds one `ChdbStore`
(several databases in it are fine: tests use one per case).  Batches arrive as
Arrow tables (`write`, read by ClickHouse's ArrowStream reader, ~1 us a span where
ProtobufList cost ~5): the server never builds a Python object per ingested span.

Reads apart from writes (issue 14 item 4): one chDB session runs one statement at a
time (a second caller waits inside chDB for the first to finish), but several
sessions on the one data directory share its embedded server and run at once, with
the GIL released while ClickHouse works.  So writes (inserts, deletes, DDL and the
write path's own reads) go through one write session under a lock, and queries
through a pool of read sessions with their own limits (`QueryLimits`): how many run
at once, how many may wait, for how long, threads and memory a query.  A heavy query
no longer holds the lock a push needs: on 400 000 spans with 2 clients running
`dependencies` and searches without pause, push p99 went from 5.2-7.6 s to
tens of ms (tests/server/test_faults_query_load.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from proto import schema as span_schema
from proto.columns import table_to_ipc
from proto.span import Span
from server.storage import schema
from server.storage.base import StorageError
from server.storage.sqlstore import SqlStore

# Insert-side settings: one thread because the ingest budget is one core and batches
# are small.  A batch may hold spans of many days (late or replayed spans):
# ClickHouse's default refuses an insert into more than 100 partitions (days), and
# the batch, retried, could never be stored.  A part per day is the cost; such
# batches are rare.
_MANY_DAYS = "max_partitions_per_insert_block = 0"
_INSERT_SETTINGS = f"max_insert_threads = 1, max_threads = 1, {_MANY_DAYS}"
# Invalid UTF-8 in stored strings (rows written before ingest refused it) is written
# as U+FFFD instead of raw bytes, so that no stored value can make a query fail.
_SELECT_SETTINGS = (" SETTINGS output_format_json_quote_64bit_integers = 0, "
                    "output_format_json_validate_utf8 = 1")


# Keys of the batches stored (server/ingest/writer.py: a resent batch is acked, not
# stored again).  A day is far longer than an agent retries a batch (8 attempts,
# backoff up to 10 s); the TTL keeps the table small (~20 bytes a batch).
BATCHES_TABLE = "ingest_batches"


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """Limits of the query pool, apart from the write path's.

    `sessions` queries run at once (each on its own chDB session); up to `waiting`
    more wait for one, at most `wait_s` seconds; others are refused at once with a
    retryable error (gRPC UNAVAILABLE), so that queries cannot hold every RPC worker
    and starve pushes.  A query uses at most `threads` threads and `memory_bytes` of
    memory (0: no limit of its own), and its threads run at `nice` (ClickHouse's
    os_thread_priority, restored after the query): on a busy host the kernel gives
    the CPU to the insert first, so a push is not slowed by the queries' share.
    ClickHouse applies `nice` only with CAP_SYS_NICE (it could not restore the
    thread's priority without it): in the chart's pod, capabilities dropped, it is a
    no-op (checked), and the sessions and threads limits are what separate the two.
    """

    sessions: int = 2
    waiting: int = 8
    wait_s: float = 30.0
    # Both sessions' threads together take at most the cores: on 2 vCPUs two heavy
    # queries of 2 threads each left an insert waiting for a core (push p99 0.3 -> 1.5 s).
    threads: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    memory_bytes: int = 2 << 30
    nice: int = 10


class QueryPoolBusy(StorageError):
    """Too many queries running or waiting: try again later."""


class _ReadPool:
    """chDB sessions for queries, each used by one query at a time."""

    def __init__(self, data_dir: str, limits: QueryLimits) -> None:
        from chdb import session as chdb_session

        self.limits = limits
        self._cv = threading.Condition()
        self._free = [chdb_session.Session(data_dir) for _ in range(max(1, limits.sessions))]
        self._all = list(self._free)
        self._waiting = 0
        self.refused = 0  # queries refused because the pool was full or the wait too long
        self.settings = (f", max_threads = {max(1, limits.threads)}"
                         + (f", os_thread_priority = {limits.nice}" if limits.nice else "")
                         + (f", max_memory_usage = {limits.memory_bytes}"
                            if limits.memory_bytes else ""))

    def acquire(self) -> Any:
        with self._cv:
            if not self._all:
                raise StorageError("store closed")
            if not self._free:
                if self._waiting >= self.limits.waiting:
                    self.refused += 1
                    raise QueryPoolBusy(
                        f"query pool busy: {len(self._all)} queries running and "
                        f"{self._waiting} waiting; retry later")
                self._waiting += 1
                try:
                    deadline = time.monotonic() + self.limits.wait_s
                    while not self._free:
                        left = deadline - time.monotonic()
                        if not self._all:
                            raise StorageError("store closed")
                        if left <= 0:
                            self.refused += 1
                            raise QueryPoolBusy(
                                f"query pool busy: no query session free after "
                                f"{self.limits.wait_s:.0f} s; retry later")
                        self._cv.wait(left)
                finally:
                    self._waiting -= 1
            return self._free.pop()

    def release(self, s: Any) -> None:
        with self._cv:
            if s in self._all:
                self._free.append(s)
                self._cv.notify()

    def close(self) -> None:
        with self._cv:
            sessions, self._all, self._free = self._all, [], []
            self._cv.notify_all()
        for s in sessions:
            s.close()


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
        query_limits: QueryLimits | None = None,
    ) -> None:
        super().__init__(db, fields, span_type)
        self._names = span_schema.names(self.fields)
        self.data_dir = str(Path(data_dir).resolve())
        self._closed = False
        self._owner = _parent is None
        if _parent is not None:
            self._lock, self._s, self._reads = _parent._lock, _parent._s, _parent._reads
        else:
            from chdb import session as chdb_session

            try:
                Path(self.data_dir).mkdir(parents=True, exist_ok=True)
                # The write session: every statement that changes data holds _lock.
                self._s = chdb_session.Session(self.data_dir)
                self._reads = _ReadPool(self.data_dir, query_limits or QueryLimits())
            except Exception as e:  # chDB raises plain RuntimeError subclasses
                raise StorageError(f"cannot open chDB data directory {self.data_dir}: {e}") from e
            self._lock = threading.Lock()
        self._create()

    def _create(self, engine: str = "MergeTree") -> None:
        super()._create(engine)
        # Columns declared since the table was made (proto/schema.py).
        schema.migrate(self._select, self._command, self.db, self.fields)
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
        # On the write session: the write path must not wait behind a heavy query.
        rows = self._select_write(
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
        """A query, on a session of the read pool (never waits for an insert's lock)."""
        s = self._reads.acquire()
        try:
            res = s.query(sql + _SELECT_SETTINGS + self._reads.settings, "JSONEachRow",
                          params=params or None)
        except Exception as e:
            raise StorageError(str(e)) from e
        finally:
            self._reads.release(s)
        return _rows(res.bytes())

    def _select_write(self, sql: str, params: dict[str, Any] | None = None
                      ) -> list[dict[str, Any]]:
        """A read of the write path, on the write session."""
        with self._lock:
            try:
                res = self._s.query(sql + _SELECT_SETTINGS, "JSONEachRow", params=params or None)
            except Exception as e:
                raise StorageError(str(e)) from e
        return _rows(res.bytes())

    @property
    def queries_refused(self) -> int:
        """Queries refused because the query pool was full (for metrics)."""
        return self._reads.refused

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self._lock:
            try:
                self._s.query(sql, "CSV", params=params or None)
            except Exception as e:
                raise StorageError(str(e)) from e

    def write(self, table: pa.Table) -> int:
        if not table.num_rows:
            return 0
        names = table.schema.names
        if names != self._names:
            raise ValueError(f"a span batch has the columns {self._names}, got {names}")
        # Uncompressed: the columns are copied as they are (~1 us a span to insert,
        # against ~5 for ProtobufList).  Named: a table given columns since it was
        # made (`schema.migrate`) may hold them in another order.
        return self._insert("ArrowStream", table_to_ipc(table, compress=False),
                            f" ({', '.join(names)}) SETTINGS {_INSERT_SETTINGS}")

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
            # which is exact here because every write holds the lock (queries, on
            # the read sessions, change no count).
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

    def drop(self) -> None:
        """Drop this store's database (tests)."""
        self._command(f"DROP DATABASE IF EXISTS {self.db}")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._owner:
                    self._reads.close()
                    self._s.close()


def _rows(data: bytes) -> list[dict[str, Any]]:
    if not data:
        return []
    return [json.loads(line) for line in data.splitlines() if line]
