"""Trace fidelity on the demo topology under load, traced by the real agent.

    sudo .venv/bin/python -m bench.bench_fidelity [--requests 2000] [--rate 200]
        [--concurrency 8] [--variant go|node] [--cpu-budget CORES] [--rounds N]
        [--python-stitcher] [--stall SECONDS]

The topology (agent/demo/topology.py) includes a round trip no parser knows (the api's
licence check), a multi-round-trip SQL call (the Go inventory's lib/pq query with a
bound parameter) and a Go-to-Go HTTP call through a pooled http.Client (inventory ->
pricing).  Prints precision (no wrong parent), span recall, end-to-end completeness
(every hop of a request in its one trace), spans never produced, per-process stitching
modes, and the delay from a request's end to its trace leaving the agent.

--cpu-budget forces the agent's CPU budget (agent/factory.py Options.cpu_budget, as
ZEROTRACE_CPU_BUDGET does): a small one makes the agent shed exchanges and whole
connections (bpf/data.c zt_sample), printed with the figures, so precision can be
measured under shedding.  --python-stitcher runs the reference stitcher
(agent/stitch/stitcher.py, the same decisions as the compiled one) and says by which
rule each wrong link was made, and whether the request whose span went under another
request's had a span at the parent's hop at all (a server exchange shed).  --stall
stops reading the ring for that long, once, a second into the load (an agent
descheduled on a busy node): the ring fills (ZEROTRACE_RING_MB makes it smaller), events
are lost or the shedder cuts hard on the fill."""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from agent import factory
from agent.demo.fidelity import GO_HOPS, REQUIRED_HOPS, measure, span_hop, span_nonce
from agent.demo.topology import DemoTopology
from agent.probes.loader import ProbeConfig, SocketTracer
from agent.stitch import stitcher as reference
from agent.stitch.stitcher import Trace


def pipeline_options(cpu_budget: float | None = None) -> factory.Options:
    """The agent's pipeline (agent/factory.py) without tags, export or metrics: shedding
    and skip hints as the agent has them (ZEROTRACE_SHEDDING, ZEROTRACE_SKIP_HINTS);
    exchanges shed on purpose are reported with the figures.  cpu_budget: cores the
    agent may use before it sheds (None: ZEROTRACE_CPU_BUDGET or the agent's default)."""
    return factory.Options(cpu_budget=cpu_budget)


