"""The compiled HTTP/2 + gRPC parser (agent/protocols/_http2.pyx) against the Python one
it replaced (agent/protocols/http2.py at commit BASELINE, with the `hpack` package,
loaded from git by tests/protocols/equivalence.py): on random HTTP/2 connections and
on the golden captures, cut into chunks, truncated to capture prefixes, holed,
retransmitted, joined midway and corrupted, with redaction on and off, both must
produce identical records, STATS counters, buffers, stream tables and the rest of the
parser's state.  The HPACK decoders are compared block by block too (fields, errors,
misses, dynamic table)."""

from __future__ import annotations

import random
import types

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple

from agent.protocols import redact
from agent.protocols.base import Chunk
from agent.protocols.http2 import STATS, UNKNOWN, HpackDecoder, Http2Parser

from .equivalence import PYTHON_HTTP2, load_baseline, needs_history, same_run
from .golden import GOLDEN, load_capture

BASELINE = PYTHON_HTTP2  # last commit of the Python parser
STREAMS = 1500  # random connections; ~10 s in all on a busy 2-vCPU machine

pytestmark = needs_history(BASELINE)
# What else the parser keeps between chunks: the preface, the open streams by id.
STATE = ("preface_seen", lambda p: list(p.streams_))


@pytest.fixture(scope="module")
def old() -> types.ModuleType:
    mod = load_baseline("http2", BASELINE)
    assert isinstance(mod.Http2Parser, type) and not hasattr(mod, "HpackDecoder")
    return mod


# -- random connections ------------------------------------------------------------------

def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + \
        (sid & 0xFFFFFFFF).to_bytes(4, "big") + payload


_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _req_headers(rng: random.Random, sid: int) -> list:
    grpc = rng.random() < 0.6
    h = [(":method", rng.choice(["POST", "GET", "PUT"])),
         (":scheme", rng.choice(["http", "https"])),
         (":path", rng.choice(["/demo.v1.Greeter/SayHello", "/a/b?x=1", "/", "/svc/M",
                               f"/p/{rng.randrange(1000)}"])),
         (":authority", rng.choice(["h:50051", "[::1]:80", "x", "example.com:443"]))]
    rng.shuffle(h)
    if grpc:
        h.append(("content-type", rng.choice(["application/grpc", "application/grpc+proto"])))
        h.append(("te", "trailers"))
        h.append(("grpc-timeout", f"{rng.randrange(1, 99999)}m"))  # fresh literal per call
    else:
        h.append(("content-type", rng.choice(["text/html", "application/json", ""])))
    for name, value in (("traceparent", _TP), ("traceparent", "00-zz-yy-01"),
                        ("x-request-id", f"r{sid}"), ("tracestate", "a=b"), ("sw8", "1-x"),
                        ("uber-trace-id", "1:2:0:1"), ("user-agent", "grpc-python/1.6"),
                        ("authorization", "Bearer t"), (":method", "PATCH")):
        if rng.random() < 0.12:
            h.append((name, value))
    if rng.random() < 0.1:
        h.append(NeverIndexedHeaderTuple("x-secret", f"s{rng.randrange(99)}"))
    if rng.random() < 0.05:
        h.append(("x-big", "v" * rng.randrange(100, 3000)))
    return h


def _resp_headers(rng: random.Random, trailers: bool) -> list:
    if trailers:
        h = [("grpc-status", rng.choice(["0", "0", "5", "13", "99", "\u0663", "x"]))]
        if rng.random() < 0.5:
            h.append(("grpc-message", rng.choice(["no such greeting", "", "m" * 300])))
        return h
    h = [(":status", rng.choice(["200", "200", "404", "500", "100", "103", "abc", "\u0662"]))]
    if rng.random() < 0.7:
        h.append(("content-type", rng.choice(["application/grpc", "text/plain"])))
    if rng.random() < 0.3:
        h.append(("grpc-status", rng.choice(["0", "14"])))
    if rng.random() < 0.3:
        h.append(("date", f"Mon, 21 Oct 2013 20:13:{rng.randrange(60):02d} GMT"))
    return h


