"""A serialized `SpanList` (the legacy protobuf wire) as the span table's Arrow table.

`spans_bytes_to_table` hands the bytes to the compiled reader (_spanlist.pyx), which
fills one buffer per column in one walk of the wire, and wraps those buffers as
Arrow arrays: no Python object per value.  What each Span field is (string, varint,
fixed64, optional, map, endpoint part) and which column it fills is derived here from
proto/schema.py and the generated message's descriptor, so a field added to the
declaration flows through without an edit.

In process, 5 000-span batches of bench_server's spans, load 4-7: 2.6-2.7 us a span
against 30-43 for reading the upb messages' fields from Python (proto/convert.py
`span_list_to_table`, still the path when the compiled module is not built or the
declaration has a field type the reader does not know).  The server's protobuf
ingest went back to what it cost when ClickHouse's ProtobufList reader parsed it
(16.5-19.8 us a span outside merges against 18.2-19.9; figs in the commit).

Map entries keep the wire's order (upb's maps iterate in an order of their own), and
a key sent twice in one map is kept twice, as ClickHouse's reader kept it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from proto import schema as span_schema
from proto.zerotrace.v1 import span_pb2

try:
    from server.ingest import _spanlist
except ImportError:  # not built (setup.py builds it; `cythonize -i` in place)
    _spanlist = None

_PROTO_KIND = {"bytes": "str", "string": "str", "uint64": "u64", "uint32": "u32",
               "fixed64": "fixed64", "optional uint64": "opt",
               "map<string, string>": "map"}
_SPECS: dict[tuple[Any, ...], Any] = {}


def _spec(fields: tuple[span_schema.Field, ...]) -> Any:
    """(field kinds, field columns, field subs, column kinds) by field number, or None
    when a field is of a kind the compiled reader does not read."""
    if _spanlist is None:
        return None
    kinds = [0] * 64
    cols = [0] * 64
    subs = [0] * 64
    column_kinds = []
    endpoint_parts = span_pb2.Endpoint.DESCRIPTOR.fields_by_name
    for j, f in enumerate(fields):
        kind = _PROTO_KIND.get(f.proto)
        if kind is None or not 0 < f.number < 64:
            return None
        column_kinds.append(_spanlist.COLUMNS[
            {"str": "str", "opt": "opt", "map": "map"}.get(kind, "int")])
        top, dot, part = f.path.partition(".")
        if dot:
            # An endpoint's part: the reader knows Endpoint as {addr = 1, port = 2}.
            number = endpoint_parts[part].number if part in endpoint_parts else 0
            if (part, number, kind) == ("addr", 1, "str"):
                kinds[f.number] = _spanlist.KINDS["endpoint"]
                cols[f.number] = j
            elif (part, number, kind) == ("port", 2, "u32"):
                kinds[f.number] = _spanlist.KINDS["endpoint"]
                subs[f.number] = j
            else:
                return None
            continue
        if kinds[f.number]:
            return None  # two columns of one field: not this reader's
        kinds[f.number] = _spanlist.KINDS[kind]
        cols[f.number] = j
    return kinds, cols, subs, column_kinds


def available(fields: Sequence[span_schema.Field] | None = None) -> bool:
    """Whether the compiled reader reads spans of these columns."""
    fields = span_schema.FIELDS if fields is None else tuple(fields)
    if fields not in _SPECS:
        _SPECS[fields] = _spec(fields)
    return _SPECS[fields] is not None


def spans_bytes_to_table(data: bytes, fields: Sequence[span_schema.Field] | None = None
                         ) -> pa.Table:
    """The spans of a serialized `SpanList` as a table of `schema.arrow_schema(fields)`.

    Raises ValueError for a malformed wire, pa.ArrowInvalid for a value that does not
    fit its column (a port above 65535) or invalid UTF-8 in a string column (callers
    parse with upb first, which names the bad spans).  Call `available` first."""
    fields = span_schema.FIELDS if fields is None else tuple(fields)
    if not available(fields):
        raise ValueError("the compiled SpanList reader does not read these columns")
    rows, bufs = _spanlist.decode(memoryview(data).cast("B"), *_SPECS[fields])
    arrays = [_array(f, rows, b) for f, b in zip(fields, bufs, strict=True)]
    return pa.Table.from_arrays(arrays, schema=span_schema.arrow_schema(fields))


def _array(f: span_schema.Field, rows: int, bufs: tuple[bytes, ...]) -> pa.Array:
    t = f.arrow
    if f.proto == "optional uint64":
        values, bitmap = bufs
        arr = pa.Array.from_buffers(pa.uint64(), rows, [pa.py_buffer(bitmap),
                                                        pa.py_buffer(values)])
    elif f.proto in ("uint64", "uint32", "fixed64"):
        arr = pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(bufs[0])])
    elif f.proto in ("bytes", "string"):
        plain = pa.binary() if pa.types.is_binary(t) else pa.string()
        arr = pa.Array.from_buffers(plain, rows, [None, pa.py_buffer(bufs[0]),
                                                  pa.py_buffer(bufs[1])])
        arr.validate(full=True)  # offsets, and UTF-8 for a string column
        if pa.types.is_dictionary(t):
            arr = arr.dictionary_encode()
    else:  # map<string, string>
        entries, koff, kdata, voff, vdata = bufs
        n = (len(koff) // 4) - 1
        keys = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(koff),
                                                      pa.py_buffer(kdata)])
        values = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(voff),
                                                        pa.py_buffer(vdata)])
        keys.validate(full=True)
        values.validate(full=True)
        arr = pa.MapArray.from_arrays(pa.Array.from_buffers(
            pa.int32(), rows + 1, [None, pa.py_buffer(entries)]), keys, values)
    return arr if arr.type == t else arr.cast(t)
