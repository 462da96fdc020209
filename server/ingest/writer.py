"""Group commit in front of the store: concurrent batches share one insert.

Callers hand over a batch, an Arrow table of the span table's columns (what ingest
makes of every wire), and block until it is stored (so their ack means durable and
readable).  The writer thread concatenates whatever tables are pending, inserts them
with the store's one write method (`SpanStore.write`), and wakes everyone.  When a
combined insert fails, each batch is retried alone so that one bad batch fails only
its own sender.

Idempotency: a batch may carry a key (sender, seq).  Before each insert the writer
asks the store which keys of the group it has already stored and acks those with
the stored count instead of storing them again; copies of one key inside a group
share the first copy's outcome; the keys are recorded right after their spans.  A
store without `stored_batches` (the ClickHouse backend, for now) stores every copy.
Before the insert, the group's keys are recorded with 0 spans ("being inserted"): a
resend finding its key so (the server was killed mid-insert) is written span by span
minus what is already stored, as for a partial commit below.

Partial commits: a failed insert may have committed part of its rows (a full disk
between two parts of one insert, a combined insert of several batches cut short).
So after a failure the writer asks the store which spans of the batch it holds: all
of them, and the batch is acked after all; some, and the batch's key is remembered
so that its retry stores only the spans still missing; and batches of a failed
combined insert are written alone with the spans already stored left out.  Before,
the retry stored the committed part again (issue 14 item 3: 114 000 rows for 112 000
ids).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import pyarrow as pa

from server.storage.base import SpanStore

log = logging.getLogger(__name__)

BatchKey = tuple[str, int]  # (sender, seq) of an idempotent batch
_Item = tuple[pa.Table, int, "Future[int]", BatchKey | None]
_MAX_PARTIAL = 10_000  # keys of partly stored batches remembered (oldest forgotten)


def as_table(data: pa.Table | bytes) -> pa.Table:
    """A batch as the span table's Arrow columns: a table as it is, a serialized
    `SpanList` converted.  Only server/forward.py still calls it (its writer wrapper
    takes what `BatchWriter.submit` took); `submit` itself takes tables, which ingest
    makes at the edge."""
    if isinstance(data, pa.Table):
        return data
    from proto.convert import span_list_to_table
    from proto.zerotrace.v1 import span_pb2

    return span_list_to_table(span_pb2.SpanList.FromString(bytes(data)).spans)


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
        self._pending: list[_Item] = []
        self._pending_spans = 0
        self._cv = threading.Condition()
        self._stop = False
        self.inserts = 0
        self.deduplicated = 0  # batches acked as already stored, not stored again
        self.partial = 0  # failed writes found to have stored some or all of their spans
        # keys of batches a failed write may have stored in part: their retry stores
        # only the spans still missing
        self._partial: OrderedDict[BatchKey, None] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="zt-writer", daemon=True)
        self._thread.start()

    def submit(self, data: pa.Table, count: int,
               key: BatchKey | None = None) -> Future[int]:
        """Queue a batch (the span table's Arrow columns); its future is the number of
        spans stored (for a `key` already stored: the count stored then)."""
        if not isinstance(data, pa.Table):
            raise TypeError(f"BatchWriter takes an Arrow table, not {type(data).__name__}")
        fut: Future[int] = Future()
        with self._cv:
            if self._stop:
                fut.set_exception(RuntimeError("server is shutting down"))
                return fut
            self._pending.append((data, count, fut, key))
            self._pending_spans += count
            self._cv.notify()
        return fut

    def write(self, data: pa.Table, count: int, timeout: float | None = 60.0,
              key: BatchKey | None = None) -> int:
        """Store a batch and wait: spans stored (see `submit`)."""
        return self.submit(data, count, key).result(timeout)

    def _take(self) -> list[_Item]:
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

    def _dedup(self, group: list[_Item]) -> list[_Item]:
        """The items of `group` to insert: those whose key is not stored yet, once
        each.  The others are answered here or follow their first copy."""
        keys = [k for *_, k in group if k is not None]
        lookup = getattr(self.store, "stored_batches", None)
        if not keys or lookup is None:
            return group
        try:
            known = lookup(keys)
        except Exception as e:  # noqa: BLE001 - cannot tell: store nothing, senders retry
            for *_, fut, _k in group:
                fut.set_exception(e)
            return []
        first: dict[BatchKey, Future[int]] = {}
        out = []
        for item in group:
            key, fut = item[3], item[2]
            if key is not None and known.get(key) == 0:
                # Marked before an insert that never reported back (the server was
                # killed, or the insert failed): some of its spans may be in.
                self._partial[key] = None
                known.pop(key)
            if key is None:
                out.append(item)
            elif key in known:
                self.deduplicated += 1
                fut.set_result(known[key])
            elif key in first:
                # The same batch twice in one group (a resend while the first copy
                # waited): one insert, both answered by it.
                self.deduplicated += 1
                first[key].add_done_callback(lambda f, fut=fut: _follow(f, fut))
            else:
                first[key] = fut
                out.append(item)
        return out

    def _record(self, items: Sequence[_Item]) -> None:
        """Remember the keys of `items`, just stored."""
        rows = [(k, n) for _, n, _, k in items if k is not None]
        record = getattr(self.store, "record_batches", None)
        if not rows or record is None:
            return
        try:
            record(rows)
        except Exception as e:  # noqa: BLE001 - the spans are stored: still ack them
            # Only a resend of these batches (their ack lost too) would be stored twice.
            log.warning("stored %d batches but could not record their keys: %s", len(rows), e)

    def _mark(self, group: list[_Item]) -> list[_Item]:
        """Record the keys of `group` as being inserted (0 spans) before the insert, so
        that after a crash in the middle of it a resend is checked span by span
        (`_dedup`).  When that fails nothing is inserted: the senders retry."""
        rows = [(k, 0) for *_, k in group if k is not None]
        record = getattr(self.store, "record_batches", None)
        if not rows or record is None:
            return group
        try:
            record(rows)
        except Exception as e:  # noqa: BLE001 - store nothing, senders retry
            for *_, fut, _k in group:
                fut.set_exception(e)
            return []
        return group

    def _commit(self, group: list[_Item]) -> None:
        group = self._mark(self._dedup(group))
        if group:
            self._commit_tables(group, self.store.write)

    def _commit_tables(self, group: list[_Item], write: Callable[[pa.Table], int]) -> None:
        suspect = False
        # Batches that may be in part already are written alone, minus what is in.
        alone = [g for g in group if g[3] is not None and g[3] in self._partial]
        if alone:
            group = [g for g in group if g[3] is None or g[3] not in self._partial]
            for item in alone:
                self._write_one(item, write, False)
        if len(group) > 1:
            try:
                write(pa.concat_tables([d for d, *_ in group]))
                self.inserts += 1
                self._record(group)
                for _, n, fut, _k in group:
                    fut.set_result(n)
                return
            except Exception:  # noqa: BLE001 - isolate the culprit below
                # It may have committed some parts: each batch alone, minus those.
                suspect = True
        for item in group:
            self._write_one(item, write, suspect)

    def _write_one(self, item: _Item, write: Callable[[pa.Table], int], suspect: bool) -> None:
        data, n, fut, key = item
        left = n
        try:
            if suspect or (key is not None and key in self._partial):
                data, left = self._unstored(data)
            if left:
                write(data)
                self.inserts += 1
        except Exception as e:  # noqa: BLE001 - reported to that caller only
            try:
                _, missing = self._unstored(data)
            except Exception:  # noqa: BLE001 - cannot tell what got in: assume some
                missing = -1
            if missing == 0:
                # Every span is stored (the failure came after the commit, e.g. from
                # the search index or the count): a success after all.
                log.warning("insert reported a failure but stored its %d spans: acked (%s)",
                            n, str(e)[:200])
                self.partial += 1
            else:
                if missing != left:
                    self.partial += 1  # some got in (or cannot tell)
                if key is not None:
                    self._partial[key] = None
                    while len(self._partial) > _MAX_PARTIAL:
                        self._partial.popitem(last=False)
                fut.set_exception(e)
                return
        if key is not None:
            self._partial.pop(key, None)
        self._record([item])
        fut.set_result(n)

    def _unstored(self, data: pa.Table) -> tuple[pa.Table, int]:
        """`data` without the spans the store already holds, and how many are left."""
        tids = data.column("trace_id").to_pylist()
        sids = data.column("span_id").to_pylist()
        held = {(s.trace_id, s.span_id)
                for s in self.store.get_traces(sorted({t.hex() for t in tids}))}
        keep = [(t.hex(), s.hex()) not in held for t, s in zip(tids, sids, strict=True)]
        left = sum(keep)
        if left == len(keep):
            return data, left
        return data.filter(pa.array(keep, pa.bool_())), left

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(10)


def _follow(done: Future[int], fut: Future[int]) -> None:
    """Give `fut` the outcome of `done` (a copy of the same batch)."""
    e = done.exception()
    if e is not None:
        fut.set_exception(e)
    else:
        fut.set_result(done.result())
