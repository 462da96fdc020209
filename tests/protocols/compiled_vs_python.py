"""Differential testing of a compiled parser against the Python module it replaced.

The Python module is loaded from git history at a pinned commit (`git show
COMMIT:agent/protocols/NAME.py`), together with the `base.py` of that commit, as the
package `_zt_baseline_<commit>`; `redact` is this tree's module, so one switch turns
redaction on or off for both.  Both parsers are fed the same chunks and must give the
same records (every field, message by message), raise the same exceptions, keep the
same per-direction state (buffered bytes, base, next, skip, in sync) and count the same
STATS.

Streams come from a seeded `random.Random`, so a failure names its seed and replays;
`chunk_stream` cuts a two-way byte stream into chunks the way the capture does and
damages it the way the kernel ring does (captured prefixes, lost chunks, retransmitted
bytes, repeated chunks, a connection seen midway).
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from random import Random

from agent.protocols import redact
from agent.protocols.base import Chunk

ROOT = Path(__file__).resolve().parents[2]
# Skip counts past this are clamped by the compiled parsers (such lengths never end).
BIG_SKIP = 1 << 59


def have_commit(commit: str) -> bool:
    r = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                       capture_output=True)
    return r.returncode == 0


def load_baseline(module: str, commit: str) -> types.ModuleType:
    """agent/protocols/`module`.py as of `commit`, with that commit's base.py."""
    pkg_name = f"_zt_baseline_{commit[:12]}"
    pkg = sys.modules.get(pkg_name)
    if pkg is None:
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = []
        sys.modules[pkg_name] = pkg
        sys.modules[f"{pkg_name}.redact"] = redact
        pkg.redact = redact
    for name in ("base", module):
        full = f"{pkg_name}.{name}"
        if full in sys.modules:
            continue
        path = f"agent/protocols/{name}.py"
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"],
                             capture_output=True, text=True, check=True).stdout
        mod = types.ModuleType(full)
        mod.__package__ = pkg_name
        mod.__file__ = f"{commit}:{path}"
        sys.modules[full] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)
        setattr(pkg, name, mod)
    return sys.modules[f"{pkg_name}.{module}"]


def _msg(m) -> tuple | None:
    if m is None:
        return None
    return (m.offset, m.size, m.start_ns, m.end_ns, m.tid, m.end_tid, m.seq)


def record_tuple(r) -> tuple:
    """Every field of a record (messages as tuples), comparable across the two modules'
    Record and Message classes."""
    return (type(r).__name__, r.protocol, _msg(r.request), _msg(r.response), r.operation,
            r.status, r.status_code, r.error, r.attributes, r.trace_headers, r.incomplete)


def parser_state(p, extra: tuple[str, ...] = ()) -> tuple:
    """What a parser keeps between chunks, as far as both implementations show it."""
    streams = tuple((s.buf, s.base, s.next, min(s.skip, BIG_SKIP), s.synced)
                    for s in p.streams)
    return (streams, len(p.pending), p.req_dir, p.closed,
            tuple(getattr(p, name) for name in extra))


def _call(fn: Callable, arg) -> tuple:
    try:
        return ("ok", [record_tuple(r) for r in fn(arg)])
    except Exception as exc:  # noqa: BLE001 - both must fail alike
        return ("raised", type(exc).__name__)


def compare(new_a: Callable, new_b: Callable, stats_a: Counter, stats_b: Counter,
            side: bool | None, chunks: list[Chunk], reason: str = "closed",
            extra: tuple[str, ...] = (), fixed: tuple[str, ...] = ()) -> str | None:
    """Feed `chunks` to parsers new_a(side) and new_b(side) and flush them; None if
    they agreed on everything, else what differed first.  `fixed`: exceptions of the
    baseline (a) that b fixed on purpose: a stream where only a raises one stops there,
    counted as agreeing."""
    a, b = new_a(side), new_b(side)
    before_a, before_b = Counter(stats_a), Counter(stats_b)
    for i, c in enumerate(chunks):
        ra, rb = _call(a.feed, c), _call(b.feed, c)
        if ra[0] == "raised" and ra[1] in fixed and rb[0] == "ok":
            return None
        if ra != rb:
            return f"chunk {i} {c!r}: records differ\n  a={ra}\n  b={rb}"
        if ra[0] == "raised":
            break
        sa, sb = parser_state(a, extra), parser_state(b, extra)
        if sa != sb:
            return f"chunk {i} {c!r}: state differs\n  a={sa}\n  b={sb}"
    else:
        ra, rb = _call(a.flush, reason), _call(b.flush, reason)
        if ra != rb:
            return f"flush: records differ\n  a={ra}\n  b={rb}"
    da, db = Counter(stats_a), Counter(stats_b)
    da.subtract(before_a)
    db.subtract(before_b)
    da, db = +da, +db
    if da != db:
        return f"STATS differ: a={dict(da)} b={dict(db)}"
    return None


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
