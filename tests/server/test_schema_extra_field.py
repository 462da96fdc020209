"""A field added to the span's declaration reaches every layer without another edit.

A fixture schema (the real `proto.schema.FIELDS` plus one column declared here, at
run time) and a `Span` subclass holding the new attribute go through Arrow encoding,
the IPC wire, the ingest checks, a chDB table created from the declaration, and back
out of queries: nothing in proto/, server/ingest/ or server/storage/ names the field.
"""

from __future__ import annotations

import dataclasses
import uuid

import pyarrow as pa
import pytest
from factory import server_span

from proto import columns
from proto import schema as S
from proto.span import Span
from server.ingest.columns import BadColumns, read_columns, split_valid
from server.storage.base import TraceQuery
from server.storage.chdb_store import ChdbStore

EXTRA = S.Field("tls_version", 34, "string", "str", pa.dictionary(pa.int32(), pa.string()),
                "LowCardinality(String)", max_bytes=16)
XFIELDS = (*S.FIELDS, EXTRA)
XSpan = dataclasses.make_dataclass(
    "XSpan", [("tls_version", str, dataclasses.field(default=""))], bases=(Span,), slots=True)


def _xspan(**kw) -> Span:
    s = server_span(**kw)
    return XSpan(**{f.name: getattr(s, f.name) for f in dataclasses.fields(Span)})


@pytest.fixture
def xstore(chdb_root):
    s = ChdbStore(chdb_root.data_dir, f"x_{uuid.uuid4().hex[:12]}", _parent=chdb_root,
                  fields=XFIELDS, span_type=XSpan)
    yield s
    s.drop()


def test_extra_field_flows_through_encoding_validation_storage_query(xstore):
    tls13 = _xspan(start_ns=10, end_ns=20, operation="GET /a")
    tls13.tls_version = "TLSv1.3"
    plain = _xspan(trace_id=tls13.trace_id, start_ns=11, end_ns=12, parent_span_id=tls13.span_id)
    backwards = _xspan(start_ns=30, end_ns=5)  # invalid: the checks still run
    backwards.tls_version = "TLSv1.2"
    too_long = _xspan(start_ns=1, end_ns=2)  # breaks the extra field's declared limit
    too_long.tls_version = "TLSv1.3-draft-28-x"

    wire = columns.table_to_ipc(columns.spans_to_table(
        [tls13, plain, backwards, too_long], "node-a", fields=XFIELDS))
    table = read_columns(wire, S.arrow_schema(XFIELDS))
    assert table.schema.names[-1] == "tls_version"
    good, rejected, errors = split_valid(table, XFIELDS)
    assert (rejected, errors) == (2, ["span 2: end_ns before start_ns",
                                      "span 3: tls_version longer than 16 bytes"])
    assert good["tls_version"].to_pylist() == ["TLSv1.3", ""]

    assert xstore.write_span_table(good) == 2
    got = xstore.get_trace(tls13.trace_id)
    assert [type(s) for s in got] == [XSpan, XSpan]
    assert [(s.span_id, s.tls_version, s.agent) for s in got] == [
        (tls13.span_id, "TLSv1.3", "node-a"), (plain.span_id, "", "node-a")]
    tls13.agent = plain.agent = "node-a"
    assert got == [tls13, plain]  # every other field as sent
    # The column is in the table, queryable like the declared ones.
    rows = xstore._select(f"SELECT count() AS n FROM {xstore.table} "
                          "WHERE tls_version = {v:String}", {"v": "TLSv1.3"})
    assert rows[0]["n"] == 1
    found = xstore.search_traces(TraceQuery(service=tls13.service, limit=5))
    assert [t.trace_id for t in found] == [tls13.trace_id]


def test_batch_without_the_extra_field_is_refused_by_its_schema():
    # A batch of the real schema is not one of the fixture's: refused whole, by name.
    wire = columns.table_to_ipc(columns.spans_to_table([server_span(start_ns=1, end_ns=2)]))
    with pytest.raises(BadColumns, match="tls_version"):
        read_columns(wire, S.arrow_schema(XFIELDS))
