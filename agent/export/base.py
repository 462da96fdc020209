"""The exporter contract (OpenTelemetry SDK's SpanExporter shape) and its result.

An exporter sends one batch and says whether it worked; it does not batch, queue
or retry: `BatchExporter` (batcher.py) does that in front of any exporter.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence

from proto.span import Span


class ExportResult(enum.Enum):
    SUCCESS = "success"
    RETRYABLE = "retryable"  # try again later (server unreachable, overloaded)
    FAILURE = "failure"  # the batch itself is refused: retrying will not help


class SpanExporter(abc.ABC):
    """Subclasses count, with `count_lost()`, spans of a sent batch that did not
    arrive: "invalid" (could not be encoded, skipped, the rest sent), "rejected" (the
    receiver refused them) and "unacknowledged" (acked neither as stored nor as
    refused).  `BatchExporter` takes them with `take_lost()`."""

    lost: dict[str, int]

    @abc.abstractmethod
    def export(self, spans: Sequence[Span]) -> ExportResult:
        """Send one batch; may block up to the exporter's own timeout."""

    def count_lost(self, reason: str, spans: int = 1) -> None:
        """Count `spans` of the current batch as lost for `reason`."""
        self.lost[reason] = self.lost.get(reason, 0) + spans

    def take_lost(self) -> dict[str, int]:
        """{reason: spans} lost since the last call, and reset."""
        lost = getattr(self, "lost", None)
        if not lost:
            return {}
        out = dict(lost)
        lost.clear()
        return out

    def force_flush(self, timeout_s: float = 30.0) -> bool:  # noqa: ARG002
        return True

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
