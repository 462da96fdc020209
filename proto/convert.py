"""Conversion between the plain `Span` (proto/span.py), `zerotrace.v1.Span` and the
span table's Arrow columns.

Ids are hex text in `Span` and raw bytes on the wire; non-string attribute values
travel as JSON text in `attributes_json` so that they come back with their type.
`span_to_pb`/`span_from_pb` are hand-written (the CLI uses them and must not import
pyarrow, which the declaration does) and checked against the declaration by
tests/proto/test_schema.py; `span_list_to_table`, the protobuf-to-Arrow conversion
of OTLP batches at ingest (and of protobuf batches when the compiled SpanList reader,
server/ingest/spanlist.py, is not built), is derived from proto/schema.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from proto.span import Endpoint, Span
from proto.zerotrace.v1 import span_pb2

if TYPE_CHECKING:
    import pyarrow as pa

    from proto import schema as span_schema

_OPTIONAL = ("req_seq", "resp_seq", "req_offset", "resp_offset")


def _id_bytes(hex_id: str) -> bytes:
    return bytes.fromhex(hex_id) if hex_id else b""


def span_to_pb(span: Span, out: span_pb2.Span | None = None) -> span_pb2.Span:
    """Fill (or create) a `zerotrace.v1.Span` from a `Span`."""
    m = out if out is not None else span_pb2.Span()
    m.trace_id = _id_bytes(span.trace_id)
    m.span_id = _id_bytes(span.span_id)
    m.parent_span_id = _id_bytes(span.parent_span_id)
    m.kind = span.kind
    m.source = span.source
    m.protocol = span.protocol
    m.operation = span.operation
    m.status = span.status
    m.status_code = span.status_code
    m.error = span.error
    m.start_ns = span.start_ns
    m.end_ns = span.end_ns
    m.service = span.service
    m.pid = span.pid
    m.tid = span.tid
    m.process = span.process
    m.cgroup_id = span.cgroup_id
    m.netns = span.netns
    m.transport = span.transport
    m.local.addr = span.local.addr
    m.local.port = span.local.port
    m.remote.addr = span.remote.addr
    m.remote.port = span.remote.port
    if span.req_seq is not None:
        m.req_seq = span.req_seq
    if span.resp_seq is not None:
        m.resp_seq = span.resp_seq
    if span.req_offset is not None:
        m.req_offset = span.req_offset
    if span.resp_offset is not None:
        m.resp_offset = span.resp_offset
    m.req_bytes = span.req_bytes
    m.resp_bytes = span.resp_bytes
    if span.trace_headers:
        m.trace_headers.update(span.trace_headers)
    if span.attributes:
        for k, v in span.attributes.items():
            if isinstance(v, str):
                m.attributes[k] = v
            else:
                m.attributes_json[k] = json.dumps(v, separators=(",", ":"))
    if span.resource:
        m.resource.update({k: str(v) for k, v in span.resource.items()})
    m.incomplete = span.incomplete
    m.agent = span.agent
    return m


def merge_attributes(plain: dict[str, str], typed_json: dict[str, str]) -> dict[str, Any]:
    """String attributes plus JSON-encoded typed ones, decoded."""
    out: dict[str, Any] = dict(plain)
    for k, v in typed_json.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def span_from_pb(m: span_pb2.Span) -> Span:
    """A `Span` from a `zerotrace.v1.Span`."""
    s = Span(
        trace_id=m.trace_id.hex(),
        span_id=m.span_id.hex(),
        parent_span_id=m.parent_span_id.hex(),
        kind=m.kind,
        source=m.source,
        protocol=m.protocol,
        operation=m.operation,
        status=m.status,
        status_code=m.status_code,
        error=m.error,
        start_ns=m.start_ns,
        end_ns=m.end_ns,
        service=m.service,
        pid=m.pid,
        tid=m.tid,
        process=m.process,
        cgroup_id=m.cgroup_id,
        netns=m.netns,
        transport=m.transport,
        local=Endpoint(m.local.addr, m.local.port),
        remote=Endpoint(m.remote.addr, m.remote.port),
        req_bytes=m.req_bytes,
        resp_bytes=m.resp_bytes,
        trace_headers=dict(m.trace_headers),
        attributes=merge_attributes(dict(m.attributes), dict(m.attributes_json)),
        resource=dict(m.resource),
        incomplete=m.incomplete,
        agent=m.agent,
    )
    for name in _OPTIONAL:
        if m.HasField(name):
            setattr(s, name, getattr(m, name))
    return s


def spans_to_list(spans: Iterable[Span]) -> span_pb2.SpanList:
    """A `SpanList` message holding `spans`."""
    out = span_pb2.SpanList()
    add = out.spans.add
    for s in spans:
        span_to_pb(s, add())
    return out


def spans_from_list(msgs: Iterable[span_pb2.Span]) -> list[Span]:
    return [span_from_pb(m) for m in msgs]


# -- protobuf spans as the span table's Arrow columns ---------------------------------


def _pb_column(f: Any) -> Callable[[Sequence[span_pb2.Span]], list[Any]]:
    """How column `f` is read from `zerotrace.v1.Span` messages, from its declaration:
    the message field is the column's name, or for a dotted path (local.addr) the
    path; ids stay raw bytes, typed attributes stay the JSON text the wire carries."""
    from proto import schema as span_schema

    top, dot, _ = f.path.partition(".")
    name = f.path if dot else f.name
    if f.role == span_schema.OPTIONAL:
        return lambda msgs: [getattr(m, name) if m.HasField(name) else None for m in msgs]
    get = attrgetter(name)
    if f.role in (span_schema.MAP, span_schema.ATTRS, span_schema.ATTRS_JSON):
        return lambda msgs: [list(get(m).items()) for m in msgs]
    return lambda msgs: list(map(get, msgs))


_ROW_CLASSES: dict[tuple[Any, ...], type] = {}


def span_row_class(fields: Sequence[span_schema.Field] | None = None) -> type:
    """A plain class standing in for `zerotrace.v1.Span` where code fills many spans
    (the OTLP conversion): the message's field names (an endpoint a nested object,
    maps dicts, ids bytes), its defaults, `HasField` for the optional ones, all
    derived from the declaration; `span_list_to_table` reads it as it reads messages.
    Plain attributes cost a fraction of upb's field writes and reads."""
    from proto import schema as span_schema

    fields = span_schema.FIELDS if fields is None else tuple(fields)
    cls = _ROW_CLASSES.get(fields)
    if cls is not None:
        return cls
    init: list[str] = []
    parts: dict[str, list[str]] = {}
    for f in fields:
        top, dot, part = f.path.partition(".")
        if dot:
            parts.setdefault(top, []).append(part)
            continue
        if f.role in (span_schema.MAP, span_schema.ATTRS, span_schema.ATTRS_JSON):
            value = "{}"
        elif f.role == span_schema.OPTIONAL:
            value = "None"
        else:
            value = {"bytes": "b''", "string": "''"}.get(f.proto, "0")
        init.append(f"self.{f.name} = {value}")
    env: dict[str, Any] = {}
    for top, names in parts.items():
        # an endpoint: its parts' defaults as the message's ("" address, port 0)
        kinds = {f.path.partition(".")[2]: f.proto for f in fields if f.path.startswith(top + ".")}
        sub = "\n    ".join(f"self.{n} = {chr(39) * 2 if kinds[n] == 'string' else 0}"
                              for n in names)
        env[f"_{top}"] = _compile("__init__", f"def __init__(self):\n    {sub}\n", {})
        env[f"_{top}"] = type(f"_{top.title()}", (), {"__slots__": tuple(names),
                                                      "__init__": env[f"_{top}"]})
        init.append(f"self.{top} = _{top}()")
    body = "\n    ".join(init)
    names = [f.name for f in fields if "." not in f.path] + list(parts)
    cls = type("SpanRow", (), {
        "__slots__": tuple(names),
        "__init__": _compile("__init__", f"def __init__(self):\n    {body}\n", env),
        "HasField": lambda self, name: getattr(self, name) is not None,
    })
    _ROW_CLASSES[fields] = cls
    return cls


