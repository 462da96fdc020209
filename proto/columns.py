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
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from proto.convert import merge_attributes
from proto.span import Endpoint, Span

_STR = pa.string()
# Dictionary-encoded where the table has LowCardinality: ClickHouse takes the
# dictionary as it is (insert 2.8 against 3.1-3.4 us a span, same run) and the
# batch is smaller.
_LC = pa.dictionary(pa.int32(), pa.string())
_U64 = pa.uint64()
_MAP = pa.map_(pa.string(), pa.string())

# (name, Arrow type, nullable) in span table order (schema.COLUMNS).
FIELDS: list[tuple[str, pa.DataType, bool]] = [
    ("trace_id", pa.binary(), False),
    ("span_id", pa.binary(), False),
    ("parent_span_id", pa.binary(), False),
    ("kind", _LC, False),
    ("source", _LC, False),
    ("protocol", _LC, False),
    ("operation", _LC, False),
    ("status", _LC, False),
    ("status_code", _LC, False),
    ("error", _STR, False),
    ("start_ns", _U64, False),
    ("end_ns", _U64, False),
    ("service", _LC, False),
    ("pid", pa.uint32(), False),
    ("tid", pa.uint32(), False),
    ("process", _LC, False),
    ("cgroup_id", _U64, False),
    ("netns", _U64, False),
    ("transport", _LC, False),
    ("local_addr", _LC, False),
    ("local_port", pa.uint16(), False),
    ("remote_addr", _LC, False),
    ("remote_port", pa.uint16(), False),
    ("req_seq", _U64, True),
    ("resp_seq", _U64, True),
    ("req_offset", _U64, True),
    ("resp_offset", _U64, True),
    ("req_bytes", _U64, False),
    ("resp_bytes", _U64, False),
    ("trace_headers", _MAP, False),
    ("attributes", _MAP, False),
    ("attributes_json", _MAP, False),
    ("resource", _MAP, False),
    ("incomplete", _LC, False),
    ("agent", _LC, False),
]
SCHEMA = pa.schema([pa.field(n, t, nullable=null) for n, t, null in FIELDS])
NAMES = [n for n, _, _ in FIELDS]

# Arrow's own buffer compression: the server reads it without a gRPC codec pass,
# and LZ4 costs the agent a fraction of gzip's CPU for a similar size on span data.
_WRITE = ipc.IpcWriteOptions(compression="lz4")


def _typed_json(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, json.dumps(v, separators=(",", ":"))) for k, v in attrs.items()
            if not isinstance(v, str)]


def spans_to_table(spans: Sequence[Span], agent: str = "") -> pa.Table:
    """The spans as a table of `SCHEMA`; `agent` fills spans that name none.

    Raises ValueError when an id is not hex, TypeError or ArrowException when a
    value has the wrong type.
    """
    def ids(attr: str) -> list[bytes]:
        return [bytes.fromhex(getattr(s, attr)) for s in spans]

    cols: list[list[Any]] = [
        ids("trace_id"),
        ids("span_id"),
        ids("parent_span_id"),
        [s.kind for s in spans],
        [s.source for s in spans],
        [s.protocol for s in spans],
        [s.operation for s in spans],
        [s.status for s in spans],
        [s.status_code for s in spans],
        [s.error for s in spans],
        [s.start_ns for s in spans],
        [s.end_ns for s in spans],
        [s.service for s in spans],
        [s.pid for s in spans],
        [s.tid for s in spans],
        [s.process for s in spans],
        [s.cgroup_id for s in spans],
        [s.netns for s in spans],
        [s.transport for s in spans],
        [s.local.addr for s in spans],
        [s.local.port for s in spans],
        [s.remote.addr for s in spans],
        [s.remote.port for s in spans],
        [s.req_seq for s in spans],
        [s.resp_seq for s in spans],
        [s.req_offset for s in spans],
        [s.resp_offset for s in spans],
        [s.req_bytes for s in spans],
        [s.resp_bytes for s in spans],
        [list(s.trace_headers.items()) for s in spans],
        [[(k, v) for k, v in s.attributes.items() if isinstance(v, str)] for s in spans],
        [_typed_json(s.attributes) for s in spans],
        [[(k, str(v)) for k, v in s.resource.items()] for s in spans],
        [s.incomplete for s in spans],
        [s.agent or agent for s in spans],
    ]
    arrays = [pa.array(c, type=t) for c, (_, t, _) in zip(cols, FIELDS, strict=True)]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def table_to_ipc(table: pa.Table, compress: bool = True) -> bytes:
    """One Arrow IPC stream (LZ4-compressed buffers unless `compress` is False)."""
    sink = pa.BufferOutputStream()
    opts = _WRITE if compress else ipc.IpcWriteOptions()
    with ipc.new_stream(sink, table.schema, options=opts) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes) -> pa.Table:
    """The table in an Arrow IPC stream (pyarrow raises ArrowInvalid on garbage)."""
    with ipc.open_stream(pa.py_buffer(data)) as r:
        return r.read_all()


# Columns spans_from_table() builds by hand; the others map to a field of that name.
_DONE = {"trace_id", "span_id", "parent_span_id", "local_addr", "local_port", "remote_addr",
         "remote_port", "trace_headers", "attributes", "attributes_json", "resource"}


def spans_from_table(table: pa.Table) -> list[Span]:
    """`Span`s from a table of `SCHEMA` (tests, and backends without an Arrow path)."""
    out = []
    for r in table.to_pylist():
        s = Span(
            trace_id=r["trace_id"].hex(), span_id=r["span_id"].hex(),
            parent_span_id=r["parent_span_id"].hex(),
            local=Endpoint(r["local_addr"], r["local_port"]),
            remote=Endpoint(r["remote_addr"], r["remote_port"]),
            trace_headers=dict(r["trace_headers"]),
            attributes=merge_attributes(dict(r["attributes"]), dict(r["attributes_json"])),
            resource=dict(r["resource"]),
        )
        for name in NAMES:
            if name not in _DONE:
                setattr(s, name, r[name])
        out.append(s)
    return out
