"""Differential testing of the compiled parsers against the Python modules they replaced:
the one harness of tests/protocols/test_compiled_equivalence_*.py.

The Python module is loaded from git history at a pinned commit (`git show
COMMIT:agent/protocols/NAME.py`), with the modules of that commit it imports relatively
(base.py, sqlinfo.py), as the package `_zt_baseline_<commit>`; `redact` is this tree's
module, so one switch turns redaction on or off for both.  A copy of the tree without
.git (scripts/asan-tests.sh) names the repository in ZT_SOURCE_REPO; with no history
at all the tests skip.

Both parsers are fed the same chunks and must give the same records (every field,
message by message), raise the same exceptions (or none, unless a test allows them),
keep the same state after every chunk and after the flush (per direction: buffered
bytes, base, next, skip, in sync, preface looked for; per connection: request
direction, closed, the doubt a loss casts, queue length, and what a protocol names in
`extra`) and count the same STATS.

Streams come from seeded `random.Random`s, so a failure names its seed and replays:
`chunk_stream` cuts a two-way byte stream into chunks the way the capture does and
damages it the way the kernel ring does (captured prefixes, lost chunks, retransmitted
bytes, repeated chunks, a connection seen midway); `chunked` cuts at fixed sizes with
lost, cut-short and retransmitted pieces; `golden_chunks` and `reshuffled` start from
the golden captures.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random

import pytest

from agent.protocols import redact
from agent.protocols.base import Chunk

from .golden import captures, load_capture

ROOT = Path(__file__).resolve().parents[2]
# The last commit with the Python Redis, memcached, PostgreSQL, MySQL and DNS parsers
# (and HTTP/2's, which PYTHON_HTTP2 pins as the last before it was compiled).
PYTHON_PARSERS = "cc5352766e68819eadd277b9e0a107ea9f62f5a5"
PYTHON_HTTP2 = "fbaf807f0517cd1cf2ef01bc2ba5b24039b776d4"
# Streams per test of the Redis and memcached tests (ZT_EQUIV_STREAMS; default sized for
# CI, a few seconds).
STREAMS = int(os.environ.get("ZT_EQUIV_STREAMS", "700"))
# Conversations per protocol and setting of the SQL and DNS tests (ZT_EQUIV_EXAMPLES to
# raise it).
EXAMPLES = int(os.environ.get("ZT_EQUIV_EXAMPLES", "400"))
# Skip counts past this are clamped by the compiled parsers (such lengths never end).
BIG_SKIP = 1 << 59


def source_repo() -> str:
    """The git repository holding this tree's history."""
    return os.environ.get("ZT_SOURCE_REPO", str(ROOT))


