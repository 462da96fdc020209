"""Group commit in front of the store: concurrent batches share one insert.

Callers hand over a batch, an Arrow table of spans or a serialized `SpanList`, and
block until it is stored (so their ack means durable and readable).  The writer
thread concatenates whatever is pending of each kind (tables by their columns;
concatenated serialized messages are one message with the repeated field merged),
inserts once per kind, and wakes everyone.  When a combined insert fails, each
payload is retried alone so that one bad batch fails only its own sender.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from server.storage.base import SpanStore

Payload = bytes | pa.Table


class BatchWriter:
    """Serializes and batches writes to `store`; `write()` returns spans stored."""

    def __init__(
        self, store: SpanStore, max_spans: int = 200_000, max_delay_s: float = 0.02
    ) -> None:
        # 20 ms for company (was 5): groups of 4 agents' 5 000-span batches grew from
        # ~12 500 to ~19 000 spans, 16-18 % more spans/s on one core (fewer parts
        # written and merged); the ack waits at most that much longer.  Up to 200 000
        # spans an insert (was 50 000): 8 agents x 20 000-span Arrow batches, 123 000
        # against 112 000 spans/s (one run each, docs/benchmarks.md).
        self.store = store
        self.max_spans = max_spans
        self.max_delay_s = max_delay_s
        self._pending: list[tuple[Payload, int, Future[int]]] = []
        self._pending_spans = 0
        self._cv = threading.Condition()
        self._stop = False
        self.inserts = 0
        self._thread = threading.Thread(target=self._run, name="zt-writer", daemon=True)
        self._thread.start()

    def submit(self, data: Payload, count: int) -> Future[int]:
        fut: Future[int] = Future()
        with self._cv:
            if self._stop:
                fut.set_exception(RuntimeError("server is shutting down"))
                return fut
            self._pending.append((data, count, fut))
            self._pending_spans += count
            self._cv.notify()
        return fut

    def write(self, data: Payload, count: int, timeout: float | None = 60.0) -> int:
        return self.submit(data, count).result(timeout)

    def _take(self) -> list[tuple[Payload, int, Future[int]]]:
        with self._cv:
            while not self._pending and not self._stop:
                self._cv.wait()
            if not self._pending:
                return []
            # Wait a little for company unless the group is already big.
            deadline = time.monotonic() + self.max_delay_s
            while self._pending_spans < self.max_spans and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            group, self._pending, self._pending_spans = self._pending, [], 0
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            if not group:
                return
            self._commit(group)

    def _commit(self, group: list[tuple[Payload, int, Future[int]]]) -> None:
        tables = [g for g in group if isinstance(g[0], pa.Table)]
        lists = [g for g in group if not isinstance(g[0], pa.Table)]
        if tables:
            self._commit_kind(tables, pa.concat_tables,
                              self.store.write_span_table)
        if lists:
            self._commit_kind(lists, b"".join, self.store.write_span_list)

    def _commit_kind(self, group: list[tuple[Payload, int, Future[int]]],
                     combine: Callable[[list[Any]], Payload],
                     write: Callable[[Any], int]) -> None:
        if len(group) > 1:
            try:
                write(combine([d for d, _, _ in group]))
                self.inserts += 1
                for _, n, fut in group:
                    fut.set_result(n)
                return
            except Exception:  # noqa: BLE001 - isolate the culprit below
                pass
        for data, n, fut in group:
            try:
                write(data)
                self.inserts += 1
                fut.set_result(n)
            except Exception as e:  # noqa: BLE001 - reported to that caller only
                fut.set_exception(e)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(10)
