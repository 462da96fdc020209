"""Spans as Arrow columns: the agent's batch wire format and the span table's rows.

A batch of spans travels from the agent to the server as one Arrow IPC stream whose
columns are the span table's (server/storage/schema.py), in its order.  ClickHouse
reads Arrow at ~1 us a span where ProtobufList costs ~5 (docs/benchmarks.md), and
the server checks a whole batch with a few vectorised Arrow kernels instead of a
Python call per span; the per-span work is done once, by the agent that made the
spans.  Ids are raw bytes (hex text in `Span`); non-string attribute values travel
as JSON text in `attributes_json`, as on the protobuf wire (proto/convert.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from proto import schema as span_schema
from proto.span import Span

# (name, Arrow type, nullable) in span table order, from the one declaration.
FIELDS: list[tuple[str, pa.DataType, bool]] = [(f.name, f.arrow, f.nullable)
                                               for f in span_schema.FIELDS]
SCHEMA = span_schema.arrow_schema()
NAMES = span_schema.names()

# Arrow's own buffer compression: the server reads it without a gRPC codec pass,
# and LZ4 costs the agent a fraction of gzip's CPU for a similar size on span data.
# One thread: the same bytes as with Arrow's pool compressing buffers in parallel, at
# a fifth of its fixed CPU cost a batch (~160 against ~800 us; ~0.4 against 0.5 us a
# span on the demo stream's 4 096-span batches), and the agent's export thread has
# no use for the other core's time.
_WRITE = ipc.IpcWriteOptions(compression="lz4", use_threads=False)
_WRITE_PLAIN = ipc.IpcWriteOptions(use_threads=False)


# json.dumps(v, separators=...) builds a JSONEncoder per call (~3 us); one encoder,
# and ints and bools written directly (the same text json writes), cost a fraction:
# this ran once per non-string attribute value of every exported span.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def _json_value(v: Any) -> str:
    t = type(v)
    if t is int:
        return int.__repr__(v)
    if t is bool:
        return "true" if v else "false"
    return _ENCODE(v)


def _typed_json(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, _json_value(v)) for k, v in attrs.items() if not isinstance(v, str)]


def _ids(get: Callable[[Span], str]) -> Callable[[Sequence[Span]], list[bytes]]:
    return lambda spans: [bytes.fromhex(get(s)) for s in spans]


def _column_builder(f: span_schema.Field) -> Callable[[Sequence[Span]], list[Any]]:
    """How the values of column `f` are taken from a list of spans."""
    get = attrgetter(f.path)
    if f.role == span_schema.ID:
        return _ids(get)
    if f.role == span_schema.MAP:
        return lambda spans: [[(k, str(v)) for k, v in get(s).items()] for s in spans]
    if f.role == span_schema.ATTRS:
        return lambda spans: [[(k, v) for k, v in get(s).items() if isinstance(v, str)]
                              for s in spans]
    if f.role == span_schema.ATTRS_JSON:
        return lambda spans: [_typed_json(get(s)) for s in spans]
    return lambda spans: list(map(get, spans))


def builders(fields: Sequence[span_schema.Field] = span_schema.FIELDS
             ) -> list[Callable[[Sequence[Span]], list[Any]]]:
    """One column builder per field, in order (tests build fixture schemas with it)."""
    return [_column_builder(f) for f in fields]


_BUILDERS = builders()
_AGENT = NAMES.index("agent")


def reference_spans_to_table(spans: Sequence[Span], agent: str = "", *,
                             fields: Sequence[span_schema.Field] | None = None
                             ) -> pa.Table:
    """The Python encoder: a list per column, converted by `pa.array`.  What the
    compiled encoder must equal (tests), and what encodes the batches it leaves
    (custom `fields`, values of unusual types, errors to report)."""
    if fields is None:
        fields, build, schema, agent_col = span_schema.FIELDS, _BUILDERS, SCHEMA, _AGENT
    else:
        build, schema = builders(fields), span_schema.arrow_schema(fields)
        agent_col = span_schema.names(fields).index("agent")
    cols = [b(spans) for b in build]
    if agent:
        cols[agent_col] = [a or agent for a in cols[agent_col]]
    arrays = [pa.array(c, type=f.arrow) for c, f in zip(cols, fields, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _fast_columns(fields: Sequence[span_schema.Field]) -> list[tuple[int, str, str, Any]] | None:
    """The compiled encoder's column list for `fields`, or None when a column is of
    a kind it does not write."""
    from agent.export import _columns as c

    plain = {pa.string(): c.STR, pa.uint64(): c.U64, pa.uint32(): c.U32,
             pa.uint16(): c.U16}
    roles = {span_schema.ID: c.ID, span_schema.MAP: c.MAP, span_schema.ATTRS: c.ATTRS,
             span_schema.ATTRS_JSON: c.ATTRS_JSON}
    out = []
    for f in fields:
        t = f.arrow
        if f.role in roles:
            kind = roles[f.role]
        elif f.role == span_schema.OPTIONAL and t == pa.uint64():
            kind = c.OPT64
        elif f.role != span_schema.PLAIN:
            return None
        elif t == pa.dictionary(pa.int32(), pa.string()):
            kind = c.AGENT if f.name == "agent" else c.DICT
        elif t in plain:
            kind = plain[t]
        else:
            return None
        attr, _, part = f.path.partition(".")
        out.append((kind, attr, part, t))
    return out


_ENCODERS = threading.local()  # one compiled encoder per thread: it owns its buffers
_COMPILED: Any = None  # the Encoder class; False: not built


def _encoder() -> Any:
    """This thread's compiled encoder of FIELDS, or False when not available."""
    global _COMPILED
    enc = getattr(_ENCODERS, "enc", None)
    if enc is not None:
        return enc
    if _COMPILED is None:
        try:
            from agent.export._columns import Encoder
            _COMPILED = Encoder
        except ImportError:  # not built (a server-only install): the Python encoder
            _COMPILED = False
    cols = _fast_columns(span_schema.FIELDS) if _COMPILED else None
    if cols is None:
        enc = False
    else:
        from proto.span import Endpoint
        enc = _COMPILED(cols, _json_value, Span, Endpoint)
    _ENCODERS.enc = enc
    return enc


