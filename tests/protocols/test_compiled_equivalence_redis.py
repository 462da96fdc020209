"""The compiled Redis parser (agent/protocols/_redis.pyx) against the Python one it
replaced (agent/protocols/redis.py at BASELINE, loaded from git history): identical
records, exceptions, per-direction state and STATS on golden-derived and random
RESP2/RESP3 streams, cut, prefixed, holed, retransmitted, with redaction on and off.

ZT_EQUIV_STREAMS sets the number of streams per test (default sized for CI, a few
seconds); a failure names the seed that replays it."""

from __future__ import annotations

from random import Random

import pytest

from agent.protocols import _redis, redis

from . import equivalence as eq

# The last commit with the Python parser (redis.py before it became an import shim).
BASELINE = eq.PYTHON_PARSERS
pytestmark = eq.needs_history(BASELINE)


@pytest.fixture(scope="module")
def baseline():
    return eq.load_baseline("redis", BASELINE)


def _compare(baseline, side, chunks, rng: Random) -> str | None:
    redacting = rng.random() < 0.5
    return eq.compare(lambda: baseline.RedisParser(side), lambda: redis.RedisParser(side),
                       baseline.STATS, redis.STATS, chunks,
                       rng.choice(["closed", "", "timeout"]), extra=("subscribed",),
                       # the Python parser raised on a non-UTF-8 subscribe reply
                       fixed=("UnicodeDecodeError",), raises=True,
                       redacting=redacting)


def test_the_shim_exports_the_compiled_parser():
    assert redis.RedisParser is _redis.RedisParser and redis.STATS is _redis.STATS
    assert _redis.__file__.endswith(".so")


def test_golden_streams_cut_and_damaged(baseline):
    for seed, rng, side, chunks in eq.golden_runs("redis"):
        diff = _compare(baseline, side, chunks, rng)
        assert diff is None, f"seed {seed}: {diff}"


# -- random RESP -----------------------------------------------------------------------
_COMMANDS = [b"GET", b"SET", b"get", b"MGET", b"HSET", b"LRANGE", b"PING", b"AUTH",
             b"SUBSCRIBE", b"PSUBSCRIBE", b"ssubscribe", b"UNSUBSCRIBE", b"CONFIG", b"client",
             b"XINFO", b"EVAL", b"SELECT", b"HELLO", b"DEL", b"\xffsubscribe", b"", b"x" * 80]
_ARGS = [b"k", b"user:1", b"GET", b"maxmemory", b"*", b"0", b"\xe9t\xe9", b"a b", b"x" * 70,
         b"message", b"subscribe", b"chan"]
_NUMS = [b"0", b"1", b"2", b"3", b"-1", b"-2", b" 2", b"+2", b"1_0", b"x", b"", b"2 ",
         b"99999999999999999999999", b"-99999999999999999999", b"4097", b"65", b"\xb2"]


def _bulk(rng: Random, data: bytes, t: bytes = b"$") -> bytes:
    n = len(data)
    if rng.random() < 0.1:
        n = rng.choice([n + 1, max(n - 1, 0), -1, 5000, 70000])
    if rng.random() < 0.05:
        return t + rng.choice(_NUMS) + b"\r\n" + data + b"\r\n"
    return t + str(n).encode() + b"\r\n" + data + b"\r\n"


