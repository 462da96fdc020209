"""Parsing throughput per protocol, in records per second on one core, from golden streams.

    .venv/bin/python bench/bench_protocols.py [--seconds 2] [--capture 1024] [proto ...]

Each golden connection (tests/protocols/golden/<proto>/) is replayed as many fresh
connections as fit in the time budget, from the client's side, with chunks built
beforehand; the figure is records produced / seconds spent in `feed` + `flush` (best
of three rounds).  `--capture N` keeps only N bytes of each chunk, as the probes do.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.protocols.registry import new_parser  # noqa: E402
from tests.protocols.golden import captures, chunks, load_capture  # noqa: E402

TARGETS = {"http": 100_000, "redis": 150_000}
DEFAULT_TARGET = 30_000


def workload(proto: str, capture: int | None) -> list[tuple[str, str, list]]:
    """(protocol, transport, chunks) of every golden connection of `proto`."""
    out = []
    for path in captures(proto):
        doc = load_capture(path)
        for conn in doc["connections"]:
            out.append((doc["protocol"], doc["transport"], chunks(conn, capture=capture)))
    return out


def one_round(work: list, budget: float) -> tuple[int, float]:
    records = 0
    spent = 0.0
    while spent < budget:
        for proto, transport, cks in work:
            t0 = time.process_time()
            p = new_parser(proto, True, transport) if proto == "dns" else new_parser(proto, True)
            feed = p.feed
            n = 0
            for c in cks:
                n += len(feed(c))
            n += len(p.flush("closed"))
            spent += time.process_time() - t0
            records += n
    return records, spent


def bench(proto: str, seconds: float, capture: int | None) -> float:
    work = workload(proto, capture)
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
                                                     "mysql", "http2"])
    ap.add_argument("--seconds", type=float, default=2.0, help="time budget per protocol")
    ap.add_argument("--capture", type=int, default=None,
                    help="bytes kept per chunk (default: whole chunks)")
    args = ap.parse_args()
    print(f"{'protocol':<12}{'records/s':>12}{'target':>10}  ok")
    for proto in args.protocols:
        if not (ROOT / "tests/protocols/golden" / proto).is_dir():
            continue
        rate = bench(proto, args.seconds, args.capture)
        target = TARGETS.get(proto, DEFAULT_TARGET)
        print(f"{proto:<12}{rate:>12,.0f}{target:>10,}  {'yes' if rate >= target else 'NO'}")


if __name__ == "__main__":
    main()
