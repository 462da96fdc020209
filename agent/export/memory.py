"""In-memory exporter for tests: keeps what it was given, can be told to fail."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from agent.export.base import ExportResult, SpanExporter
from proto.span import Span


class InMemoryExporter(SpanExporter):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[Span] = []
        self.batches = 0
        # Results to return before succeeding, e.g. [RETRYABLE, RETRYABLE].
        self.fail_next: list[ExportResult] = []
        self.stopped = False

    def export(self, spans: Sequence[Span]) -> ExportResult:
        with self._lock:
            if self.fail_next:
                return self.fail_next.pop(0)
            self.spans.extend(spans)
            self.batches += 1
            return ExportResult.SUCCESS

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()

    def shutdown(self) -> None:
        self.stopped = True
