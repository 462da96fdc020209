"""The compiled memcached parser (agent/protocols/_memcached.pyx) against the Python one
it replaced (agent/protocols/memcached.py at BASELINE, loaded from git history):
identical records, exceptions, per-direction state and STATS on golden-derived and
random text, meta and binary streams, cut, prefixed, holed, retransmitted, with
redaction on and off; and the same answers from binary_request/binary_response, which
protocol inference uses.

ZT_EQUIV_STREAMS sets the number of streams per test (default sized for CI, a few
seconds); a failure names the seed that replays it."""

from __future__ import annotations

import struct
from random import Random

import pytest

from agent.protocols import _memcached, memcached

from . import equivalence as eq

# The last commit with the Python parser (memcached.py before it became an import shim).
BASELINE = eq.PYTHON_PARSERS
pytestmark = eq.needs_history(BASELINE)


@pytest.fixture(scope="module")
def baseline():
    return eq.load_baseline("memcached", BASELINE)


def _compare(baseline, side, chunks, rng: Random) -> str | None:
    redacting = rng.random() < 0.5
    return eq.compare(lambda: baseline.MemcachedParser(side),
                       lambda: memcached.MemcachedParser(side), baseline.STATS,
                       memcached.STATS, chunks, rng.choice(["closed", "", "timeout"]),
                       raises=True,
                       redacting=redacting)


def test_the_shim_exports_the_compiled_parser():
    assert memcached.MemcachedParser is _memcached.MemcachedParser
    assert memcached.STATS is _memcached.STATS
    assert _memcached.__file__.endswith(".so")


def test_golden_streams_cut_and_damaged(baseline):
    for seed, rng, side, chunks in eq.golden_runs("memcached"):
        diff = _compare(baseline, side, chunks, rng)
        assert diff is None, f"seed {seed}: {diff}"


# -- random text, meta and binary streams ---------------------------------------------
_KEYS = [b"k", b"user:1", b"card:4111111111111111", b"it's", b"$x", b"k" * 251, b"\xe9",
         b"k2", b"O1"]
_NUMS = [b"0", b"1", b"5", b"3", b"12", b"-1", b"x", b"4097", b"99999999999", b"123456789012"]


def _block(rng: Random, size: int) -> bytes:
    body = rng.choice([b"v" * size, b"4111111111111111"[:size].ljust(size, b"1")])
    if rng.random() < 0.1:
        body = body[:max(size - 1, 0)] if rng.random() < 0.5 else body + b"x"
    return body + b"\r\n"


def _text_command(rng: Random) -> bytes:
    k = rng.choice(_KEYS)
    r = rng.random()
    nr = b" noreply" if rng.random() < 0.15 else b""
    if r < 0.25:
        n = rng.choice([0, 1, 5, 30, 5000])
        ln = str(n).encode() if rng.random() > 0.1 else rng.choice(_NUMS)
        cmd = rng.choice([b"set", b"add", b"replace", b"append", b"prepend"])
        return cmd + b" " + k + b" 0 60 " + ln + nr + b"\r\n" + _block(rng, n)
    if r < 0.3:
        return b"cas " + k + b" 0 0 2 77" + nr + b"\r\nab\r\n"
    if r < 0.45:
        keys = b" ".join(rng.choice(_KEYS) for _ in range(rng.choice([1, 1, 2, 12])))
        return rng.choice([b"get ", b"gets ", b"gat 10 ", b"gats 10 "]) + keys + b"\r\n"
    if r < 0.55:
        return rng.choice([b"delete ", b"incr ", b"decr ", b"touch "]) + k + \
            rng.choice([b"", b" 1", b" 10"]) + nr + b"\r\n"
    if r < 0.8:
        flags = [rng.choice([b"q", b"O1", b"O2", b"k", b"v", b"T10", b"MA", b"C5", b"I", b"b"])
                 for _ in range(rng.randint(0, 3))]
        meta = rng.choice([b"mg", b"md", b"ma", b"me", b"mn", b"ms"])
        if meta == b"ms":
            n = rng.choice([0, 2, 5000])
            return b"ms " + k + b" " + str(n).encode() + b" " + b" ".join(flags) + b"\r\n" + \
                _block(rng, n)
        if meta == b"mn":
            return b"mn\r\n"
        return meta + b" " + k + (b" " + b" ".join(flags) if flags else b"") + b"\r\n"
    return rng.choice([b"version\r\n", b"stats\r\n", b"stats slabs\r\n", b"flush_all\r\n",
                       b"flush_all noreply\r\n", b"verbosity 1\r\n", b"quit\r\n", b"\r\n",
                       b"lru_crawler metadump all\r\n", b"bogus_cmd x\r\n", b"GET /\r\n",
                       b"set k 0", b"get k"])


