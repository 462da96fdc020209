"""The hand-written shapes of a span agree with its one declaration (proto/schema.py).

span.proto (compiled to span_pb2) and the `Span` class are kept by hand; these tests
fail when either drifts from `schema.FIELDS`: a field missing, renumbered, retyped or
out of order.  A span with every field set to a value unlike its default then goes
through each conversion, so a conversion that forgets a field fails too.
"""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from proto import columns, convert
from proto import schema as S
from proto.span import Endpoint, Span
from proto.zerotrace.v1 import span_pb2

_SCALARS = {
    FD.TYPE_BYTES: "bytes", FD.TYPE_STRING: "string", FD.TYPE_FIXED64: "fixed64",
    FD.TYPE_UINT32: "uint32", FD.TYPE_UINT64: "uint64", FD.TYPE_INT64: "int64",
    FD.TYPE_BOOL: "bool", FD.TYPE_DOUBLE: "double",
}


def _proto_type(fd) -> str:
    """The field's type as span.proto spells it (maps, proto3 optional, scalars)."""
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        k, v = (fd.message_type.fields_by_name[n] for n in ("key", "value"))
        return f"map<{_SCALARS[k.type]}, {_SCALARS[v.type]}>"
    if fd.message_type is not None:
        return fd.message_type.name
    optional = fd.containing_oneof is not None and fd.containing_oneof.name.startswith("_")
    return ("optional " if optional else "") + _SCALARS[fd.type]


def test_span_proto_matches_declaration():
    msg = span_pb2.Span.DESCRIPTOR
    seen = set()
    for f in S.FIELDS:
        top, dot, part = f.path.partition(".")
        # A nested part (local.addr) sits in the message field named by the path;
        # a split one (attributes_json) is its own proto field.
        pname = top if dot else f.name
        fd = msg.fields_by_name.get(pname)
        assert fd is not None, f"span.proto has no field {pname} (column {f.name})"
        assert fd.number == f.number, f"{pname}: proto number {fd.number}, declared {f.number}"
        if dot:
            fd = fd.message_type.fields_by_name.get(part)
            assert fd is not None, f"span.proto {top} has no part {part}"
        assert _proto_type(fd) == f.proto, f"{f.name}: proto {_proto_type(fd)}, declared {f.proto}"
        seen.add(pname)
    extra = set(msg.fields_by_name) - seen
    assert not extra, f"span.proto fields not declared in proto/schema.py: {sorted(extra)}"
    # Declaration order is proto number order (the table's column order follows it).
    numbers = [f.number for f in S.FIELDS]
    assert numbers == sorted(numbers)


def test_span_class_matches_declaration():
    got = [(f.name, f.type) for f in dataclasses.fields(Span)]
    assert got == S.span_attrs(), "proto/span.py Span fields differ from proto/schema.py"
    for f in S.FIELDS:
        top, dot, part = f.path.partition(".")
        if dot:
            ann = {x.name: x.type for x in dataclasses.fields(Endpoint)}
            assert ann.get(part) == f.py, f"Endpoint.{part} is {ann.get(part)}, declared {f.py}"


def test_columns_and_limits_follow_declaration():
    from server.ingest import validate
    from server.storage import schema as table

    assert table.COLUMN_NAMES == columns.NAMES == S.names()
    assert [t for _, t in table.COLUMNS] == [f.clickhouse for f in S.FIELDS]
    assert [(f.name, f.type, f.nullable) for f in columns.SCHEMA] == \
        [(f.name, f.arrow, f.nullable) for f in S.FIELDS]
    # Nullable in Arrow exactly where nullable in ClickHouse and optional in proto.
    for f in S.FIELDS:
        assert f.nullable == f.clickhouse.startswith("Nullable(") == \
            f.proto.startswith("optional "), f.name
    assert validate.KINDS == S.KINDS and validate.SOURCES == S.SOURCES
    assert validate.MAX_STRING == S.MAX_STRING


def _full_span() -> Span:
    """A span with every declared attribute set to something other than its default."""
    ints = iter(range(1000, 100000, 7))
    s = Span()
    for f in S.FIELDS:
        if f.role == S.ID:
            setattr(s, f.path, "ab" * (max(f.sizes) or 8) if f.name != "span_id" else "cd" * 8)
        elif f.role in (S.ATTRS, S.ATTRS_JSON):
            s.attributes.update({"http.route": "/x", "n": 3, "ok": True, "l": [1, "a"]})
        elif f.role == S.MAP:
            getattr(s, f.path)[f"{f.name}.k"] = f"{f.name}-v"
        else:
            obj, _, attr = f.path.rpartition(".")
            target = getattr(s, obj) if obj else s
            value = next(ints) if f.py.startswith("int") else f"{f.name}-v"
            if f.name == "start_ns":
                value = 1_700_000_000_000_000_000
            if f.name == "end_ns":
                value = 1_700_000_000_000_000_500
            if f.name in ("kind",):
                value = "client"
            if f.name == "source":
                value = "N"
            setattr(target, attr, value)
    for f in dataclasses.fields(Span):
        default = (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        if f.name != "span_id":
            assert getattr(s, f.name) != default, f"_full_span left {f.name} at its default"
    return s


def test_every_field_survives_protobuf():
    s = _full_span()
    wire = span_pb2.Span.FromString(convert.span_to_pb(s).SerializeToString())
    assert convert.span_from_pb(wire) == s


def test_every_field_survives_arrow():
    s = _full_span()
    table = columns.ipc_to_table(columns.table_to_ipc(columns.spans_to_table([s])))
    assert columns.spans_from_table(table) == [s]


def test_every_field_survives_protobuf_to_table():
    """The protobuf wire's conversion to the span table's columns (what ingest does
    with protobuf and OTLP spans) reads every declared field off the message."""
    s = _full_span()
    msgs = span_pb2.SpanList.FromString(convert.spans_to_list([s]).SerializeToString()).spans
    table = convert.span_list_to_table(msgs)
    assert table.schema.equals(columns.SCHEMA)
    assert columns.spans_from_table(table) == [s]
    # Unset optional fields stay null, not zero.
    bare = Span(trace_id="ab" * 16, kind="client", start_ns=1, end_ns=2)
    msgs = span_pb2.SpanList.FromString(convert.spans_to_list([bare]).SerializeToString()).spans
    row = convert.span_list_to_table(msgs).to_pylist()[0]
    assert [row[f.name] for f in S.FIELDS if f.role == S.OPTIONAL] == [None] * 4
    assert columns.spans_from_table(convert.span_list_to_table(msgs)) == [bare]


def test_row_decoder_reads_every_column():
    s = _full_span()
    row = columns.spans_to_table([s]).to_pylist()[0]
    for f in S.FIELDS:
        if f.role == S.ID:
            row[f.name + "_hex"] = row.pop(f.name).hex()
    assert S.row_decoder()(row) == s
    with pytest.raises(KeyError):
        S.row_decoder()({})


def test_typed_attribute_values_are_written_as_json_writes_them():
    """The Arrow column of non-string attributes holds exactly json.dumps's text (the
    encoder is shared and ints/bools are written directly, for speed)."""
    import enum
    import json

    from proto.columns import _json_value

    class Level(enum.IntEnum):
        HIGH = 3

    for v in (0, 1, -5, 2**70, True, False, 1.5, -0.0, 3.0, 1e300, float("nan"),
              float("inf"), None, [1, "a", True], {"x": 1, "y": [None]}, Level.HIGH):
        assert _json_value(v) == json.dumps(v, separators=(",", ":")), v