def _command(rng: Random) -> bytes:
    r = rng.random()
    if r < 0.08:
        # inline
        return rng.choice([b"PING", b"ping x y z", b"SET k v", b"AUTH pw", b"HELLO 3",
                           b"Quit"]) + rng.choice([b"\r\n", b"\n"])
    args = [rng.choice(_COMMANDS)] + [rng.choice(_ARGS) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.1:
        args.append(bytes(rng.randrange(256) for _ in range(rng.choice([10, 300, 5000]))))
    count = str(len(args)).encode() if rng.random() > 0.05 else rng.choice(_NUMS)
    return b"*" + count + b"\r\n" + b"".join(_bulk(rng, a) for a in args)


def _value(rng: Random, depth: int = 0) -> bytes:
    r = rng.random()
    if depth < 3 and r < 0.25:
        t = rng.choice([b"*", b"*", b"%", b"~", b">", b"|"])
        n = rng.randint(0, 3)
        k = n * 2 if t in (b"%", b"|") else n
        count = str(n).encode() if rng.random() > 0.05 else rng.choice(_NUMS)
        head = t + count + b"\r\n"
        if t == b">" or (t == b"*" and rng.random() < 0.3):
            kind = rng.choice([b"message", b"pmessage", b"smessage", b"subscribe",
                               b"psubscribe", b"unsubscribe", b"other"])
            return head + _bulk(rng, kind) + b"".join(_value(rng, depth + 1)
                                                      for _ in range(max(k - 1, 0)))
        return head + b"".join(_value(rng, depth + 1) for _ in range(k))
    r = rng.random()
    if r < 0.2:
        return _bulk(rng, rng.choice(_ARGS + [b"", b"v" * 100, b"w" * 3000]),
                     rng.choice([b"$", b"$", b"=", b"!"]))
    if r < 0.3:
        return b"$-1\r\n"
    if r < 0.5:
        return rng.choice([b"+OK", b"+QUEUED", b"+subscribe", b"-ERR wrong type",
                           b"-WRONGTYPE Operation", b"-\xff\xfe", b":1", b":-7", b"_",
                           b"#t", b",3.14", b"(123456789012345678901234", b"+"]) + b"\r\n"
    if r < 0.55:
        return rng.choice([b"?garbage\r\n", b"\x00\x01", b"PING\r\n", b"\r\n",
                           b"+no end", b"$3\r\nab", b"*2\r\n$1\r\na\r\n"])
    return b"+OK\r\n"


def _random_stream(rng: Random) -> list[tuple[int, bytes]]:
    out = []
    if rng.random() < 0.03:
        # More commands in flight than the parser keeps (MAX_PENDING): evictions.
        out.append((0, b"*1\r\n$4\r\nPING\r\n" * rng.randint(250, 300)))
    for _ in range(rng.randint(1, 12)):
        k = rng.choice([1, 1, 1, 2, 3])
        out.append((0, b"".join(_command(rng) for _ in range(k))))
        if rng.random() < 0.9:
            out.append((1, b"".join(_value(rng) for _ in range(rng.choice([k, k, 1, k + 1])))))
    return out


def test_random_resp_streams(baseline):
    for seed, rng, side, chunks in eq.random_runs(_random_stream):
        diff = _compare(baseline, side, chunks, rng)
        assert diff is None, f"seed {seed}: {diff}"


def test_the_comparison_sees_a_difference(baseline):
    """The harness is not vacuous: a parser that drops the last record differs."""
    class Lossy(redis.RedisParser):
        def feed(self, chunk):
            return super().feed(chunk)[:-1]

    rng = Random(1)
    chunks = eq.chunk_stream(rng, [(0, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), (1, b"$1\r\nv\r\n")],
                          0.0)
    assert eq.compare(lambda: baseline.RedisParser(True), lambda: Lossy(True), baseline.STATS,
                   redis.STATS, chunks) is not None


def test_a_non_utf8_subscribe_reply_is_a_push_not_an_exception():
    """The Python parser decoded a reply's first element strictly and stopped parsing
    the connection on `\\xffsubscribe`; the compiled one reads it as Latin-1."""
    from agent.protocols.base import Chunk

    p = redis.RedisParser(True)
    req = b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"
    rep = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
    bad = b"*3\r\n$10\r\n\xffsubscribe\r\n$1\r\nc\r\n:2\r\n"
    recs = []
    off = [0, 0]
    for i, (d, data) in enumerate([(0, req), (1, rep), (1, bad)]):
        recs += p.feed(Chunk(d, data, len(data), off[d], i, 7, None))
        off[d] += len(data)
    assert [r.operation for r in recs] == ["SUBSCRIBE"]
