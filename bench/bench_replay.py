"""Agent pipeline throughput on a recorded real event stream, on one core.

    sudo .venv/bin/python -m bench.bench_replay [--requests 1000] [--profile] [--stages]
        [--agent-gc]

Records the raw ring-buffer records of the demo topology under load once (cached in
/var/cache/zerotrace/), then replays them through the whole agent pipeline (decode,
connections, protocols, spans, stitching) without the kernel, so the figure does not
depend on the machine's other load.  --profile prints the top of a cProfile run: the
hot paths named there are where optimisation goes.  --stages adds CPU per span of
decode alone, of the span stage alone (connections, parsers, spans; no stitcher) and of
the whole pipeline, the stitcher being the difference, and of the export side on the
stitched spans: enrichment (Enricher, /proc only), redaction (redact.spans, on the
export thread) and Arrow encoding (spans_to_table + table_to_ipc, what the gRPC
exporter sends), in batches of 4 096 as BatchExporter hands them; --agent-gc runs
with the collector settings the agent command uses (pipeline.tune_gc) instead of
Python's."""

from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import pstats
import resource
import threading
import time
from collections import deque

from agent.probes.btf import CACHE_DIR
from agent.probes.events import SocketEvent

CACHE = os.path.join(CACHE_DIR, "bench-demo-stream-{n}.pkl")


def pipeline_options():  # noqa: ANN201 - agent.factory.Options (imported lazily)
    """The agent's pipeline (agent/factory.py) without tags, export or metrics: the
    export side is timed on its own (export_stages), on the stitched spans."""
    from agent import factory

    return factory.Options(shedding=False)


def build():  # noqa: ANN201 - agent.pipeline.Pipeline
    """A fresh pipeline, built as the agent builds its own."""
    from agent import factory

    return factory.build(pipeline_options())


def record(requests: int) -> tuple[list[bytes], int, dict]:
    from agent.demo.topology import DemoTopology
    from agent.probes.loader import ProbeConfig, SocketTracer

    with DemoTopology(variant="go") as topo:
        cfg = ProbeConfig(netns={p.inode for p in topo.pods.values()})
        with SocketTracer(cfg) as tr:
            p = build()
            p.follow_go = lambda pid: tr.follow_go(pid).startswith("goroutine")
            p.prescan(cfg)
            raw: list[bytes] = []
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set():
                    raw.extend(tr.poll_raw(0.05))

            th = threading.Thread(target=drain)
            th.start()
            topo.run_load(requests=20, rate=50, concurrency=2)
            time.sleep(1)
            topo.run_load(requests=requests, rate=200, concurrency=8)
            time.sleep(1)
            stop.set()
            th.join()
            return raw, tr.wall_offset, dict(p.classifier._by_pid)


class _NoStitcher:
    """In place of the stitcher when only spans are timed: data events go nowhere, by a
    C-level callable (a Python method here was a frame a data event, counted in the
    span stage's figure and so taken off the stitcher's)."""

    observe = deque(maxlen=0).append


def replay(raw: list[bytes], off: int, modes: dict, stitch: bool = True,
           keep: list | None = None, python_stitcher: bool = False) -> tuple[int, int, float]:
    """(spans, traces, CPU seconds); stitch=False: spans are made, not stitched;
    keep: a list the stitched traces are appended to; python_stitcher: the Python
    reference stitcher (agent/stitch/stitcher.py) in place of the compiled one."""
    p = build()
    if python_stitcher:
        from agent.stitch.stitcher import Stitcher

        p.stitcher = Stitcher(p._trace, classifier=p.classifier)
        p.stitcher.handoffs = p.handoffs
    p.classifier._by_pid.update(modes)
    p._pids.update(modes)
    # Traces are counted, not kept, unless asked: the agent exports and drops them, and
    # 24 422 spans held to the end made the collector's passes part of the stitcher's
    # figure (measured 32 -> see docs/benchmarks.md)
    ntraces = [0]
    if keep is None:
        def count_trace(_t) -> None:
            ntraces[0] += 1
        p.on_trace_obj = count_trace
    else:
        p.on_trace_obj = keep.append
    if not stitch:
        p.stitcher = _NoStitcher()
        # spans dropped by a C-level callable (counted in the assembler's stats): no
        # Python frame a span, as in the stitched run where add is the compiled one
        p.assembler.emit = deque(maxlen=0).append
    t0 = time.process_time()
    for i in range(0, len(raw), 500):
        evs = [SocketEvent(r, off) for r in raw[i:i + 500]]
        p.process(evs)
        if evs and stitch:
            p.stitcher.tick(evs[-1].ts_exit + 10**8)
    if stitch:
        p.close()
    else:
        p.assembler.close()
    cpu = time.process_time() - t0
    return p.spans, ntraces[0] if keep is None else len(keep), cpu


