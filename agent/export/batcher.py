"""Batching in front of any `SpanExporter`: bounded buffer, retries, counters.

`submit()` never blocks the caller (the probes' thread): spans go into a bounded
queue, and when it is full they are counted and dropped.  One worker thread cuts
batches (by size or delay) and exports them; a retryable failure keeps the batch
and retries it with exponential backoff (jittered) up to `max_attempts`, while new
spans keep queueing behind it.  Counters come out of `metrics()` as a flat dict
suitable for Prometheus.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Iterable

from agent import routes
from agent.export.base import ExportResult, SpanExporter
from agent.protocols import redact
from proto.span import Span

log = logging.getLogger(__name__)


class BatchExporter:
    def __init__(
        self,
        exporter: SpanExporter,
        max_queue_spans: int = 100_000,
        max_batch: int = 4096,
        schedule_delay_s: float = 0.5,
        max_attempts: int = 8,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.exporter = exporter
        self.max_queue_spans = max_queue_spans
        self.max_batch = max_batch
        self.schedule_delay_s = schedule_delay_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._q: collections.deque[Span] = collections.deque()
        self._cv = threading.Condition()
        self._flush_req = 0
        self._busy = False
        self._failing = False  # said once that export fails, until it recovers
        self._closed = False
        self._stop = False
        self._c = dict.fromkeys(
            (
                "submitted", "sent", "batches_sent", "retries", "export_errors",
                "dropped_queue_full", "dropped_refused", "dropped_retries_exhausted",
                "dropped_shutdown", "dropped_invalid", "dropped_rejected",
                "dropped_unacknowledged",
            ),
            0,
        )
        self._thread = threading.Thread(target=self._run, name="zt-export", daemon=True)
        self._thread.start()

    # -- producer side -----------------------------------------------------------

    def submit(self, spans: Iterable[Span]) -> int:
        """Queue spans; returns how many were accepted (the rest are dropped)."""
        spans = list(spans)
        with self._cv:
            self._c["submitted"] += len(spans)
            if self._closed:
                self._c["dropped_shutdown"] += len(spans)
                return 0
            room = self.max_queue_spans - len(self._q)
            take = spans[: max(room, 0)]
            self._q.extend(take)
            dropped = len(spans) - len(take)
            self._c["dropped_queue_full"] += dropped
            if len(self._q) >= self.max_batch:
                self._cv.notify()
            return len(take)

    def on_end(self, span: Span) -> None:
        """One span (OpenTelemetry SpanProcessor-style hook)."""
        self.submit((span,))

    # -- worker ------------------------------------------------------------------

    def _next_batch(self) -> list[Span] | None:
        with self._cv:
            deadline = time.monotonic() + self.schedule_delay_s
            while not self._stop:
                if len(self._q) >= self.max_batch or (self._flush_req and self._q):
                    break
                left = deadline - time.monotonic()
                if left <= 0 and self._q:
                    break
                if left <= 0:
                    deadline = time.monotonic() + self.schedule_delay_s
                    left = self.schedule_delay_s
                if self._flush_req and not self._q:
                    self._flush_req = 0
                    self._cv.notify_all()
                self._cv.wait(left)
            if self._stop and not self._q:
                return None
            n = min(self.max_batch, len(self._q))
            batch = [self._q.popleft() for _ in range(n)]
            self._busy = True
            return batch

    def _sleep(self, seconds: float) -> bool:
        """Back off; False when shutdown cut the wait short."""
        with self._cv:
            if self._stop:
                return False
            self._cv.wait(seconds)
            return not self._stop

    def _trouble(self, what: str) -> None:
        """Say once that export is failing (not once per batch or retry)."""
        if not self._failing:
            self._failing = True
            log.warning("export failing (%s); spans wait in a bounded queue, drops are "
                        "counted (zerotrace_export_dropped_total)", what)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("export recovered")

    def _export_with_retry(self, batch: list[Span]) -> None:
        delay = self.backoff_initial_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                # The same list object on every attempt: exporters key a batch's
                # idempotency (sender, seq) on it, so a resend is stored only once.
                res = self.exporter.export(batch)
            except Exception as e:  # noqa: BLE001 - an exporter bug must not kill the worker
                self._trouble(f"exporter raised {type(e).__name__}: {e}")
                res = ExportResult.RETRYABLE
            lost = self.exporter.take_lost() if hasattr(self.exporter, "take_lost") else {}
            if res is ExportResult.SUCCESS:
                gone = sum(lost.values())
                self._count(sent=len(batch) - gone, batches_sent=1,
                            **{f"dropped_{k}": v for k, v in lost.items()})
                self._recovered()
                return
            self._count(export_errors=1)
            if res is ExportResult.RETRYABLE:
                self._trouble(str(getattr(self.exporter, "last_error", "") or "retryable error"))
            if res is ExportResult.FAILURE:
                self._count(dropped_refused=len(batch))
                return
            if attempt == self.max_attempts:
                break
            self._count(retries=1)
            if not self._sleep(delay * random.uniform(0.8, 1.2)):
                self._count(dropped_shutdown=len(batch))
                return
            delay = min(delay * 2, self.backoff_max_s)
        self._count(dropped_retries_exhausted=len(batch))

    def _count(self, **inc: int) -> None:
        with self._cv:
            for k, v in inc.items():
                # .get: a loss reason an exporter adds later must not kill this thread
                self._c[k] = self._c.get(k, 0) + v

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # HTTP span names low-cardinality (`GET /order/{id}`), the real path kept
            # in url.path: the OTel HTTP conventions (agent/routes.py).
            batch = routes.fold_spans(batch)
            # Redaction (default on) where every exported span passes, whichever
            # parser or enricher made it: URL query secrets, SQL literals, tokens,
            # JWTs, URL credentials, command-line secrets (agent/protocols/redact.py).
            # Here, on the export thread, so that it costs the capture path nothing;
            # spans that change are copies (others may hold the originals).
            self._export_with_retry(redact.spans(batch))
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    # -- control -----------------------------------------------------------------

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Export everything queued now; True if done within the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            self._flush_req += 1
            self._cv.notify_all()
            while self._q or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
                self._cv.notify_all()
            return True

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, flush for up to `timeout_s`, drop (and count) the rest."""
        with self._cv:
            self._closed = True
        self.force_flush(timeout_s)
        with self._cv:
            self._stop = True
            self._c["dropped_shutdown"] += len(self._q)
            self._q.clear()
            self._cv.notify_all()
        self._thread.join(timeout_s)
        self.exporter.shutdown()

    def metrics(self) -> dict[str, int]:
        """Counters (monotonic) and the queue gauge, e.g. for Prometheus."""
        with self._cv:
            out = {f"zerotrace_export_{k}_total": v for k, v in self._c.items()}
            out["zerotrace_export_queue_spans"] = len(self._q)
            out["zerotrace_export_dropped_total"] = sum(
                v for k, v in self._c.items() if k.startswith("dropped_")
            )
        return out