def _header_frames(rng: random.Random, enc: hpack.Encoder, ftype: int, sid: int,
                   headers: list, end_stream: bool, promised: int = 0) -> bytes:
    if rng.random() < 0.05:
        enc.header_table_size = rng.choice([0, 256, 4096, 100])
    block = enc.encode(headers, huffman=rng.random() < 0.7)
    if rng.random() < 0.04 and block:  # a damaged block
        i = rng.randrange(len(block))
        block = block[:i] + bytes([rng.randrange(256)]) + block[i + 1:]
    flags = 0x1 if end_stream and ftype == 1 else 0
    head = b""
    if ftype == 5:
        head = promised.to_bytes(4, "big")
    elif rng.random() < 0.1:
        flags |= 0x20
        head = bytes(5)
    pad = b""
    if rng.random() < 0.1:
        flags |= 0x8
        n = rng.choice([0, 3, 200])
        head = bytes([n]) + head
        pad = bytes(min(n, rng.choice([n, 1])))
    if rng.random() < 0.15 and len(block) > 2:
        cut = rng.randrange(1, len(block))
        out = _frame(ftype, flags, sid, head + block[:cut] + pad)
        rest = block[cut:]
        while rest:
            k = rng.randrange(1, len(rest) + 1)
            last = k == len(rest)
            out += _frame(9, 0x4 if last else 0, sid if rng.random() < 0.95 else sid + 2,
                          rest[:k])
            rest = rest[k:]
        return out
    return _frame(ftype, flags | 0x4, sid, head + block + pad)


def random_connection(rng: random.Random) -> list[tuple[int, bytes]]:
    """Writes (direction, bytes) of one HTTP/2 connection, client side first."""
    enc = [hpack.Encoder(), hpack.Encoder()]
    writes: list[tuple[int, bytes]] = []
    if rng.random() < 0.85:
        writes.append((0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, bytes(6))))
    writes.append((1, _frame(4, 0, 0, b"") + _frame(4, 1, 0, b"")))
    open_: list[int] = []
    sid = 1
    if rng.random() < 0.02:  # more streams open than the parser keeps: eviction
        for _ in range(270):
            writes.append((0, _header_frames(rng, enc[0], 1, sid, _req_headers(rng, sid), True)))
            open_.append(sid)
            sid += 2
    for _ in range(rng.randrange(1, 14)):
        r = rng.random()
        if r < 0.35 or not open_:
            body = rng.random() < 0.6
            writes.append((0, _header_frames(rng, enc[0], 1, sid, _req_headers(rng, sid),
                                              not body)))
            if body:
                n = rng.choice([5, 40, 1200, 5000, 20000])
                writes.append((0, _frame(0, 1 if rng.random() < 0.8 else 0, sid, bytes(n))))
            open_.append(sid)
            sid += 2
        elif r < 0.75:
            s = rng.choice(open_)
            grpc_end = rng.random() < 0.6
            writes.append((1, _header_frames(rng, enc[1], 1, s, _resp_headers(rng, False),
                                              not grpc_end and rng.random() < 0.3)))
            if rng.random() < 0.7:
                writes.append((1, _frame(0, 0, s, bytes(rng.choice([7, 300, 6000])))))
            if grpc_end:
                writes.append((1, _header_frames(rng, enc[1], 1, s, _resp_headers(rng, True),
                                                  True)))
            open_.remove(s)
        else:
            d = rng.randrange(2)
            kind = rng.random()
            s = rng.choice(open_)
            if kind < 0.25:
                code = rng.choice([b"\x00\x00\x00\x08", b"\x00\x00\x00\x00", b"\x00\x01"])
                writes.append((d, _frame(3, 0, s, code)))  # RST_STREAM, short ones too
            elif kind < 0.45:
                writes.append((d, _frame(rng.choice([2, 6, 8]), 0, rng.choice([0, s]),
                                         bytes(rng.choice([4, 5, 8])))))
            elif kind < 0.55:
                writes.append((d, _frame(7, 0, 0, bytes(8))))
            elif kind < 0.7:
                writes.append((1, _header_frames(rng, enc[1], 5, s, _req_headers(rng, s + 1),
                                                  False, promised=s + 1)))
            elif kind < 0.8:
                writes.append((d, _frame(rng.choice([10, 0xFF]), 0, s, b"junk")))
            elif kind < 0.9:
                writes.append((d, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))))
            else:
                writes.append((d, _frame(0, 1, s + 40, b"orphan")))
    return writes


# -- chunking ------------------------------------------------------------------------------