def have_commit(commit: str) -> bool:
    try:
        r = subprocess.run(["git", "-C", source_repo(), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True)
    except OSError:
        return False
    return r.returncode == 0


def needs_history(commit: str) -> pytest.MarkDecorator:
    """Skip marker for a test module that loads a baseline of `commit`."""
    return pytest.mark.skipif(not have_commit(commit),
                              reason=f"git history without {commit[:12]} (shallow clone or "
                                     "a copy of the tree: set ZT_SOURCE_REPO)")


def _git_show(commit: str, path: str) -> str | None:
    r = subprocess.run(["git", "-C", source_repo(), "show", f"{commit}:{path}"],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def load_baseline(module: str, commit: str) -> types.ModuleType:
    """agent/protocols/`module`.py as of `commit`, with that commit's modules it imports
    relatively (this tree's redact)."""
    pkg_name = f"_zt_baseline_{commit[:12]}"
    pkg = sys.modules.get(pkg_name)
    if pkg is None:
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = []
        sys.modules[pkg_name] = pkg
        sys.modules[f"{pkg_name}.redact"] = redact
        pkg.redact = redact
    full = f"{pkg_name}.{module}"
    if full in sys.modules:
        return sys.modules[full]
    path = f"agent/protocols/{module}.py"
    src = _git_show(commit, path)
    if src is None:
        raise FileNotFoundError(f"{commit}:{path}")
    # What it imports from its own package comes from the same commit, first.
    for names in re.findall(r"^from \.(\w*) import \(?([\w, ]*)", src, re.M):
        for dep in [names[0]] if names[0] else [n.strip() for n in names[1].split(",")]:
            if dep != "redact" and f"{pkg_name}.{dep}" not in sys.modules:
                load_baseline(dep, commit)
    mod = types.ModuleType(full)
    mod.__package__ = pkg_name
    mod.__file__ = f"{commit}:{path}"
    sys.modules[full] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    setattr(pkg, module, mod)
    return mod


# -- comparison -------------------------------------------------------------------------

def _msg(m) -> tuple | None:
    if m is None:
        return None
    return (m.offset, m.size, m.start_ns, m.end_ns, m.tid, m.end_tid, m.seq)


def record_tuple(r) -> tuple:
    """Every field of a record (messages as tuples), comparable across the two modules'
    Record and Message classes."""
    return (type(r).__name__, r.protocol, _msg(r.request), _msg(r.response), r.operation,
            r.status, r.status_code, r.error, r.attributes, r.trace_headers, r.incomplete)


Extra = str | Callable[[object], object]


def parser_state(p, extra: tuple[Extra, ...] = ()) -> tuple:
    """What a parser keeps between chunks, as far as both implementations show it;
    `extra`: attribute names, or functions of the parser, a protocol adds."""
    streams = tuple((s.buf, s.base, s.next, min(s.skip, BIG_SKIP), s.synced, s.started)
                    for s in p.streams)
    pending = len(p.pending) if hasattr(p, "pending") else None
    return (streams, pending, p.req_dir, p.closed, p.uncertain,
            tuple(x(p) if callable(x) else getattr(p, x) for x in extra))


def _call(fn: Callable, arg) -> tuple:
    try:
        return ("ok", [record_tuple(r) for r in fn(arg)])
    except Exception as exc:  # noqa: BLE001 - both must fail alike
        return ("raised", type(exc).__name__)


def run(make_a: Callable, make_b: Callable, stats_a: Counter, stats_b: Counter,
        chunks: list[Chunk], reason: str = "closed", extra: tuple[Extra, ...] = (),
        fixed: tuple[str, ...] = (), raises: bool = False,
        redacting: bool | None = None) -> tuple[str | None, int]:
    """Feed `chunks` to parsers make_a() (the baseline) and make_b() and flush them:
    (None, records) if they agreed on everything, else (what differed first, records).
    `raises`: both raising the same exception is agreement (the stream stops there);
    `fixed`: exceptions of the baseline that b fixed on purpose: a stream where only a
    raises one stops there, counted as agreeing; `redacting`: redaction on or off for
    this run (default: as it is)."""
    saved = redact.REDACT
    if redacting is not None:
        redact.REDACT = redacting
    try:
        return _run(make_a, make_b, stats_a, stats_b, chunks, reason, extra, fixed, raises)
    finally:
        redact.REDACT = saved


def _run(make_a: Callable, make_b: Callable, stats_a: Counter, stats_b: Counter,
         chunks: list[Chunk], reason: str, extra: tuple[Extra, ...], fixed: tuple[str, ...],
         raises: bool) -> tuple[str | None, int]:
    a, b = make_a(), make_b()
    before_a, before_b = Counter(stats_a), Counter(stats_b)
    n = 0
    for i, c in enumerate(chunks):
        ra, rb = _call(a.feed, c), _call(b.feed, c)
        if ra[0] == "raised" and ra[1] in fixed and rb[0] == "ok":
            return None, n
        if ra != rb or (ra[0] == "raised" and not raises):
            return f"chunk {i} {c!r}: records differ\n  a={ra}\n  b={rb}", n
        if ra[0] == "raised":
            break
        n += len(ra[1])
        sa, sb = parser_state(a, extra), parser_state(b, extra)
        if sa != sb:
            return f"chunk {i} {c!r}: state differs\n  a={sa}\n  b={sb}", n
    else:
        ra, rb = _call(a.flush, reason), _call(b.flush, reason)
        if ra != rb or ra[0] == "raised":
            return f"flush: records differ\n  a={ra}\n  b={rb}", n
        n += len(ra[1])
        sa, sb = parser_state(a, extra), parser_state(b, extra)
        if sa != sb:
            return f"after flush: state differs\n  a={sa}\n  b={sb}", n
    da, db = Counter(stats_a), Counter(stats_b)
    da.subtract(before_a)
    db.subtract(before_b)
    da, db = +da, +db
    if da != db:
        return f"STATS differ: a={dict(da)} b={dict(db)}", n
    return None, n


def compare(*args, **kw) -> str | None:
    """What differed first between the two parsers on the chunks (see `run`), or None."""
    return run(*args, **kw)[0]


def same_run(*args, **kw) -> int:
    """Assert the two parsers agree (see `run`); the number of records."""
    diff, n = run(*args, **kw)
    assert diff is None, diff
    return n


# -- streams ----------------------------------------------------------------------------

def chunk_stream(rng: Random, stream: list[tuple[int, bytes]], damage: float = 0.3,
                 capture: int | None = None) -> list[Chunk]:
    """Chunks of a two-way stream of (direction, bytes) writes, offsets counted per
    direction.  Writes may be split further; with probability `damage` per chunk it is
    damaged: a captured prefix only, lost, sent again from a few bytes back, or
    repeated.  Timestamps mostly grow (sometimes stand still or step back), thread ids
    and TCP sequence numbers vary."""
    full = [b"", b""]
    segs: list[tuple[int, int, int]] = []  # (direction, offset, size)
    for d, data in stream:
        off = len(full[d])
        full[d] += data
        if not data:
            continue
        cut = rng.choice([len(data)] * 4 + [1, 2, 3, 5, 8, 16, rng.randint(1, 64)])
        # Long writes in pieces of at least ~1/64 of them: tiny pieces of 5 000 bytes
        # would only cost time, the cuts at every place are what short writes test.
        cut = max(cut, len(data) // 64)
        for j in range(0, len(data), max(cut, 1)):
            segs.append((d, off + j, min(cut, len(data) - j)))
    if segs and rng.random() < 0.1:
        del segs[:rng.randint(1, min(3, len(segs)))]  # connection seen midway
    seq0 = [rng.choice([None, 1000, (1 << 32) - 7]), rng.choice([None, 50000])]
    out: list[Chunk] = []
    ts = 1_700_000_000_000_000_000
    for d, off, size in segs:
        ts += rng.choice([1000, 1000, 1000, 0, -500])
        tid = rng.choice([100 + d, 100 + d, 7])
        seq = None if seq0[d] is None else (seq0[d] + off) % (1 << 32)
        fate = "keep" if rng.random() >= damage else rng.choice(
            ["prefix", "prefix", "drop", "back", "again"])
        if fate == "drop":
            continue
        if fate == "back" and off > 0:
            k = min(off, rng.randint(1, 8))
            off -= k
            size += k
            seq = None if seq is None else (seq - k) % (1 << 32)
        data = full[d][off:off + size]
        kept = len(data) if capture is None else min(len(data), capture)
        if fate == "prefix":
            kept = rng.randint(0, len(data))
        out.append(Chunk(d, data[:kept], size, off, ts, tid, seq))
        if fate == "again":
            out.append(Chunk(d, data[:kept], size, off, ts, tid, seq))
    return out


def golden_chunks(rng: Random, conn: list[tuple[int, int, bytes]], server_side: bool
                  ) -> list[Chunk]:
    """A golden connection (as recorded: direction, ts, bytes) cut and damaged; from the
    server's side directions are swapped."""
    stream = [((1 - d) if server_side else d, data) for d, _ts, data in conn]
    if rng.random() < 0.2:
        # A byte changed somewhere: garbage where a frame was.
        i = rng.randrange(len(stream))
        d, data = stream[i]
        if data:
            k = rng.randrange(len(data))
            data = data[:k] + bytes([rng.randrange(256)]) + data[k + 1:]
            stream[i] = (d, data)
    damage = rng.choice([0.0, 0.0, 0.05, 0.2, 0.5])
    capture = rng.choice([None, None, 1024, rng.randint(1, 300)])
    return chunk_stream(rng, stream, damage, capture)


def golden_runs(proto: str, streams: int = STREAMS
                ) -> Iterator[tuple[int, Random, bool | None, list[Chunk]]]:
    """(seed, rng, side, chunks) of `streams` golden connections of `proto` cut and
    damaged (`golden_chunks`), seen from the client, the server or an unknown side."""
    conns = [c for p in captures(proto) for c in load_capture(p)["connections"]]
    assert conns
    for seed in range(streams):
        rng = Random(seed)
        conn = rng.choice(conns)
        server_side = rng.random() < 0.3
        side = rng.choice([not server_side, not server_side, None])
        yield seed, rng, side, golden_chunks(rng, conn, server_side)


def random_runs(make: Callable[[Random], list[tuple[int, bytes]]], streams: int = STREAMS
                ) -> Iterator[tuple[int, Random, bool | None, list[Chunk]]]:
    """(seed, rng, side, chunks) of `streams` streams make(rng) (seeds from 10**6),
    sometimes from the server's side, cut and damaged (`chunk_stream`)."""
    for seed in range(10**6, 10**6 + streams):
        rng = Random(seed)
        stream = make(rng)
        if rng.random() < 0.2:
            stream = [(1 - d, b) for d, b in stream]
        side = rng.choice([True, True, False, None])
        chunks = chunk_stream(rng, stream, rng.choice([0.0, 0.1, 0.3]),
                              rng.choice([None, None, 1024, rng.randint(1, 200)]))
        yield seed, rng, side, chunks


def chunked(rnd: random.Random, stream: list[tuple[int, bytes]], capture: int | None,
            seq: bool, noise: float) -> Iterator[Chunk]:
    """Pieces of a two-way stream as chunks: cut, kept to `capture` bytes, and with
    probability `noise` each lost, cut short, or sent again (overlapping bytes)."""
    offs = [0, 0]
    ts = 1_000_000
    for d, data in stream:
        cut = rnd.choice([3, 7, 16, 64, 500, 4096, 1 << 20])
        for j in range(0, max(len(data), 1), cut):
            piece = data[j:j + cut]
            ts += rnd.randint(0, 3)  # equal timestamps happen (one syscall, two reads)
            fate = rnd.randrange(1, 4) if rnd.random() < noise else 0
            if fate == 1:
                offs[d] += len(piece)  # lost
                continue
            if fate == 2 and offs[d] >= 5:
                offs[d] -= rnd.randint(1, 5)  # retransmitted bytes
            kept = piece if capture is None else piece[:capture]
            if fate == 3:
                kept = kept[:rnd.randint(0, len(kept))]  # cut short
            yield Chunk(d, kept, len(piece), offs[d], ts, 7 + d,
                        (offs[d] * 3 + 11) % (1 << 32) if seq else None)
            offs[d] += len(piece)


def golden_messages(proto: str) -> list[list[tuple[int, bytes]]]:
    """The golden connections of `proto` as (direction, bytes) writes."""
    return [[(d, data) for d, _ts, data in conn]
            for path in captures(proto) for conn in load_capture(path)["connections"]]


def reshuffled(rnd: random.Random, conns: list[list[tuple[int, bytes]]]) -> list[tuple[int, bytes]]:
    """A golden connection with syscalls dropped, repeated, borrowed from another
    connection, or with a few bytes changed."""
    out = []
    for d, data in rnd.choice(conns):
        r = rnd.random()
        if r < 0.05:
            continue
        if r < 0.10:
            out.append((d, data))
        elif r < 0.15:
            out.append(rnd.choice(rnd.choice(conns)))
        if r > 0.9 and data:
            b = bytearray(data)
            for _ in range(rnd.randint(1, 3)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            data = bytes(b)
        out.append((d, data))
    return out
