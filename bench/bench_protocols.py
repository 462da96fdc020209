"""Parsing throughput per protocol, in records per second on one core, from golden streams.

    .venv/bin/python bench/bench_protocols.py [--seconds 3] [--capture 1024] [--mode M] [proto ...]

Golden connections (tests/protocols/golden/<proto>/) are replayed from the client's
side with chunks built beforehand; the figure is records produced per second of CPU
time (`time.process_time`, so other load on the machine does not count) spent in
`feed` + `flush`, best of three rounds.

- `--mode steady` (default): each connection's set-up (handshake, start-up, auth) is
  fed once, then its request/response exchanges are replayed over and over on the
  same connection, offsets continuing: the throughput of long-lived connections.
- `--mode conn`: each golden connection is replayed whole as a fresh connection, set-up
  included (curl and psql open one connection per command).

`--capture N` keeps only N bytes of each chunk, as the probes do (default: 1024).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.protocols.base import Chunk  # noqa: E402
from agent.protocols.registry import new_parser  # noqa: E402
from tests.protocols.golden import captures, chunks, load_capture  # noqa: E402

TARGETS = {"http": 100_000, "redis": 150_000}
DEFAULT_TARGET = 30_000


def workload(proto: str, capture: int | None, mode: str) -> list[tuple[str, str, list]]:
    """(protocol, transport, chunks) of every golden connection of `proto`."""
    out = []
    for path in captures(proto):
        doc = load_capture(path)
        for conn in doc["connections"]:
            cks = chunks(conn, capture=capture)
            if mode == "steady":
                cks = steady(doc["protocol"], doc["transport"], cks)
            out.append((doc["protocol"], doc["transport"], cks))
    return out


def _new(proto: str, transport: str):
    return new_parser(proto, True, transport) if proto == "dns" else new_parser(proto, True)


def steady(proto: str, transport: str, cks: list[Chunk], reps: int = 200) -> list[Chunk]:
    """Set-up chunks once, then the exchanges `reps` times with offsets continuing."""
    p = _new(proto, transport)
    first = [None, None]
    for c in cks:
        for r in p.feed(c):
            for d, m in ((0, r.request), (1, r.response)):
                if m is not None and first[d] is None:
                    first[d] = m.offset
    if transport == "udp":
        # Datagrams: the same flow asking again and again.
        return [Chunk(c.direction, c.data, c.size, c.offset + k * 65536, c.ts_ns + k * 10_000_000,
                      c.tid, None) for k in range(reps) for c in cks]
    if None in first:
        return cks
    setup = [c for c in cks if c.offset < first[c.direction]]
    body = [c for c in cks if c.offset >= first[c.direction]]
    if any(c.offset == first[c.direction] for c in body) is False:
        return cks
    span = [0, 0]
    for c in body:
        span[c.direction] = max(span[c.direction], c.offset + c.size - first[c.direction])
    out = list(setup)
    for k in range(reps):
        for c in body:
            shift = k * span[c.direction]
            seq = None if c.seq is None else (c.seq + shift) % (1 << 32)
            out.append(Chunk(c.direction, c.data, c.size, c.offset + shift,
                             c.ts_ns + k * 10_000_000, c.tid, seq))
    return out


def one_round(work: list, budget: float) -> tuple[int, float]:
    records = 0
    spent = 0.0
    while spent < budget:
        for proto, transport, cks in work:
            t0 = time.process_time()
            p = _new(proto, transport)
            feed = p.feed
            n = 0
            for c in cks:
                n += len(feed(c))
            n += len(p.flush("closed"))
            spent += time.process_time() - t0
            records += n
    return records, spent


def bench(proto: str, seconds: float, capture: int | None, mode: str) -> float:
    work = workload(proto, capture, mode)
    if not work:
        return 0.0
    best = 0.0
    gc.collect()
    for _ in range(3):
        records, spent = one_round(work, seconds / 3)
        best = max(best, records / spent)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("protocols", nargs="*", default=["http", "redis", "dns", "postgresql",
                                                     "mysql", "grpc"])
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU time per protocol")
    ap.add_argument("--capture", type=int, default=1024,
                    help="bytes kept per chunk (0: whole chunks)")
    ap.add_argument("--mode", choices=("steady", "conn"), default="steady")
    args = ap.parse_args()
    capture = args.capture or None
    print(f"mode={args.mode} capture={capture or 'whole'}")
    print(f"{'protocol':<12}{'records/s':>12}{'target':>10}  ok")
    for proto in args.protocols:
        if not (ROOT / "tests/protocols/golden" / proto).is_dir():
            continue
        rate = bench(proto, args.seconds, capture, args.mode)
        target = TARGETS.get(proto, DEFAULT_TARGET)
        print(f"{proto:<12}{rate:>12,.0f}{target:>10,}  {'yes' if rate >= target else 'NO'}")


if __name__ == "__main__":
    main()
