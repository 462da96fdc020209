"""A server that is down is said once (and its recovery once), not once per batch."""

from __future__ import annotations

import logging

from agent.export import BatchExporter, ExportResult, SpanExporter
from proto.span import Span


class Flaky(SpanExporter):
    def __init__(self) -> None:
        self.up = False
        self.last_error = "UNAVAILABLE: connection refused"

    def export(self, spans):
        return ExportResult.SUCCESS if self.up else ExportResult.RETRYABLE


def test_down_then_up_is_said_once_each(caplog):
    caplog.set_level(logging.WARNING, logger="agent.export.batcher")
    exp = Flaky()
    b = BatchExporter(exp, max_batch=1, schedule_delay_s=0.01, max_attempts=3,
                      backoff_initial_s=0.001, backoff_max_s=0.002)
    b.submit([Span() for _ in range(5)])
    b.force_flush(5)
    exp.up = True
    b.submit([Span() for _ in range(3)])
    b.force_flush(5)
    b.shutdown()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("export failing" in m for m in msgs) == 1, msgs
    assert sum("export recovered" in m for m in msgs) == 1, msgs
    assert "connection refused" in next(m for m in msgs if "export failing" in m)
    m = b.metrics()
    assert m["zerotrace_export_sent_total"] == 3
    assert m["zerotrace_export_dropped_retries_exhausted_total"] == 5