def spans_to_table(spans: Sequence[Span], agent: str = "", *,
                   fields: Sequence[span_schema.Field] | None = None) -> pa.Table:
    """The spans as a table of `SCHEMA` (or of `fields`); `agent` fills spans that
    name none.

    The compiled encoder (agent/export/_columns.pyx) writes the table; a batch it
    leaves (a value of a type it does not take as pa.array would, a malformed id)
    goes through the Python encoder, which converts it or raises as it always did.
    Raises ValueError when an id is not hex, TypeError or ArrowException when a
    value has the wrong type.
    """
    enc = _encoder() if fields is None else False
    if enc:
        try:
            return pa.Table.from_arrays(enc.arrays(spans, agent), schema=SCHEMA)
        except Exception:  # noqa: BLE001, S110 - the Python encoder decides (or raises)
            pass
    return reference_spans_to_table(spans, agent, fields=fields)


def table_to_ipc(table: pa.Table, compress: bool = True) -> bytes:
    """One Arrow IPC stream (LZ4-compressed buffers unless `compress` is False)."""
    sink = pa.BufferOutputStream()
    opts = _WRITE if compress else _WRITE_PLAIN
    with ipc.new_stream(sink, table.schema, options=opts) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes) -> pa.Table:
    """The table in an Arrow IPC stream (pyarrow raises ArrowInvalid on garbage)."""
    with ipc.open_stream(pa.py_buffer(data)) as r:
        return r.read_all()


_DECODE = span_schema.row_decoder(id_suffix="")


def spans_from_table(table: pa.Table) -> list[Span]:
    """`Span`s from a table of `SCHEMA` (tests, and backends without an Arrow path)."""
    ids = [f.name for f in span_schema.FIELDS if f.role == span_schema.ID]
    out = []
    for r in table.to_pylist():
        for name in ids:
            r[name] = r[name].hex()
        out.append(_DECODE(r))
    return out
