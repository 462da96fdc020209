"""A compiled parser of this tree against the Python module it replaced, side by side.

    .venv/bin/python bench/bench_compiled_vs_python.py [--rev REV] [--seconds 3] redis memcached

For each protocol, the parser this tree's registry builds (compiled: agent/protocols/
_NAME.pyx) and the Python parser of git revision REV (`git show REV:agent/protocols/
NAME.py`, loaded with that revision's base.py as tests/protocols/equivalence.py
does) replay the golden workloads of bench_protocols (steady with 1 KiB and whole
chunks, conn with 1 KiB), rounds alternating between the two so load on the machine
falls on both alike; the figure is records per CPU second (`time.process_time`), best
of `--rounds`.  REV defaults to the last commit with the Python Redis and memcached
parsers.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.protocols.registry import new_parser  # noqa: E402
from bench.bench_protocols import one_round, workload  # noqa: E402
from tests.protocols.equivalence import load_baseline  # noqa: E402

# The last commit where redis.py and memcached.py were the Python parsers.
PYTHON_REV = "cc5352766e68819eadd277b9e0a107ea9f62f5a5"
MODULES = {"redis": "redis", "memcached": "memcached", "http": "http1", "dns": "dns",
           "postgresql": "postgresql", "mysql": "mysql", "http2": "http2", "grpc": "http2"}
WORKLOADS = (("steady", 1024), ("steady", None), ("conn", 1024))


def compare(proto: str, rev: str, seconds: float, rounds: int) -> None:
    cur = type(new_parser(proto, True))
    old = getattr(load_baseline(MODULES[proto], rev), cur.__name__)
    print(f"{proto}: {cur.__module__}.{cur.__name__} against {rev[:12]} (Python); "
          f"records/s per CPU second, best of {rounds} alternating rounds")
    print(f"  {'workload':<34}{rev[:10]:>12}{'this tree':>12}{'x':>7}")
    for mode, capture in WORKLOADS:
        work = workload(proto, capture, mode)
        best = {"old": 0.0, "cur": 0.0}
        for _ in range(rounds):
            for key, cls in (("old", old), ("cur", cur)):
                gc.collect()
                records, spent = one_round(work, seconds / rounds,
                                           lambda _p, _t, c=cls: c(True))
                best[key] = max(best[key], records / spent)
        label = f"golden, {mode}, {f'{capture} B' if capture else 'whole'} chunks"
        print(f"  {label:<34}{best['old']:>12,.0f}{best['cur']:>12,.0f}"
              f"{best['cur'] / best['old']:>7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("protocols", nargs="*", default=["redis", "memcached"])
    ap.add_argument("--rev", default=PYTHON_REV, help="git revision of the Python parsers")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="CPU seconds per parser and workload")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for proto in args.protocols:
        compare(proto, args.rev, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
