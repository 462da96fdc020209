"""Checks for a batch sent as Arrow columns: the schema whole, each span's values.

The same rules as `validate.span_problem` for protobuf spans, as vectorised Arrow
kernels over the batch: a few microseconds per batch plus well under one per span,
where a Python call per span would cost more than the insert itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from proto import schema as span_schema
from proto.columns import SCHEMA, ipc_to_table

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
    """(reason, mask of spans that pass) in `span_problem`'s order, from the limits
    declared in proto/schema.py: id sizes, the time order, allowed values, lengths."""
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
