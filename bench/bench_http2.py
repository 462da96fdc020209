"""HTTP/2 + gRPC parsing, compiled against Python, side by side in one run.

    .venv/bin/python bench/bench_http2.py [--rev REV] [--seconds 2] [--rounds 5]

Times this tree's parser (agent/protocols/_http2.pyx) against the Python one of git
revision REV (default: the last commit of the Python parser, loaded from `git show
REV:agent/protocols/http2.py` under another module name), rounds alternating so both
see the same machine load, on bench_protocols' golden workloads (steady/1 KiB, the
issue's figure; steady/whole; conn/1 KiB): records per CPU second, best round.  Also
the HPACK decoders alone on the golden header blocks (blocks per second).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_protocols import one_round, workload  # noqa: E402

PYTHON_REV = "fbaf807f0517cd1cf2ef01bc2ba5b24039b776d4"


def baseline(rev: str) -> types.ModuleType:
    """The HTTP/2 parser module of git revision `rev`, imported as
    agent.protocols._http2_baseline (its relative imports resolve in this tree)."""
    path = "agent/protocols/http2.py"
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("agent.protocols._http2_baseline")
    mod.__package__ = "agent.protocols"
    mod.__file__ = f"{rev}:{path}"
    sys.modules[mod.__name__] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def _blocks(work: list) -> list[list[bytes]]:
    """Per direction of each connection, the header blocks in order (one-frame blocks
    of whole chunks only: the golden streams have no CONTINUATION)."""
    out = []
    for _, _, cks in work:
        per = {0: [], 1: []}
        for c in cks:
            data, pos = c.data, 0
            if data.startswith(b"PRI * HTTP/2.0"):
                pos = 24
            while len(data) - pos >= 9:
                ln = int.from_bytes(data[pos:pos + 3], "big")
                if len(data) - pos < 9 + ln:
                    break
                if data[pos + 3] == 1 and data[pos + 4] & 0x4 and not data[pos + 4] & 0x28:
                    per[c.direction].append(data[pos + 9:pos + 9 + ln])
                pos += 9 + ln
        out += [per[0], per[1]]
    return out


def hpack_rate(seqs: list[list[bytes]], new, decode, budget: float) -> float:
    n, spent = 0, 0.0
    while spent < budget:
        t0 = time.process_time()
        for seq in seqs:
            dec = new()
            for b in seq:
                decode(dec, b)
            n += len(seq)
        spent += time.process_time() - t0
    return n / spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default=PYTHON_REV)
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU time per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import agent.protocols.http2 as current

    old = baseline(args.rev)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min); "
          f"python parser: {args.rev[:10]}; compiled: {current.Http2Parser.__module__}")
    print(f"{'workload':18}{'python rec/s':>14}{'compiled rec/s':>16}{'ratio':>8}")
    for mode, capture in (("steady", 1024), ("steady", None), ("conn", 1024)):
        work = workload("grpc", capture, mode)
        best = {"python": 0.0, "compiled": 0.0}
        makers = {"python": lambda proto, transport: old.Http2Parser(True),
                  "compiled": lambda proto, transport: current.Http2Parser(True)}
        gc.collect()
        for _ in range(args.rounds):
            for name, new in makers.items():
                records, spent = one_round(work, args.seconds / 2, new)
                best[name] = max(best[name], records / spent)
        label = f"{mode}/{'whole' if capture is None else f'{capture // 1024} KiB'}"
        print(f"{label:18}{best['python']:>14,.0f}{best['compiled']:>16,.0f}"
              f"{best['compiled'] / best['python']:>8.1f}")
    seqs = _blocks(workload("grpc", None, "steady"))
    py = hpack_rate(seqs, old._decoder, lambda d, b: d.decode(b, raw=True), args.seconds)
    cy = hpack_rate(seqs, current.HpackDecoder, lambda d, b: d.decode(b), args.seconds)
    print(f"{'hpack blocks/s':18}{py:>14,.0f}{cy:>16,.0f}{cy / py:>8.1f}"
          f"   ({sum(map(len, seqs))} blocks; compiled decode() returns every field)")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
