"""Per-span checks for batches the store refused: find which spans are bad and why."""

from __future__ import annotations

from proto.schema import KINDS, MAX_STRING, SOURCES
from proto.zerotrace.v1 import span_pb2

__all__ = ["KINDS", "MAX_STRING", "SOURCES", "span_problem"]


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