class LinkRecorder(reference.Stitcher):
    """The reference stitcher, remembering how each span got its parent (span id ->
    rule), so a wrong link can be put on the rule that made it."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - Stitcher's
        super().__init__(*args, **kwargs)
        self.how: dict[str, str] = {}

    def _link(self, item, parent, how: str) -> bool:  # noqa: ANN001 - Items
        self.how[item.span.span_id] = how
        return super()._link(item, parent, how)

    def _decide_remote(self, item, now: int) -> bool:  # noqa: ANN001 - an Item
        done = super()._decide_remote(item, now)
        if item.parent is not None:
            self.how[item.span.span_id] = item.link
        return done


def explain_wrong(report, spans: list, how: dict[str, str], index: dict) -> list[str]:
    """One line per kind of wrong link: the rule that made it, the hops, and whether
    the child's own request had a span of the parent's kind in the parent's process
    (none: that exchange was shed or lost, so the thread's history lacked its read)."""
    have: set[tuple[int, str, str]] = set()  # (pid, kind, nonce) of every span
    for s in spans:
        n = span_nonce(s)
        if n:
            have.add((s.pid, s.kind, n))
    kinds: dict[str, int] = {}
    for child, parent in report.wrong_edge_spans:
        mine = span_nonce(child)
        own = "has" if (parent.pid, parent.kind, mine) in have else "lacks"
        key = (f"{span_hop(child, index)} <- {span_hop(parent, index)} by "
               f"{how.get(child.span_id, '?')}; the child's request {own} a "
               f"{parent.kind} span in that process")
        kinds[key] = kinds.get(key, 0) + 1
    return [f"  {n} x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])]


def run(requests: int, rate: int, concurrency: int, variant: str = "go",
        warmup: int = 20, cpu_budget: float | None = None,
        python_stitcher: bool = False, stall: float = 0.0) -> dict:
    with DemoTopology(variant=variant) as topo:
        index = topo.pod_index()
        hops = topo.required_hops
        cfg = ProbeConfig(netns={p.inode for p in topo.pods.values()})
        with SocketTracer(cfg) as tracer:
            opts = pipeline_options(cpu_budget)
            pipeline = factory.build(opts)
            if python_stitcher:
                st = LinkRecorder(pipeline._trace, classifier=pipeline.classifier)
                st.handoffs = pipeline.handoffs
                pipeline.stitcher = st  # rewires the assembler to it
            probes = factory.attach(pipeline, tracer, cfg, opts)
            traces: list[Trace] = []
            delays: list[float] = []

            def on_trace(tr: Trace) -> None:
                traces.append(tr)
                delays.append((time.time_ns() - max(s.end_ns for s in tr.spans)) / 1e9)

            pipeline.on_trace_obj = on_trace
            probes.start()  # as the agent command does: memory, GC, processes, shedding
            stats0 = tracer.stats()
            stop = threading.Event()
            loading = threading.Event()
            cpu = [0.0]

            def drain() -> None:
                t0 = time.thread_time()
                idle_since = None
                stall_at = None
                while True:
                    if stall and loading.is_set():
                        stall_at = stall_at or time.monotonic() + 1.0
                        if time.monotonic() >= stall_at > 0:
                            time.sleep(stall)  # the ring fills meanwhile
                            stall_at = -1.0
                    events = probes.pump(0.05)
                    if events:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    # after the load: run until the agent has caught up (1 s without events)
                    if stop.is_set() and idle_since and time.monotonic() - idle_since > 1.0:
                        break
                cpu[0] = time.thread_time() - t0

            th = threading.Thread(target=drain, daemon=True)
            th.start()
            topo.run_load(requests=warmup, rate=50, concurrency=2)
            time.sleep(1.5)
            n_warm = len(traces)
            loading.set()
            truth = topo.run_load(requests=requests, rate=rate, concurrency=concurrency)
            t_end = time.monotonic()
            stop.set()
            th.join(timeout=300)
            catch_up = time.monotonic() - t_end
            probes.stop()
            pipeline.close()
            drops = tracer.drops()
            shed = {k: v - stats0.get(k, 0) for k, v in tracer.stats().items()
                    if k.startswith("shed_")}
    measured = [t.spans for t in traces[n_warm:]] + [t.spans for t in traces[:n_warm]]
    report = measure(truth, measured, pod_index=index, required_hops=hops)
    # End to end over growing sets of hops, so a loss is put on the pattern it comes
    # from; "of requests with spans" leaves out requests the kernel ring lost whole.
    breakdown = []
    for name, extra in (("base hops (the api's calls follow its unparsed licence check)", ()),
                        ("+ Go lib/pq (two round trips)", ("inventory/client/postgresql",)),
                        ("+ Go-to-Go pooled http.Client", GO_HOPS)):
        if extra and variant != "go":
            continue
        f = measure(truth, measured, pod_index=index, required_hops=REQUIRED_HOPS + extra)
        seen = f.requests - f.failed_requests - f.requests_without_spans
        breakdown.append((name, f.end_to_end or 0.0, f.complete_requests / max(1, seen), seen))
    why = []
    if python_stitcher and report.wrong_edge_spans:
        why = explain_wrong(report, [s for t in measured for s in t],
                            pipeline.stitcher.how, index)
    return {"report": report, "breakdown": breakdown, "delays": delays[n_warm:], "drops": drops,
            "why_wrong": why, "keep_ratio": probes.shedder.keep_ratio if probes.shedder else 1.0,
            "shed_changes": probes.shedder.changes if probes.shedder else 0,
            "process": pipeline.stitcher.process_report(), "stats": pipeline.summary(),
            "agent_cpu_s": cpu[0], "catch_up_s": catch_up, "shed": shed,
            "ok": sum(1 for r in truth if r.status == 200),
            "sent": len(truth)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--variant", default="go", choices=["go", "node"])
    ap.add_argument("--cpu-budget", type=float, default=None,
                    help="cores the agent may use before it sheds (default: "
                         "ZEROTRACE_CPU_BUDGET or the agent's 0.5); small forces shedding")
    ap.add_argument("--rounds", type=int, default=1, help="runs, each a fresh topology")
    ap.add_argument("--python-stitcher", action="store_true",
                    help="the reference stitcher, with the rule behind each wrong link")
    ap.add_argument("--stall", type=float, default=0.0,
                    help="seconds the ring is not read, once, a second into the load")
    args = ap.parse_args(argv or [])
    for i in range(args.rounds):
        one_round(args, i)


def one_round(args: argparse.Namespace, i: int) -> None:
    r = run(args.requests, args.rate, args.concurrency, args.variant,
            cpu_budget=args.cpu_budget, python_stitcher=args.python_stitcher,
            stall=args.stall)
    budget = "default" if args.cpu_budget is None else f"{args.cpu_budget:g} cores"
    print(f"# fidelity round {i + 1}: demo topology ({args.variant}), {r['sent']} requests at "
          f"{args.rate}/s, {args.concurrency} clients; {r['ok']} answered 200; CPU budget "
          f"{budget}")
    shed = r["shed"]
    print(f"shedding: {shed.get('shed_exchanges', 0)} exchanges and "
          f"{shed.get('shed_connections', 0)} connections left out; keep rate changed "
          f"{r['shed_changes']} times, ended at {100 * r['keep_ratio']:.1f} %")
    print(r["report"].text())
    if r["why_wrong"]:
        print("wrong links by rule (where the wrong request enters):")
        print("\n".join(r["why_wrong"]))
    for name, e2e, of_seen, seen in r["breakdown"]:
        print(f"end to end, {name}: {100 * e2e:.2f} %; {100 * of_seen:.2f} % of the {seen} "
              f"requests with spans")
    d = sorted(r["delays"]) or [0.0]
    print(f"request end -> trace emitted: p50 {statistics.median(d):.2f} s, "
          f"p99 {d[int(0.99 * (len(d) - 1))]:.2f} s, max {d[-1]:.2f} s")
    print(f"agent CPU: {r['agent_cpu_s']:.1f} s for the run; caught up {r['catch_up_s']:.1f} s "
          f"after the load ended; kernel drops {r['drops']}; left out on purpose (shedding) "
          f"{r['shed']}")
    print(f"pipeline: {r['stats']}")
    for p in r["process"]:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(p["counts"].items()))
        print(f"  {p['process']}({p['pid']}) [{p['mode']}]: {counts}")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