def decode(raw: list[bytes], off: int) -> float:
    t0 = time.process_time()
    for i in range(0, len(raw), 500):
        [SocketEvent(r, off) for r in raw[i:i + 500]]
    return time.process_time() - t0


def export_stages(traces: list, batch: int = 4096) -> dict[str, float]:
    """CPU seconds of enrichment, redaction and Arrow encoding of the traces' spans,
    batch by batch (enrichment in place, as Pipeline._trace does)."""
    from agent.enrich import EnrichConfig, Enricher
    from agent.protocols import redact
    from proto.columns import spans_to_table, table_to_ipc

    spans = [s for t in traces for s in t.spans]
    en = Enricher(EnrichConfig())
    out = {"enrich": 0.0, "redact": 0.0, "encode": 0.0}
    try:
        for i in range(0, len(spans), batch):
            b = spans[i:i + batch]
            t0 = time.process_time()
            for s in b:
                en.enrich(s)
            t1 = time.process_time()
            b = redact.spans(b)
            t2 = time.process_time()
            table_to_ipc(spans_to_table(b, "bench"))
            t3 = time.process_time()
            out["enrich"] += t1 - t0
            out["redact"] += t2 - t1
            out["encode"] += t3 - t2
    finally:
        en.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", action="store_true")
    ap.add_argument("--agent-gc", action="store_true")
    ap.add_argument("--python-stitcher", action="store_true",
                    help="with --stages: also the Python reference stitcher, rounds "
                         "alternating with the compiled one")
    args = ap.parse_args(argv or [])
    path = CACHE.format(n=args.requests)
    try:
        with open(path, "rb") as f:
            raw, off, modes = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        raw, off, modes = record(args.requests)
        os.makedirs(CACHE_DIR, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump((raw, off, modes), f)
    if args.agent_gc:
        from agent.pipeline import tune_gc
        tune_gc()
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(replay, raw, off, modes)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(20)
    runs = [replay(raw, off, modes) for _ in range(args.rounds)]
    spans, traces, cpu = min(runs, key=lambda r: r[2])
    print(f"# pipeline replay: {len(raw)} recorded events of {args.requests} demo requests")
    print(f"{len(raw) / cpu:,.0f} events/s, {spans / cpu:,.0f} spans/s, {traces} traces, "
          f"on one core (best of {args.rounds}: {cpu:.2f} s CPU)")
    if args.stages:
        dec = min(decode(raw, off) for _ in range(args.rounds))
        span_cpu = min(replay(raw, off, modes, stitch=False)[2] for _ in range(args.rounds))
        us = 1e6 / spans
        print(f"us/span: decode {dec * us:.1f}, connections+parsers+spans "
              f"{(span_cpu - dec) * us:.1f}, stitcher {(cpu - span_cpu) * us:.1f}, "
              f"total {cpu * us:.1f}")
        if args.python_stitcher:
            # alternate rounds, so both see the same machine load
            cy, py = [], []
            for _ in range(args.rounds):
                cy.append(replay(raw, off, modes)[2])
                py.append(replay(raw, off, modes, python_stitcher=True)[2])
            print(f"us/span stitcher, alternating rounds: compiled "
                  f"{(min(cy) - span_cpu) * us:.1f}, Python reference "
                  f"{(min(py) - span_cpu) * us:.1f}")
        traces: list = []
        replay(raw, off, modes, keep=traces)
        n = sum(len(t.spans) for t in traces)
        runs = [export_stages(traces) for _ in range(args.rounds)]
        ex = {k: min(r[k] for r in runs) for k in runs[0]}
        ex_us = {k: v * 1e6 / n for k, v in ex.items()}
        print(f"us/span (export side, {n} stitched spans): "
              + ", ".join(f"{k} {v:.1f}" for k, v in ex_us.items())
              + f"; pipeline + export {cpu * us + sum(ex_us.values()):.1f}; redact on "
              f"cold caches (first round) {runs[0]['redact'] * 1e6 / n:.1f}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory of this process: {rss:.0f} MiB (the recorded "
              f"stream and kept traces included)")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
