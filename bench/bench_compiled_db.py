"""The compiled PostgreSQL, MySQL and DNS parsers against the Python ones of a git
revision, side by side in one run (rounds alternating, so load on the machine hits both).

    .venv/bin/python bench/bench_compiled_db.py [--rev REV] [--seconds 6] [proto ...]

Golden workloads as in bench_protocols.py (records per CPU second, best round):
steady and conn modes, 1 KiB capture.  REV defaults to the last revision whose
postgresql.py, mysql.py and dns.py were the Python parsers.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_protocols import one_round, workload  # noqa: E402

PINNED = "cc5352766e68819eadd277b9e0a107ea9f62f5a5"
CLASSES = {"postgresql": ("postgresql", "PostgresParser"),
           "mysql": ("mysql", "MySQLParser"), "dns": ("dns", "DnsParser")}


def baseline(rev: str, module: str) -> types.ModuleType:
    """agent/protocols/MODULE.py of `rev`, imported as agent.protocols._py_MODULE."""
    path = f"agent/protocols/{module}.py"
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(f"agent.protocols._py_{module}")
    mod.__package__ = "agent.protocols"
    mod.__file__ = f"{rev}:{path}"
    sys.modules[mod.__name__] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def maker(cls: type):
    def new(proto: str, transport: str):
        return cls(True, transport) if proto == "dns" else cls(True)
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("protocols", nargs="*", default=list(CLASSES))
    ap.add_argument("--rev", default=PINNED)
    ap.add_argument("--seconds", type=float, default=6.0, help="CPU time per workload")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"records/s per CPU second, best of {args.rounds} alternating rounds; "
          f"Python = {args.rev[:10]}")
    print(f"{'protocol':<12}{'mode':<8}{'Python':>10}{'compiled':>10}{'x':>7}")
    for proto in args.protocols:
        module, name = CLASSES[proto]
        old = maker(getattr(baseline(args.rev, module), name))
        new = maker(getattr(importlib.import_module(f"agent.protocols.{module}"), name))
        for mode in ("steady", "conn"):
            work = workload(proto, 1024, mode)
            best = {"old": 0.0, "new": 0.0}
            for _ in range(args.rounds):
                for key, make in (("old", old), ("new", new)):
                    gc.collect()
                    records, spent = one_round(work, args.seconds / args.rounds, make)
                    best[key] = max(best[key], records / spent)
            print(f"{proto:<12}{mode:<8}{best['old']:>10,.0f}{best['new']:>10,.0f}"
                  f"{best['new'] / best['old']:>7.2f}")


if __name__ == "__main__":
    main()
