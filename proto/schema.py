"""The span's fields, declared once: what every other shape of a span is derived from.

One row of `FIELDS` per column of the span table, in table order.  From it come the
Arrow schema of the agent's batches (proto/columns.py), the protobuf conversions and
the protobuf-to-Arrow conversion of ingest (proto/convert.py), the ClickHouse column
list and the columns added to an older table (server/storage/schema.py), the decoding
of stored rows (server/storage/sqlstore.py) and the limits of the one ingest
validator (server/ingest/validate.py).  Two shapes are hand-written
and checked against it by tests instead (tests/proto/test_schema.py): `span.proto`,
because protoc needs a file, and the `Span` class (proto/span.py), because the agent
builds it positionally on its per-event path and a generated class would hide its
fields from readers and type checkers.

Adding a field: a row here, the attribute on `Span` (same order) and the field in
span.proto (regenerate span_pb2); the tests say which is missing.  Existing tables
get the column when a store opens (`ALTER TABLE ... ADD COLUMN`,
server/storage/schema.py `migrate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# Span kinds and sources a stored span may carry ("" = not set).
KINDS = frozenset({"server", "client", "internal", ""})
SOURCES = frozenset({"S", "N", "A", ""})
# Longest operation or error text stored, in UTF-8 bytes.
MAX_STRING = 64 * 1024

# How a column's values map to a `Span` attribute:
ID = "id"  # raw bytes in the column, lower-case hex text on `Span` ("" when empty)
PLAIN = "plain"  # the attribute's value as it is (str or int)
OPTIONAL = "optional"  # int or None (nullable column, proto3 `optional`)
MAP = "map"  # dict[str, str]
ATTRS = "attrs"  # the string-valued entries of `Span.attributes`
ATTRS_JSON = "attrs_json"  # the other entries of `Span.attributes`, as JSON text

_STR = pa.string()
# Dictionary-encoded where the table has LowCardinality: ClickHouse takes the
# dictionary as it is (insert 2.8 against 3.1-3.4 us a span, same run) and the
# batch is smaller.
_LC = pa.dictionary(pa.int32(), pa.string())
_U64 = pa.uint64()
_MAP = pa.map_(pa.string(), pa.string())
_CH_LC = "LowCardinality(String)"
_CH_MAP = "Map(LowCardinality(String), String) CODEC(ZSTD(1))"


@dataclass(frozen=True, slots=True)
class Field:
    """One column of the span table and how it appears in every other shape.

    `name` is the column name and the Arrow field name.  `attr` is the `Span`
    attribute it comes from (a dotted path for the endpoint's parts: "local.addr").
    `number` and `proto` are the `zerotrace.v1.Span` field (for a dotted `attr`, the
    number of the message field and the type of its part).  `py` is the `Span`
    attribute's annotation (for a dotted `attr`, the part's).  `sizes` are the byte
    lengths a stored value may have (empty: any; a single size also means "not all
    zero bytes", as for required W3C ids); `max_bytes` a UTF-8 length limit;
    `values` the only values allowed.
    """

    name: str
    number: int
    proto: str
    py: str
    arrow: pa.DataType
    clickhouse: str
    role: str = PLAIN
    attr: str = ""
    nullable: bool = False
    sizes: tuple[int, ...] = ()
    max_bytes: int = 0
    values: frozenset[str] = frozenset()

    @property
    def path(self) -> str:
        """The `Span` attribute path (the column name unless declared otherwise)."""
        return self.attr or self.name


def _f(name: str, number: int, proto: str, py: str, arrow: pa.DataType, clickhouse: str,
       **kw: Any) -> Field:
    return Field(name, number, proto, py, arrow, clickhouse, **kw)


FIELDS: tuple[Field, ...] = (
    # Raw bytes as String, not FixedString: FixedString would silently zero-pad a
    # short id, and the table's length CHECK is how a malformed batch gets refused.
    _f("trace_id", 1, "bytes", "str", pa.binary(), "String", role=ID, sizes=(16,)),
    _f("span_id", 2, "bytes", "str", pa.binary(), "String CODEC(ZSTD(1))", role=ID,
       sizes=(8,)),
    _f("parent_span_id", 3, "bytes", "str", pa.binary(), "String CODEC(ZSTD(1))", role=ID,
       sizes=(0, 8)),
    _f("kind", 4, "string", "str", _LC, _CH_LC, values=KINDS),
    _f("source", 5, "string", "str", _LC, _CH_LC, values=SOURCES),
    _f("protocol", 6, "string", "str", _LC, _CH_LC),
    _f("operation", 7, "string", "str", _LC, _CH_LC, max_bytes=MAX_STRING),
    _f("status", 8, "string", "str", _LC, _CH_LC),
    _f("status_code", 9, "string", "str", _LC, _CH_LC),
    _f("error", 10, "string", "str", _STR, "String CODEC(ZSTD(1))", max_bytes=MAX_STRING),
    # Spans of a trace sit together and start close in time: Delta takes start_ns
    # from 4.2 to 0.6 bytes/span, T64 end_ns from 6.1 to 4.5 (10 M synthetic spans).
    _f("start_ns", 11, "fixed64", "int", _U64, "UInt64 CODEC(Delta, ZSTD(1))"),
    _f("end_ns", 12, "fixed64", "int", _U64, "UInt64 CODEC(T64, ZSTD(1))"),
    _f("service", 13, "string", "str", _LC, _CH_LC),
    _f("pid", 14, "uint32", "int", pa.uint32(), "UInt32 CODEC(ZSTD(1))"),
    _f("tid", 15, "uint32", "int", pa.uint32(), "UInt32 CODEC(ZSTD(1))"),
    _f("process", 16, "string", "str", _LC, _CH_LC),
    _f("cgroup_id", 17, "uint64", "int", _U64, "UInt64 CODEC(ZSTD(1))"),
    _f("netns", 18, "uint64", "int", _U64, "UInt64 CODEC(ZSTD(1))"),
    _f("transport", 19, "string", "str", _LC, _CH_LC),
    _f("local_addr", 20, "string", "str", _LC, _CH_LC, attr="local.addr"),
    _f("local_port", 20, "uint32", "int", pa.uint16(), "UInt16 CODEC(ZSTD(1))",
       attr="local.port"),
    _f("remote_addr", 21, "string", "str", _LC, _CH_LC, attr="remote.addr"),
    _f("remote_port", 21, "uint32", "int", pa.uint16(), "UInt16 CODEC(ZSTD(1))",
       attr="remote.port"),
    _f("req_seq", 22, "optional uint64", "int | None", _U64,
       "Nullable(UInt64) CODEC(ZSTD(1))", role=OPTIONAL, nullable=True),
    _f("resp_seq", 23, "optional uint64", "int | None", _U64,
       "Nullable(UInt64) CODEC(ZSTD(1))", role=OPTIONAL, nullable=True),
    _f("req_offset", 24, "optional uint64", "int | None", _U64,
       "Nullable(UInt64) CODEC(ZSTD(1))", role=OPTIONAL, nullable=True),
    _f("resp_offset", 25, "optional uint64", "int | None", _U64,
       "Nullable(UInt64) CODEC(ZSTD(1))", role=OPTIONAL, nullable=True),
    _f("req_bytes", 26, "uint64", "int", _U64, "UInt64 CODEC(ZSTD(1))"),
    _f("resp_bytes", 27, "uint64", "int", _U64, "UInt64 CODEC(ZSTD(1))"),
    _f("trace_headers", 28, "map<string, string>", "dict[str, str]", _MAP, _CH_MAP,
       role=MAP),
    # String-valued attributes, and the others as JSON text, so that both kinds are
    # queryable as text and come back typed (proto/convert.py merge_attributes).
    _f("attributes", 29, "map<string, string>", "dict[str, Any]", _MAP, _CH_MAP,
       role=ATTRS),
    _f("attributes_json", 30, "map<string, string>", "dict[str, Any]", _MAP, _CH_MAP,
       role=ATTRS_JSON, attr="attributes"),
    _f("resource", 31, "map<string, string>", "dict[str, str]", _MAP, _CH_MAP, role=MAP),
    _f("incomplete", 32, "string", "str", _LC, _CH_LC),
    _f("agent", 33, "string", "str", _LC, _CH_LC),
)


def names(fields: Sequence[Field] = FIELDS) -> list[str]:
    """The column names, in table order."""
    return [f.name for f in fields]


def arrow_schema(fields: Sequence[Field] = FIELDS) -> pa.Schema:
    """The Arrow schema of a span batch with these columns."""
    return pa.schema([pa.field(f.name, f.arrow, nullable=f.nullable) for f in fields])


def clickhouse_columns(fields: Sequence[Field] = FIELDS) -> list[tuple[str, str]]:
    """(column name, ClickHouse type with codec) of the span table, in order."""
    return [(f.name, f.clickhouse) for f in fields]


def span_attrs(fields: Sequence[Field] = FIELDS) -> list[tuple[str, str]]:
    """(attribute, annotation) of `Span`, in order, as these columns imply: the first
    part of each path once; an endpoint's parts make one `Endpoint` attribute."""
    out: dict[str, str] = {}
    for f in fields:
        top, dot, _ = f.path.partition(".")
        out.setdefault(top, "Endpoint" if dot else f.py)
    return list(out.items())


def _opt(v: Any) -> int | None:
    return None if v is None else int(v)


def row_decoder(fields: Sequence[Field] = FIELDS, id_suffix: str = "_hex",
                make: Callable[..., Any] | None = None) -> Callable[[dict[str, Any]], Any]:
    """A function from one stored row (a dict by column name; ids selected as hex text
    under `name + id_suffix`) to a `Span` (or to `make(**attributes)`).

    The function's source is written here from the declaration and compiled once,
    as `dataclasses` does for `__init__`: a loop over the columns per row cost half
    as much again as the hand-written decoder it replaces (11.3 against 7.6 us a
    row), and queries decode every span they return.
    """
    from proto.convert import merge_attributes  # imports proto.span: not at module level
    from proto.span import Endpoint, Span

    def conv(f: Field, key: str) -> str:
        v = f"r[{key!r}]"
        if f.role == OPTIONAL:
            return f"_opt({v})"
        if f.role == MAP:
            return f"dict({v})"
        return f"int({v})" if f.py == "int" else v  # drivers may return other ints

    args: dict[str, str] = {}  # Span attribute -> expression
    nested: dict[str, list[str]] = {}
    attrs = {ATTRS: "{}", ATTRS_JSON: "{}"}
    for f in fields:
        top, dot, part = f.path.partition(".")
        if f.role == ID:
            args[f.path] = f"r[{f.name + id_suffix!r}]"
        elif f.role in attrs:
            attrs[f.role] = f"dict(r[{f.name!r}])"
        elif dot:
            nested.setdefault(top, []).append(f"{part}={conv(f, f.name)}")
        else:
            args[f.path] = conv(f, f.name)
        if f.role in (ATTRS, ATTRS_JSON):
            args["attributes"] = f"_merge({attrs[ATTRS]}, {attrs[ATTRS_JSON]})"
        elif dot:
            args[top] = f"Endpoint({', '.join(nested[top])})"
    body = ",\n        ".join(f"{k}={v}" for k, v in args.items())
    src = f"def decode(r):\n    return make(\n        {body})\n"
    env = {"make": make or Span, "Endpoint": Endpoint, "_opt": _opt, "_merge": merge_attributes}
    exec(compile(src, "<proto.schema.row_decoder>", "exec"), env)  # noqa: S102 - our text
    return env["decode"]