def chunked(rng: random.Random, writes: list[tuple[int, bytes]], capture: int | None,
            holes: bool, first: int = 0) -> list[Chunk]:
    """Chunks of the writes: split at random, each maybe cut to a prefix, lost or
    partly sent again; the writes before `first` are not seen (joined midway)."""
    offs = [0, 0]
    out = []
    for i, (d, data) in enumerate(writes):
        pieces = [data]
        if rng.random() < 0.3 and len(data) > 1:
            k = rng.randrange(1, len(data))
            pieces = [data[:k], data[k:]]
        for piece in pieces:
            off = offs[d]
            offs[d] += len(piece)
            if i < first:
                continue
            fate = rng.random() if holes else 1.0
            if fate < 0.05:
                continue  # lost: a gap
            kept = piece if capture is None else piece[:capture]
            if fate < 0.1:
                kept = kept[:rng.randrange(len(kept) + 1)]
            seq = None if i % 3 == 0 else (off + 1000) % (1 << 32)
            if fate < 0.14 and off >= 5:
                back = rng.randrange(1, 6)  # retransmitted bytes before the new ones
                out.append(Chunk(d, writes_bytes(writes, d, off - back, off) + kept,
                                 back + len(piece), off - back, 1000 + i, 7 + d, seq))
                continue
            out.append(Chunk(d, kept, len(piece), off, 1000 + i, 7 + d, seq))
    return out


def writes_bytes(writes: list[tuple[int, bytes]], d: int, start: int, end: int) -> bytes:
    return b"".join(w for dd, w in writes if dd == d)[start:end]


# -- the comparison ------------------------------------------------------------------------

def compare(old, chunks: list[Chunk], side: bool | None) -> int:
    return same_run(lambda: old.Http2Parser(side), lambda: Http2Parser(side), old.STATS,
                    STATS, chunks, "closed", extra=STATE)


def test_random_connections_give_identical_output(old):
    rng = random.Random(13)
    records = 0
    for k in range(STREAMS):
        redact.REDACT = k % 2 == 0
        try:
            writes = random_connection(rng)
            first = rng.randrange(len(writes)) if rng.random() < 0.15 else 0
            capture = rng.choice([None, 1024, 1024, 64])
            chunks = chunked(rng, writes, capture, holes=rng.random() < 0.5, first=first)
            records += compare(old, chunks, rng.choice([True, False, None]))
        finally:
            redact.REDACT = True
    assert records > STREAMS  # the streams made records, not only errors


def test_golden_connections_cut_holed_and_joined_midway_give_identical_output(old):
    rng = random.Random(2)
    conns = [c for proto in ("grpc",) for path in sorted((GOLDEN / proto).glob("*.json"))
             if not path.name.endswith(".expected.json")
             for c in load_capture(path)["connections"]]
    assert conns
    records = 0
    for k in range(60):
        conn = conns[k % len(conns)]
        writes = [(d, raw) for d, _, raw in conn]
        redact.REDACT = k % 2 == 1
        try:
            for side in (True, False):
                w = writes if side else [(1 - d, raw) for d, raw in writes]
                first = 0 if k < 8 else rng.randrange(len(w))
                chunks = chunked(rng, w, rng.choice([None, 1024, 300]), holes=k >= 4,
                                 first=first)
                records += compare(old, chunks, side if k % 3 else None)
        finally:
            redact.REDACT = True
    assert records > 100


def test_hpack_decoders_agree_block_by_block(old):
    """Fields, errors, misses and the dynamic table, on encoder output joined midway
    (unknown references), damaged, and with random table size updates."""
    rng = random.Random(7541)
    for _ in range(150):
        enc = hpack.Encoder()
        blocks = []
        for k in range(rng.randrange(1, 12)):
            if rng.random() < 0.1:
                enc.header_table_size = rng.choice([0, 64, 256, 4096])
            block = enc.encode(_req_headers(rng, k) if rng.random() < 0.5
                               else _resp_headers(rng, rng.random() < 0.3),
                               huffman=rng.random() < 0.6)
            if rng.random() < 0.1:
                i = rng.randrange(len(block))
                block = block[:i] + bytes([rng.randrange(256)]) + block[i + 1:]
            blocks.append(block)
        blocks = blocks[rng.randrange(len(blocks)):]  # joined midway: references unseen
        ref, new = old._decoder(), HpackDecoder()
        for block in blocks:
            try:
                want = ref.decode(block, raw=True)
            except (hpack.HPACKError, ValueError, IndexError):
                want = None
            try:
                got = new.decode(block)
            except ValueError:
                got = None
            assert got == (None if want is None else [(bytes(n), bytes(v)) for n, v in want])
            if want is None:
                break  # the parser starts that direction's table afresh
            assert new.misses == ref.header_table.misses
            assert new.table == list(ref.header_table.dynamic_entries)
            assert new.size == ref.header_table._current_size
            assert new.max_table_size == ref.header_table.maxsize
    assert UNKNOWN == old.UNKNOWN
