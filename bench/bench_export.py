"""The export side on the recorded demo stream: enrichment, redaction and Arrow
encoding, the Python code and the compiled one side by side.

    sudo .venv/bin/python -m bench.bench_export [--rounds 5] [--profile]

Replays bench_replay's recorded stream once (recording it first if needed) to get
the stitched spans, then, in batches of 4 096 as BatchExporter hands them, times
(CPU, us a span): enrichment (Enricher.enrich per span, /proc only), redaction
(`redact.reference_spans` with the regexes alone, the Python code, against
`redact.spans`, the compiled loop and SQL literal scan; "cold" = redact.py's caches
emptied before the round: statements carrying unique values are seen once in a real
run, so cold is the figure to read) and encoding
(`reference_spans_to_table` against `spans_to_table`, each + `table_to_ipc`).  Old
and new alternate within each round, so that both see the same machine load; the
best round of each is printed, with the load average.  --profile: cProfile of one
round of the new path.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import pstats
import time
from collections.abc import Callable


def _spans(requests: int) -> list:
    from bench.bench_replay import CACHE, record, replay

    path = CACHE.format(n=requests)
    try:
        with open(path, "rb") as f:
            raw, off, modes = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        raw, off, modes = record(requests)
        with open(path, "wb") as f:
            pickle.dump((raw, off, modes), f)
    traces: list = []
    replay(raw, off, modes, keep=traces)
    return [s for t in traces for s in t.spans]


def _batches(spans: list, n: int = 4096) -> list[list]:
    return [spans[i:i + n] for i in range(0, len(spans), n)]


def _cpu(fn: Callable[[list], object], batches: list[list]) -> float:
    t0 = time.process_time()
    for b in batches:
        fn(b)
    return time.process_time() - t0


def _clear_redact_caches() -> None:
    from agent.protocols import redact

    redact._VALUE_CACHE.clear()
    redact._SQL_CACHE.clear()
    redact._REDACTOR = None


def _python_redaction(batch: list) -> list:
    """redact.py without its compiled parts (the loop and the SQL literal scan)."""
    from agent.protocols import redact

    saved, redact._REDACTOR = redact._REDACTOR, False
    try:
        return redact.reference_spans(batch)
    finally:
        redact._REDACTOR = saved


def main(argv: list[str] | None = None) -> None:
    from agent.enrich import EnrichConfig, Enricher
    from agent.protocols import redact
    from proto.columns import reference_spans_to_table, spans_to_table, table_to_ipc

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv or [])
    spans = _spans(args.requests)
    n = len(spans)
    batches = _batches(spans)

    en = Enricher(EnrichConfig())

    def enrich(b: list) -> None:
        for s in b:
            en.enrich(s)

    redacted = [_python_redaction(b) for b in _batches(spans)]
    # Redacted once for the encoders: spans that changed are copies, and the
    # encoders see what the exporter sends.
    stages: dict[str, Callable[[list], object]] = {
        "enrich": enrich,
        "redact old": _python_redaction,
        "redact new": redact.spans,
        "encode old": lambda b: table_to_ipc(reference_spans_to_table(b, "bench")),
        "encode new": lambda b: table_to_ipc(spans_to_table(b, "bench")),
    }
    best = dict.fromkeys(list(stages) + ["redact old cold", "redact new cold"], 1e9)
    try:
        enrich(spans)  # the /proc reads once per (pid, cgroup), not timed
        for _ in range(args.rounds):
            for cold in ("old", "new"):
                _clear_redact_caches()
                fn = stages[f"redact {cold}"]
                best[f"redact {cold} cold"] = min(best[f"redact {cold} cold"],
                                                  _cpu(fn, batches))
            for name, fn in stages.items():
                data = redacted if name.startswith("encode") else batches
                best[name] = min(best[name], _cpu(fn, data))
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(lambda: [stages["encode new"](b) for b in redacted]
                         + [stages["redact new"](b) for b in batches])
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    finally:
        en.close()
    us = {k: v * 1e6 / n for k, v in best.items()}
    load = os.getloadavg()
    print(f"# export side, {n} stitched spans of the recorded demo stream, batches of "
          f"4096, best of {args.rounds} (load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    print("us/span: " + ", ".join(f"{k} {v:.2f}" for k, v in us.items()))
    for side in ("old", "new"):
        tot = us["enrich"] + us[f"redact {side}"] + us[f"encode {side}"]
        print(f"{side}: enrich + redact + encode = {tot:.2f} us/span "
              f"(redact on cold caches: {us[f'redact {side} cold']:.2f})")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
