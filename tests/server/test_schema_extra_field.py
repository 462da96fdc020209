"""A field added to the span's declaration reaches every layer without another edit.

A fixture schema (the real `proto.schema.FIELDS` plus one column declared here, at
run time) and a `Span` subclass holding the new attribute go through Arrow encoding,
the IPC wire, the ingest checks, a chDB table created from the declaration, and back
out of queries: nothing in proto/, server/ingest/ or server/storage/ names the field.
The same through a real server's gRPC `Push` (the ingest service takes the store's
declaration), and into a store made before the field was declared (the column is
added when the store opens).
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import pyarrow as pa
import pytest
from factory import server_span

from proto import columns
from proto import schema as S
from proto.span import Span
from server.ingest.validate import BadColumns, read_columns, split_valid
from server.storage.base import TraceQuery
from server.storage.chdb_store import ChdbStore

S_NOW = time.time_ns()
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

    assert xstore.write(good) == 2
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


def test_extra_field_through_a_server_push(xstore):
    import grpc

    from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc
    from server.app import ZerotraceServer

    srv = ZerotraceServer("127.0.0.1:0", store=xstore)
    port = srv.start()
    try:
        a = _xspan(start_ns=S_NOW, end_ns=S_NOW + 5)
        a.tls_version = "TLSv1.3"
        b = _xspan(start_ns=S_NOW, end_ns=S_NOW + 5)
        b.tls_version = "x" * 17  # over the declared limit: refused with its reason
        req = ingest_pb2.PushRequest(span_columns=columns.table_to_ipc(
            columns.spans_to_table([a, b], "node-x", fields=XFIELDS)))
        req.agent.agent = "node-x"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=30)
            # A batch of the real schema lacks the column: refused whole, by name.
            plain = ingest_pb2.PushRequest(span_columns=columns.table_to_ipc(
                columns.spans_to_table([server_span(start_ns=S_NOW, end_ns=S_NOW + 1)])))
            with pytest.raises(grpc.RpcError) as e:
                ingest_pb2_grpc.IngestServiceStub(ch).Push(plain, timeout=30)
        assert (resp.accepted, resp.rejected) == (1, 1)
        assert resp.errors == ["span 1: tls_version longer than 16 bytes"]
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tls_version" in e.value.details()
    finally:
        srv.stop(0.5)
    got = xstore.get_trace(a.trace_id)
    assert [(s.span_id, s.tls_version, s.agent) for s in got] == [(a.span_id, "TLSv1.3", "node-x")]


def test_a_store_made_before_the_field_gets_its_column(chdb_root):
    db = f"old_{uuid.uuid4().hex[:12]}"
    old = ChdbStore(chdb_root.data_dir, db, _parent=chdb_root)  # today's declaration
    try:
        before = server_span(start_ns=S_NOW, end_ns=S_NOW + 1)
        assert old.write_spans([before]) == 1
        # The same data directory opened by a version that declares one more field.
        new = ChdbStore(chdb_root.data_dir, db, _parent=chdb_root, fields=XFIELDS,
                        span_type=XSpan)
        cols = [r["name"] for r in new._select(
            "SELECT name FROM system.columns WHERE database = {d:String} "
            "AND table = 'spans' ORDER BY position", {"d": db})]
        assert cols == S.names(XFIELDS)
        after = _xspan(start_ns=S_NOW, end_ns=S_NOW + 1)
        after.tls_version = "TLSv1.2"
        assert new.write_spans([after]) == 1
        assert [s.tls_version for s in new.get_trace(before.trace_id)] == [""]
        assert [s.tls_version for s in new.get_trace(after.trace_id)] == ["TLSv1.2"]
        # Opening it again adds nothing: the table has every declared column.
        again = ChdbStore(chdb_root.data_dir, db, _parent=chdb_root, fields=XFIELDS,
                          span_type=XSpan)
        assert again.get_trace(after.trace_id)[0].tls_version == "TLSv1.2"
    finally:
        old.drop()
