"""Property-based tests: whatever the bytes, splits, truncations and gaps, parsers never
raise, keep bounded buffers, and what they report as complete is right."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols.base import MAX_BUFFER, MAX_PENDING, Chunk
from agent.protocols.registry import PROTOCOLS, new_parser

from .golden import captures, expected_path, load_capture, run, summary

FILES = captures()
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_bounded(p) -> None:
    for s in p.streams:
        assert len(s.buf) <= MAX_BUFFER
    pending = getattr(p, "pending", ())
    assert len(pending) <= MAX_PENDING


events = st.lists(
    st.tuples(
        st.integers(0, 1),  # direction
        st.binary(max_size=300),  # captured bytes
        st.integers(0, 5000),  # bytes moved beyond the captured prefix
        st.integers(0, 3000),  # bytes lost before this chunk
    ),
    max_size=25,
)


@SETTINGS
@given(proto=st.sampled_from(PROTOCOLS), side=st.sampled_from([True, False, None]), ev=events)
def test_arbitrary_bytes_never_raise(proto, side, ev):
    p = new_parser(proto, side)
    offs = [0, 0]
    for i, (d, data, extra, lost) in enumerate(ev):
        offs[d] += lost
        size = len(data) + extra
        recs = p.feed(Chunk(d, data, size, offs[d], 1000 + i, 7, None if i % 3 else offs[d]))
        offs[d] += size
        assert isinstance(recs, list)
        _check_bounded(p)
    p.flush("closed")


# Frames that look like each protocol, mixed with noise, to get past the first byte.
_PREFIXES = [
    b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n", b"*2\r\n$3\r\nGET\r\n", b"$-1\r\n", b"+OK\r\n",
    b"%1\r\n", b"Q\x00\x00\x00\x0cSELECT 1\x00", b"Z\x00\x00\x00\x05I",
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"\x05\x00\x00\x00\x03ping", b"\x07\x00\x00\x01\x00",
    b"\x00\x1c\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    b"\r\n", b"\r\n\r\n", b"0\r\n\r\n",
    b"get k\r\n", b"set k 0 0 5\r\n", b"VALUE k 0 5\r\n", b"END\r\n", b"ms k 2 q\r\n",
    b"VA 2 O1\r\n", b"mn\r\n", b"STAT pid 1\r\n",
    b"\x80\x0d\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x07" + bytes(8) + b"k",
    b"\x81\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + bytes(12),
]
pieces = st.lists(st.one_of(st.sampled_from(_PREFIXES), st.binary(max_size=40)), max_size=12)


@SETTINGS
@given(proto=st.sampled_from(PROTOCOLS), side=st.sampled_from([True, False, None]),
       ev=st.lists(st.tuples(st.integers(0, 1), pieces, st.booleans()), max_size=12))
def test_protocol_shaped_noise_never_raises(proto, side, ev):
    p = new_parser(proto, side)
    offs = [0, 0]
    for i, (d, parts, cut) in enumerate(ev):
        data = b"".join(parts)
        kept = data[: len(data) // 2] if cut else data
        p.feed(Chunk(d, kept, len(data), offs[d], 1000 + i, 7, offs[d]))
        offs[d] += len(data)
        _check_bounded(p)
    p.flush("closed")


def _key(r) -> tuple:
    return (r["operation"], r["status_code"], tuple(r["request"] or ()),
            tuple(r["response"] or ()))


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_golden_streams_split_truncated_and_holed(path, data):
    """Real streams cut at arbitrary points, with a capture prefix and lost chunks."""
    doc = load_capture(path)
    ci = data.draw(st.integers(0, len(doc["connections"]) - 1), label="connection")
    conn = doc["connections"][ci]
    expected = {_key(summary(r)) for r in run(doc["protocol"], conn, transport=doc["transport"])}
    assert expected <= {_key(r) for r in json.loads(expected_path(path).read_text())}
    capture = data.draw(st.sampled_from([None, None, 1024, 256, 64, 16]), label="capture")
    side = data.draw(st.sampled_from([True, False, None]), label="side")
    cuts = data.draw(st.lists(st.integers(1, 400), max_size=8), label="cuts")
    drop = data.draw(st.sets(st.integers(0, 60), max_size=3), label="drop")
    p = new_parser(doc["protocol"], side, doc["transport"]) if doc["protocol"] == "dns" \
        else new_parser(doc["protocol"], side)
    offs = [0, 0]
    recs = []
    k = 0
    for d, ts, raw in conn:
        if side is False:
            d = 1 - d
        parts = [raw]
        if doc["transport"] == "tcp" and cuts:
            c = cuts[k % len(cuts)]
            parts = [raw[i:i + c] for i in range(0, len(raw), c)]
        for part in parts:
            k += 1
            if k not in drop:
                kept = part if capture is None else part[:capture]
                recs += p.feed(Chunk(d, kept, len(part), offs[d], 1000 + ts, 7, offs[d]))
            offs[d] += len(part)
            _check_bounded(p)
    recs += p.flush("closed")
    if capture is None and not drop and side is not False:
        assert {_key(summary(r)) for r in recs} == expected
    for r in recs:
        s = summary(r)
        if not s["incomplete"] and s["request"] and s["response"] and side is not False:
            assert _key(s) in expected, s


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_closed_or_truncated_at_every_position(path):
    """The conversation ends (or the capture prefix ends) at every byte position."""
    doc = load_capture(path)
    conn = doc["connections"][0]
    proto, transport = doc["protocol"], doc["transport"]
    expected = {_key(summary(r)) for r in run(proto, conn, transport=transport)}
    total = sum(len(raw) for _, _, raw in conn)
    stride = max(1, total // 400)
    for cut in range(0, total + 1, stride):
        for mode in ("close", "prefix"):
            p = new_parser(proto, True, transport) if proto == "dns" else new_parser(proto, True)
            offs = [0, 0]
            seen = 0
            recs = []
            for d, ts, raw in conn:
                if mode == "close":
                    if seen >= cut or (transport == "udp" and seen + len(raw) > cut):
                        break  # a datagram arrives whole or not at all
                    raw = raw[: cut - seen]
                    kept = raw
                else:
                    kept = raw[: max(0, cut - seen)] if seen < cut else raw[:cut % 97]
                seen += len(raw)
                recs += p.feed(Chunk(d, kept, len(raw), offs[d], 1000 + ts, 7, offs[d]))
                offs[d] += len(raw)
                _check_bounded(p)
            recs += p.flush("closed")
            for r in recs:
                s = summary(r)
                if not s["incomplete"] and s["request"] and s["response"]:
                    assert _key(s) in expected, (cut, mode, s)