def _compile(name: str, src: str, env: dict[str, Any]) -> Any:
    exec(compile(src, f"<proto.convert.{name}>", "exec"), env)  # noqa: S102 - our text
    return env[name]


_PB_COLUMNS: dict[tuple[Any, ...], tuple[list[Callable[..., list[Any]]], Any]] = {}


def span_list_to_table(msgs: Sequence[span_pb2.Span],
                       fields: Sequence[span_schema.Field] | None = None) -> pa.Table:
    """Protobuf spans (a decoded `SpanList`'s `spans`) as a table of
    `schema.arrow_schema(fields)`: the protobuf and OTLP wires reach the store as the
    Arrow wire does.  One list per column, read straight off the messages (no `Span`
    in between).  Raises ArrowInvalid when a value does not fit its column (a port
    above 65535).

    pyarrow and the declaration are imported here, not with the module: the CLI
    converts protobuf spans and starts 0.5-1 s faster without pyarrow."""
    import pyarrow as pa

    from proto import schema as span_schema

    fields = span_schema.FIELDS if fields is None else tuple(fields)
    known = _PB_COLUMNS.get(fields)
    if known is None:
        known = _PB_COLUMNS[fields] = ([_pb_column(f) for f in fields],
                                       span_schema.arrow_schema(fields))
    cols, schema = known
    arrays = [pa.array(c(msgs), type=f.arrow) for c, f in zip(cols, fields, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)
