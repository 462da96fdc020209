"""The compiled SpanList reader (server/ingest/spanlist.py) against the upb path
(proto/convert.py `span_list_to_table`): same table from the same wire bytes, the
protobuf rules a hand-written reader can get wrong (last value wins, optional
presence, unknown fields, endpoints), and malformed or hostile bytes refused, never
read past."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from proto.convert import span_list_to_table, spans_to_list
from proto.span import Endpoint, Span
from proto.zerotrace.v1 import span_pb2
from server.ingest import spanlist

pytestmark = pytest.mark.skipif(
    not spanlist.available(),
    reason="server/ingest/_spanlist.pyx not built (cythonize -i -3 it, or setup.py)")


def _spans(n: int, seed: int = 7) -> list[Span]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        s = Span(
            trace_id=rnd.randbytes(16).hex(), span_id=rnd.randbytes(8).hex(),
            parent_span_id=rnd.choice(["", rnd.randbytes(8).hex()]),
            kind=rnd.choice(["server", "client"]), source="S", protocol="http",
            operation=f"GET /x/{i % 5}", status="ok", status_code="200",
            error=rnd.choice(["", "boom é"]), start_ns=rnd.randrange(1 << 63),
            end_ns=rnd.randrange(1 << 64), service=f"svc-{i % 3}",
            pid=rnd.randrange(1 << 32), tid=rnd.randrange(1 << 32), process="p",
            cgroup_id=rnd.randrange(1 << 64), netns=rnd.randrange(1 << 64),
            transport="tcp", local=Endpoint(f"10.0.0.{i % 250}", rnd.randrange(65536)),
            remote=Endpoint("", 0) if i % 4 == 0 else Endpoint("::1", 443),
            req_bytes=rnd.randrange(1 << 64), resp_bytes=i,
            trace_headers={"traceparent": "00-x"} if i % 2 else {},
            attributes={"http.route": "/x/{id}", "n": i, "ok": True} if i % 3 else {},
            resource={"k8s.pod.name": f"pod-{i}", "host.name": "h"},
            incomplete=rnd.choice(["", "no_response"]), agent="a1")
        if i % 2:
            s.req_seq = rnd.randrange(1 << 64)
            s.resp_offset = 0  # present, zero: not the same as absent
        if i % 5 == 0:
            s.resp_seq = 5
        out.append(s)
    return out


def _sorted_maps(t: pa.Table) -> list[dict]:
    rows = t.to_pylist()
    for r in rows:
        for k, v in r.items():
            if isinstance(v, list):
                r[k] = sorted(v)
    return rows


def _both(data: bytes) -> tuple[pa.Table, pa.Table]:
    msgs = span_pb2.SpanList.FromString(data).spans
    return span_list_to_table(msgs), spanlist.spans_bytes_to_table(data)


def test_same_table_as_the_upb_path() -> None:
    data = spans_to_list(_spans(300)).SerializeToString()
    old, new = _both(data)
    assert new.schema == old.schema
    assert new.num_rows == 300
    # Maps keep the wire's entry order (upb's map iterates in its own order).
    assert _sorted_maps(new) == _sorted_maps(old)
    assert new.column("req_seq").null_count == 150
    assert new.column("resp_offset").to_pylist()[1] == 0
    assert new.column("resp_offset").to_pylist()[0] is None


def test_empty_and_empty_spans() -> None:
    assert spanlist.spans_bytes_to_table(b"").num_rows == 0
    data = span_pb2.SpanList(spans=[span_pb2.Span(), span_pb2.Span()]).SerializeToString()
    old, new = _both(data)
    assert new.num_rows == 2
    assert _sorted_maps(new) == _sorted_maps(old)


def _tag(number: int, wire_type: int) -> bytes:
    v, out = (number << 3) | wire_type, bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    return bytes(out) + bytes([v])


def test_repeated_fields_unknown_fields_and_merged_endpoints() -> None:
    a = span_pb2.Span(operation="first", pid=1, local=span_pb2.Endpoint(addr="1.1.1.1"))
    b = span_pb2.Span(operation="second", pid=2, local=span_pb2.Endpoint(port=80))
    one = a.SerializeToString() + b.SerializeToString()  # a message merge: last wins
    unknown = (_tag(40, 0) + b"\x05" + _tag(41, 2) + b"\x02\xff\xff" + _tag(42, 5)
               + b"\x01\x02\x03\x04" + _tag(43, 1) + bytes(8) + _tag(200, 0) + b"\x01")
    span = one + unknown
    data = bytes([0x0A, len(span)]) + span + bytes([(2 << 3) | 0, 9])  # unknown list field
    old, new = _both(data)
    assert _sorted_maps(new) == _sorted_maps(old)
    assert new.column("operation").to_pylist() == ["second"]
    assert new.column("pid").to_pylist() == [2]
    assert new.column("local_addr").to_pylist() == ["1.1.1.1"]
    assert new.column("local_port").to_pylist() == [80]


def test_out_of_range_port_and_invalid_utf8_refused() -> None:
    big = span_pb2.Span(local=span_pb2.Endpoint(port=70000)).SerializeToString()
    with pytest.raises(pa.ArrowInvalid):
        spanlist.spans_bytes_to_table(b"\x0a" + bytes([len(big)]) + big)
    bad = bytes([(7 << 3) | 2, 2, 0xC3, 0x28])  # operation = invalid UTF-8
    with pytest.raises(pa.ArrowInvalid):
        spanlist.spans_bytes_to_table(b"\x0a\x04" + bad)
    bad_key = _tag(29, 2) + bytes([4, 0x0A, 2, 0xFF, 0xFE])  # an attributes key
    with pytest.raises(pa.ArrowInvalid):
        spanlist.spans_bytes_to_table(b"\x0a" + bytes([len(bad_key)]) + bad_key)
    # bytes columns (ids) take any bytes
    ok = span_pb2.Span(trace_id=b"\xff" * 16).SerializeToString()
    assert spanlist.spans_bytes_to_table(b"\x0a" + bytes([len(ok)]) + ok).column(
        "trace_id").to_pylist() == [b"\xff" * 16]


def test_malformed_wire_is_refused_at_every_truncation() -> None:
    data = spans_to_list(_spans(3)).SerializeToString()
    for cut in range(1, len(data)):
        try:
            span_pb2.SpanList.FromString(data[:cut])
            upb_ok = True
        except Exception:  # noqa: BLE001 - DecodeError, whatever upb names it
            upb_ok = False
        try:
            spanlist.spans_bytes_to_table(data[:cut])
            ours_ok = True
        except ValueError:
            ours_ok = False
        assert ours_ok == upb_ok, cut
    for raw in (b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05\x0a", b"\x0b", b"\x0a\x02\x5a\x09",
                b"\x0a" + b"\xff" * 11):
        with pytest.raises(ValueError):
            spanlist.spans_bytes_to_table(raw)


def test_random_bytes_never_crash() -> None:
    rnd = random.Random(1)
    data = spans_to_list(_spans(5)).SerializeToString()
    for _ in range(2000):
        b = bytearray(data)
        for _ in range(rnd.randrange(1, 6)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        try:
            t = spanlist.spans_bytes_to_table(bytes(b))
        except ValueError:
            continue
        assert t.schema == spanlist.span_schema.arrow_schema()


def test_a_declared_field_of_another_kind_falls_back() -> None:
    from dataclasses import replace

    from proto import schema as s

    odd = (*s.FIELDS[:-1], replace(s.FIELDS[-1], proto="sint64"))
    assert not spanlist.available(odd)
    with pytest.raises(ValueError):
        spanlist.spans_bytes_to_table(b"", odd)
