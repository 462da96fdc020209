"""The one span validator of ingest: every wire's batch, as an Arrow table, checked here.

Each wire is converted to the span table's Arrow columns at the edge (the agent's
Arrow batches as they come, protobuf and OTLP spans by proto/convert.py
`span_list_to_table`), so every span meets the same checks, as vectorised Arrow
kernels over the batch: a few microseconds per batch plus well under one per span,
where a Python call per span would cost more than the insert itself.

- `read_columns`: an Arrow IPC batch as a whole (its columns, types, nulls, buffers);
- `split_valid`: each span against the limits declared in proto/schema.py (id sizes,
  time order, allowed values, lengths), invalid spans refused with reasons;
- `TimeWindow` (issue 14, items 4 and 6) refuses spans whose times lie outside what
  the server keeps: ending more than `max_future_s` ahead of the server's clock (a
  sender with a broken clock, or garbage) or starting more than `max_age_s` ago
  (retention would delete them at once).  They are refused with a reason, like other
  invalid spans, and counted (`zerotrace_server_spans_rejected{reason="time_window"}`):
  the sender is acked for the rest of its batch and does not resend them, so a batch
  covering years is stored in part, never retried forever.  Refused, not clamped: a
  span moved in time would sit in the wrong trace view and a clamped duration would
  be a lie.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from proto import schema as span_schema
from proto.columns import SCHEMA, ipc_to_table
from proto.schema import KINDS, MAX_STRING, SOURCES

__all__ = ["KINDS", "MAX_STRING", "SOURCES", "BadColumns", "TimeWindow", "read_columns",
           "split_valid"]

_NS = 1_000_000_000
_MAX_ERRORS = 5


class BadColumns(ValueError):
    """The batch as a whole cannot be read: not Arrow, or not the span table's columns."""


def read_columns(data: bytes, schema: pa.Schema = SCHEMA) -> pa.Table:
    """The batch's table, cast to `schema` (field order and names must match)."""
    try:
        return _read(data, schema)
    except BadColumns:
        raise
    except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
        # Corrupt metadata surfaces as any of these (fuzzed batches: key errors,
        # absurd allocations, undecodable field names): all are the sender's fault.
        raise BadColumns(f"span_columns is not a valid Arrow IPC stream: "
                         f"{type(e).__name__}: {str(e)[:200]}") from e


def _read(data: bytes, schema: pa.Schema) -> pa.Table:
    # Offsets, UTF-8 and dictionary indices are checked in full: the IPC reader
    # trusts them, and a kernel or ClickHouse reading a corrupt buffer can crash.
    table = ipc_to_table(data)
    table.validate(full=True)
    if table.schema.names != schema.names:
        raise BadColumns(
            f"span_columns must have the columns {schema.names} in that order "
            f"(got {table.schema.names})")
    if not table.schema.equals(schema):
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
            raise BadColumns(f"span_columns has wrong column types: {e}") from e
    nulls = [f.name for f in schema if not f.nullable and _has_nulls(table[f.name])]
    if nulls:
        raise BadColumns(f"span_columns has nulls in {nulls}, which cannot be null")
    return table


def _has_nulls(col: pa.ChunkedArray) -> bool:
    """Nulls in the column, or in the dictionary of a dictionary column (whose
    `null_count` counts null indices only)."""
    if col.null_count:
        return True
    return pa.types.is_dictionary(col.type) and any(c.dictionary.null_count for c in col.chunks)


def _nonzero_id(col: pa.ChunkedArray, size: int) -> pa.ChunkedArray:
    return pc.and_(pc.equal(pc.binary_length(col), size),
                   pc.not_equal(col, pa.scalar(b"\0" * size, pa.binary())))


def _per_span(col: pa.ChunkedArray, test: Callable[[pa.Array], pa.Array]) -> pa.ChunkedArray:
    """`test` of each span's value; on a dictionary column, `test` runs once on the
    dictionary and its results are spread by the indices."""
    if not pa.types.is_dictionary(col.type):
        return test(col)
    return pa.chunked_array([pc.take(test(c.dictionary), c.indices) for c in col.chunks],
                            type=pa.bool_())


def _sizes_ok(col: pa.ChunkedArray, sizes: tuple[int, ...]) -> pa.ChunkedArray:
    length = pc.binary_length(col)
    if 0 not in sizes and len(sizes) == 1:
        # A required id of all zero bytes is as invalid as a wrong length (W3C).
        return _nonzero_id(col, sizes[0])
    ok = None
    for n in sizes:
        one = pc.equal(length, n)
        ok = one if ok is None else pc.or_(ok, one)
    return ok


def _size_reason(f: span_schema.Field) -> str:
    sizes = [n for n in f.sizes if n]
    what = " or ".join(str(n) for n in sizes)
    if 0 in f.sizes:
        return f"{f.name} must be empty or {what} bytes"
    return f"{f.name} must be {what}{' non-zero' if len(sizes) == 1 else ''} bytes"


def _checks(t: pa.Table, fields: Sequence[span_schema.Field]
            ) -> list[tuple[str, pa.ChunkedArray]]:
    """(reason, mask of spans that pass), from the limits declared in proto/schema.py:
    id sizes, the time order, allowed values, lengths."""
    out = [(_size_reason(f), _sizes_ok(t[f.name], f.sizes)) for f in fields if f.sizes]
    out.append(("end_ns before start_ns", pc.greater_equal(t["end_ns"], t["start_ns"])))
    for f in fields:
        if f.values:
            allowed = pa.array(sorted(f.values))
            out.append((f"unknown {f.name}",
                        _per_span(t[f.name], lambda a, v=allowed: pc.is_in(a, value_set=v))))
    limits: dict[int, list[str]] = {}
    for f in fields:
        if f.max_bytes:
            limits.setdefault(f.max_bytes, []).append(f.name)
    for limit, names in limits.items():
        size = f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"
        ok = None
        for name in names:
            short = _per_span(t[name], lambda a, n=limit: pc.less_equal(pc.binary_length(a), n))
            ok = short if ok is None else pc.and_(ok, short)
        out.append((f"{' or '.join(names)} longer than {size}", ok))
    return out


def split_valid(table: pa.Table, fields: Sequence[span_schema.Field] = span_schema.FIELDS
                ) -> tuple[pa.Table, int, list[str]]:
    """(the valid spans, how many were rejected, the first few reasons); `fields`
    the declaration whose limits apply."""
    ok = None
    errors: list[str] = []
    for reason, passed in _checks(table, fields):
        if len(errors) < _MAX_ERRORS and not pc.all(passed).as_py():
            bad = pc.indices_nonzero(pc.invert(passed)).to_pylist()
            errors += [f"span {i}: {reason}" for i in bad[: _MAX_ERRORS - len(errors)]]
        ok = passed if ok is None else pc.and_(ok, passed)
    if ok is None or pc.all(ok).as_py():
        return table, 0, []
    good = table.filter(ok)
    return good, table.num_rows - good.num_rows, errors


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

    def _error(self, trace_id: bytes, span_id: bytes, start_ns: int, end_ns: int,
               now: int, lo: int, hi: int) -> str:
        return (f"span {bytes(span_id).hex()} of trace {bytes(trace_id).hex()}: "
                f"{self.reason(start_ns, end_ns, now, lo, hi)}")
