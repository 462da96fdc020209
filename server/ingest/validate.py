"""Per-span checks: why a span the store refused is bad, and the ingest time window.

`TimeWindow` (issue 14, items 4 and 6) refuses spans whose times lie outside what the
server keeps: ending more than `max_future_s` ahead of the server's clock (a sender
with a broken clock, or garbage) or starting more than `max_age_s` ago (retention
would delete them at once).  They are refused with a reason, like other invalid spans,
and counted (`zerotrace_server_spans_rejected{reason="time_window"}`): the sender is
acked for the rest of its batch and does not resend them, so a batch covering years is
stored in part, never retried forever.  Refused, not clamped: a span moved in time
would sit in the wrong trace view and a clamped duration would be a lie.  Every wire
goes through it (agents' Arrow and protobuf pushes, OTLP: `service.store_admitted`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from proto.schema import KINDS, MAX_STRING, SOURCES
from proto.zerotrace.v1 import span_pb2

__all__ = ["KINDS", "MAX_STRING", "SOURCES", "TimeWindow", "span_problem"]

_NS = 1_000_000_000


def span_problem(s: span_pb2.Span) -> str:
    """Why `s` cannot be stored, or "" when it can."""
    if len(s.trace_id) != 16 or not any(s.trace_id):
        return f"trace_id must be 16 non-zero bytes (got {len(s.trace_id)})"
    if len(s.span_id) != 8 or not any(s.span_id):
        return f"span_id must be 8 non-zero bytes (got {len(s.span_id)})"
    if len(s.parent_span_id) not in (0, 8):
        return f"parent_span_id must be empty or 8 bytes (got {len(s.parent_span_id)})"
    if s.end_ns < s.start_ns:
        return "end_ns before start_ns"
    if s.kind not in KINDS:
        return f"unknown kind {s.kind!r}"
    if s.source not in SOURCES:
        return f"unknown source {s.source!r}"
    # Bytes, as the Arrow checks count them (server/ingest/columns.py).
    if len(s.operation.encode()) > MAX_STRING or len(s.error.encode()) > MAX_STRING:
        return "operation or error longer than 64 KiB"
    return ""


def _span_s(ns: float) -> str:
    s = ns / _NS
    if abs(s) >= 86_400:
        return f"{s / 86_400:.1f} days"
    if abs(s) >= 3600:
        return f"{s / 3600:.1f} hours"
    return f"{s:.0f} s"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Spans must end at most `max_future_s` after now and start at most `max_age_s`
    before it (0: that side unbounded)."""

    max_future_s: float = 86_400.0
    max_age_s: float = 0.0

    def bounds(self, now_ns: int | None = None) -> tuple[int, int]:
        """(earliest start_ns, latest end_ns) allowed now; 0 / 2**64-1 when unbounded."""
        now = time.time_ns() if now_ns is None else now_ns
        lo = max(0, now - int(self.max_age_s * _NS)) if self.max_age_s > 0 else 0
        hi = now + int(self.max_future_s * _NS) if self.max_future_s > 0 else (1 << 64) - 1
        return lo, hi

    def reason(self, start_ns: int, end_ns: int, now_ns: int, lo: int, hi: int) -> str:
        """Why a span with these times is outside the window, or ""."""
        if end_ns > hi:
            return (f"end_ns {end_ns} is {_span_s(end_ns - now_ns)} ahead of the server's "
                    f"clock, beyond the ingest window (+{_span_s(self.max_future_s * _NS)}):"
                    " check the sender's clock")
        if start_ns < lo:
            return (f"start_ns {start_ns} is {_span_s(now_ns - start_ns)} old, older than "
                    f"the ingest window ({_span_s(self.max_age_s * _NS)}, the retention): "
                    "it would be deleted at once")
        return ""

    def filter_table(self, table: pa.Table, limit: int = 5,
                     now_ns: int | None = None) -> tuple[pa.Table, int, list[str]]:
        """(the spans of `table` inside the window, how many are not, first reasons)."""
        if not table.num_rows or (self.max_age_s <= 0 and self.max_future_s <= 0):
            return table, 0, []
        now = time.time_ns() if now_ns is None else now_ns
        lo, hi = self.bounds(now)
        start, end = table["start_ns"], table["end_ns"]
        ok = pc.and_(pc.greater_equal(start, pa.scalar(lo, start.type)),
                     pc.less_equal(end, pa.scalar(hi, end.type)))
        bad = table.num_rows - pc.sum(ok).as_py() if table.num_rows else 0
        if not bad:
            return table, 0, []
        out = table.filter(pc.invert(ok))
        errors = [self._error(out["trace_id"][i].as_py(), out["span_id"][i].as_py(),
                              out["start_ns"][i].as_py(), out["end_ns"][i].as_py(), now, lo, hi)
                  for i in range(min(limit, out.num_rows))]
        return table.filter(ok), bad, errors

    def filter_span_list(self, data: bytes, limit: int = 5, now_ns: int | None = None
                         ) -> tuple[bytes, int, int, list[str]]:
        """(`data`, a serialized SpanList, without the spans outside the window; spans
        kept; spans refused; first reasons)."""
        if self.max_age_s <= 0 and self.max_future_s <= 0:
            return data, -1, 0, []
        msg = span_pb2.SpanList.FromString(data)
        now = time.time_ns() if now_ns is None else now_ns
        lo, hi = self.bounds(now)
        # One pass in Python over two integer fields (~0.2 us a span); spans are only
        # copied when some are refused.
        bad = [i for i, s in enumerate(msg.spans) if s.end_ns > hi or s.start_ns < lo]
        if not bad:
            return data, len(msg.spans), 0, []
        errors = [self._error(s.trace_id, s.span_id, s.start_ns, s.end_ns, now, lo, hi)
                  for s in (msg.spans[i] for i in bad[:limit])]
        drop = set(bad)
        good = span_pb2.SpanList()
        good.spans.extend(s for i, s in enumerate(msg.spans) if i not in drop)
        return good.SerializeToString(), len(good.spans), len(bad), errors

    def _error(self, trace_id: bytes, span_id: bytes, start_ns: int, end_ns: int,
               now: int, lo: int, hi: int) -> str:
        return (f"span {bytes(span_id).hex()} of trace {bytes(trace_id).hex()}: "
                f"{self.reason(start_ns, end_ns, now, lo, hi)}")