def _text_reply(rng: Random) -> bytes:
    r = rng.random()
    if r < 0.25:
        out = b""
        for _ in range(rng.choice([0, 1, 1, 2])):
            n = rng.choice([1, 5, 5000])
            ln = str(n).encode() if rng.random() > 0.1 else rng.choice(_NUMS)
            out += b"VALUE " + rng.choice(_KEYS) + b" 0 " + ln + b"\r\n" + _block(rng, n)
        return out + rng.choice([b"END\r\n", b"END\r\n", b"SERVER_ERROR oops\r\n"])
    if r < 0.45:
        n = rng.choice([1, 2, 5000])
        return rng.choice([b"HD", b"HD O1", b"HD O2 kk", b"EN", b"NF", b"NS", b"EX", b"MN",
                           b"ME k info", b"HD kuser:1", b"VA " + str(n).encode() + b" O1"]) + \
            b"\r\n" + (_block(rng, n) if rng.random() < 0.3 else b"")
    if r < 0.75:
        return rng.choice([b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
                           b"TOUCHED", b"OK", b"ERROR", b"CLIENT_ERROR bad command line format",
                           b"CLIENT_ERROR bad data chunk", b"SERVER_ERROR out of memory '4111",
                           b"VERSION 1.6.21", b"42", b"RESET"]) + b"\r\n"
    if r < 0.85:
        return b"STAT pid 1\r\nSTAT uptime 2\r\n" + rng.choice([b"END\r\n", b"ERROR\r\n", b""])
    return rng.choice([b"key=a exp=-1\r\nEND\r\n", b"garbage\r\n", b"\x00\x01", b"STORED",
                       b"VALUE k 0 3\r\nab", b"\r\n"])


def _bin(rng: Random, magic: int) -> bytes:
    op = rng.choice([0x00, 0x01, 0x09, 0x0A, 0x0C, 0x0D, 0x10, 0x11, 0x14, 0x1D, 0x21, 0x30])
    key = rng.choice([b"", b"k1", b"nope", b"k" * 251]) if rng.random() < 0.8 else b""
    extras = bytes(rng.choice([0, 4, 8, 20]))
    value = rng.choice([b"", b"v1", b"4111111111111111 secret", b"x" * 5000])
    status = 0 if magic == 0x80 or rng.random() < 0.6 else rng.choice([1, 2, 4, 0x81, 0x99])
    if magic == 0x81 and status:
        value = rng.choice([b"Not found", b"bad '4111111111111111'"])
    body = extras + key + value
    blen = len(body) if rng.random() > 0.05 else rng.choice([0, len(body) + 3, 1 << 31])
    head = struct.pack(">BBHBBHIIQ", magic, op, len(key), len(extras),
                       0 if rng.random() > 0.03 else 1, status, blen,
                       rng.choice([0, 1, 2, 7]), 0)
    return head + body


def _random_stream(rng: Random) -> list[tuple[int, bytes]]:
    out = []
    binary = rng.random() < 0.3
    if rng.random() < 0.03:
        out.append((0, b"mn\r\n" * rng.randint(250, 300)))  # more than MAX_PENDING
    for _ in range(rng.randint(1, 12)):
        k = rng.choice([1, 1, 1, 2, 3])
        if binary:
            out.append((0, b"".join(_bin(rng, 0x80) for _ in range(k))))
            if rng.random() < 0.9:
                out.append((1, b"".join(_bin(rng, 0x81) for _ in range(rng.choice([k, 1])))))
        else:
            out.append((0, b"".join(_text_command(rng) for _ in range(k))))
            if rng.random() < 0.9:
                out.append((1, b"".join(_text_reply(rng) for _ in range(rng.choice([k, 1, 2])))))
    return out


def test_random_text_meta_and_binary_streams(baseline):
    for seed, rng, side, chunks in eq.random_runs(_random_stream):
        diff = _compare(baseline, side, chunks, rng)
        assert diff is None, f"seed {seed}: {diff}"


def test_binary_header_checks_agree(baseline):
    rng = Random(7)
    for _ in range(eq.STREAMS * 10):
        magic = rng.choice([0x80, 0x81, 0x80, 0x00])
        data = _bin(rng, magic if magic else 0x80)
        if not magic or rng.random() < 0.3:
            data = bytes(rng.randrange(256) if rng.random() < 0.2 else b for b in data)
        data = data[:rng.choice([len(data), len(data), 23, 24, 12])]
        assert memcached.binary_request(data) == baseline.binary_request(data), data
        assert memcached.binary_response(data) == baseline.binary_response(data), data
