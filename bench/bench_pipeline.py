"""End to end: HTTP/1.1 requests/s the agent turns into spans on one core, against wrk on
nginx in a network namespace; and the pipeline's per-span cost alone.

    sudo .venv/bin/python -m bench.bench_pipeline [--rounds 3] [--duration 10] \\
        [--threads 2] [--connections 16] [--sweep 2,4,8,16] [--replay-reps 3] \\
        [--no-pin] [--profile]

nginx (one worker, a 612-byte static file, keep-alive) runs in one namespace and wrk in
another; the tracer is scoped to those two namespaces.  Rounds alternate untraced
(tracepoints detached) and traced (attached, one agent thread in this process draining
the ring buffer into `Pipeline`), and medians are reported: wrk's requests/s both ways,
spans/s, the draining thread's CPU seconds per 1000 requests (time.thread_time), kernel
drops, and complete client (wrk) and server (nginx) spans against wrk's request count.
The agent thread is pinned to the last CPU and wrk and nginx to the others (`--no-pin`
to let the scheduler mix them), so "one core" means one core.  `--sweep` repeats traced
rounds paced by a wrk script (each connection waits 1 ms after each response; N
connections give roughly N x 900 req/s) to find the highest load with zero loss.  Then
the events recorded in the first traced round are replayed, one thread, through the
span stage alone (ConnTracker + SpanAssembler: events to spans) and through the whole
`Pipeline` (spans and the stitcher): spans/s on one core with no kernel in the way.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager

from agent import factory
from agent.probes.events import SocketEvent
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.helpers.netns import network
from tests.helpers.nginx import nginx_conf

SUBNET = 232  # 10.232.0.x: apart from the tests' 10.231.0.x
PORT = 80
KEEP_RECORDS = 400_000
PACED = "function delay()\n    return 1\nend\n"  # wrk: 1 ms after each response



def pipeline_options() -> factory.Options:
    """The agent's pipeline (agent/factory.py) with shedding off: this benchmark measures
    what one core can follow, which sampling would hide (bench_live measures the agent
    with it).  No tags, export or metrics."""
    return factory.Options(shedding=False)


class Drainer(threading.Thread):
    """The agent: drain the ring, decode, Pipeline.process; its own CPU time measured."""

    def __init__(self, tracer: SocketTracer, cpu: int | None = None,
                 cfg: ProbeConfig | None = None) -> None:
        super().__init__(daemon=True, name="zt-drain")
        self.tracer = tracer
        self.cpu = cpu
        opts = pipeline_options()
        self.pipeline = factory.build(opts)
        self.probes = factory.attach(self.pipeline, tracer, cfg or tracer.config, opts)
        self.probes.start()
        self.pipeline.on_span = self._span
        self.spans: Counter = Counter()
        self.events = 0
        self.empty_polls = 0  # polls that found the ring empty (after processing all)
        self.cpu_ns = 0
        self.stop = False
        self.keep = False
        self.kept: list[bytes] = []

    def _span(self, ctx) -> None:
        s = ctx.span
        self.spans[(s.kind, "incomplete" if s.incomplete else "complete")] += 1

    def run(self) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})  # 0: this thread only
        t0 = time.thread_time_ns()
        tracer, process = self.tracer, self.pipeline.process
        while not self.stop:
            raw = tracer.poll_raw(0.02)
            if raw:
                off = tracer.wall_offset
                process([SocketEvent(r, off) for r in raw])
                self.events += len(raw)
                if self.keep and len(self.kept) < KEEP_RECORDS:
                    self.kept.extend(raw[:KEEP_RECORDS - len(self.kept)])
            else:
                self.empty_polls += 1
            self.probes.tick()
            self.cpu_ns = time.thread_time_ns() - t0

    def settle(self, timeout_s: float = 120.0) -> bool:
        """Until the drainer has processed everything: several empty polls in a row after
        this call began, with nothing arriving in between (the connections wrk closed
        have been flushed too)."""
        deadline = time.monotonic() + timeout_s
        ev, empty = self.events, self.empty_polls
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if self.events != ev:
                ev, empty = self.events, self.empty_polls
            elif self.empty_polls - empty >= 5:
                return True
        return False


@contextmanager
def nginx_pair(taskset: list[str] | None = None):
    """Two namespaces, nginx serving a static file in the second; yields (net, url)."""
    taskset = taskset or []
    tmp = tempfile.mkdtemp(prefix="zt-bench-nginx-")
    try:
        os.makedirs(f"{tmp}/www")
        with open(f"{tmp}/www/index.html", "w") as f:
            f.write("<html>" + "x" * 599 + "</html>\n")  # 612 bytes, nginx's default size
        with network(2, subnet=SUBNET) as net:
            srv = net.hosts[1]
            with open(f"{tmp}/nginx.conf", "w") as f:
                f.write(nginx_conf(tmp, f"{srv.addr}:{PORT}", worker_connections=1024,
                                   http="keepalive_requests 10000000; keepalive_timeout 120s;"))
            net.spawn(srv, *taskset, "nginx", "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = subprocess.run(net.hosts[0].cmd("curl", "-s", "-o", "/dev/null", "-w",
                                                    "%{http_code}", f"http://{srv.addr}/"),
                                   capture_output=True, text=True)
                if r.stdout == "200":
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("nginx did not come up")
            yield net, f"http://{srv.addr}/index.html"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_REQS = re.compile(r"(\d+) requests in ([\d.]+)s")


def run_wrk(net, url: str, threads: int, conns: int, duration: int,
            taskset: list[str] | None = None, script: str | None = None) -> dict:
    extra = ["-s", script] if script else []
    out = subprocess.run(net.hosts[0].cmd(*(taskset or []), "wrk", f"-t{threads}",
                                          f"-c{conns}", f"-d{duration}s", *extra, url),
                         capture_output=True, text=True, timeout=duration + 60).stdout
    rps, reqs = _RPS.search(out), _REQS.search(out)
    if not rps or not reqs:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": float(rps.group(1)), "requests": int(reqs.group(1)),
            "errors": errors.group(0) if errors else ""}


def traced_round(net, url: str, tracer: SocketTracer, d: Drainer, threads: int, conns: int,
                 duration: int, taskset: list[str] | None = None,
                 script: str | None = None) -> dict:
    drops0 = Counter(tracer.drops())
    spans0, cpu0, ev0 = Counter(d.spans), d.cpu_ns, d.events
    t0 = time.monotonic()
    w = run_wrk(net, url, threads, conns, duration, taskset, script)
    if not d.settle():
        print("  (the agent did not catch up within 120 s)", flush=True)
    wall = time.monotonic() - t0
    spans = d.spans - spans0
    cpu_s = (d.cpu_ns - cpu0) / 1e9
    n = w["requests"]
    out = dict(w)
    out.update({
        "events": d.events - ev0,
        "drops_by_reason": {k: v for k, v in (Counter(tracer.drops()) - drops0).items()},
        "client_ok": spans[("client", "complete")],
        "server_ok": spans[("server", "complete")],
        "incomplete": spans[("client", "incomplete")] + spans[("server", "incomplete")],
        "spans_per_s": (spans[("client", "complete")] + spans[("server", "complete")])
        / duration,
        "agent_cpu_s": cpu_s,
        "agent_util": cpu_s / wall,
        "cpu_ms_per_1k": cpu_s * 1e6 / n if n else 0.0,
    })
    out["drops"] = sum(out["drops_by_reason"].values())
    pairs = min(out["client_ok"], out["server_ok"])
    out["cpu_ms_per_1k_spanned"] = cpu_s * 1e6 / pairs if pairs else 0.0
    out["client_loss"] = 1 - out["client_ok"] / n if n else 0.0
    out["server_loss"] = 1 - out["server_ok"] / n if n else 0.0
    return out


def replay(records: list[bytes], wall_offset: int, reps: int, full: bool) -> dict:
    """Recorded events through a fresh pipeline's span stage (full=False: ConnTracker +
    SpanAssembler, spans counted and not stitched) or the whole of it (full=True: also
    the stitcher), one thread."""
    dec, tot, spans = [], [], 0
    for _ in range(reps):
        n = [0]

        def count(_ctx, n=n) -> None:
            n[0] += 1

        p = factory.build(pipeline_options())
        if full:
            p.on_span = count
            process, close = p.process, p.close
        else:
            a = p.assembler
            a.emit = count
            handle = a.handle

            def process(events, handle=handle) -> None:
                for e in events:
                    handle(e)

            close = a.close
        t0 = time.thread_time_ns()
        events = [SocketEvent(r, wall_offset) for r in records]
        t1 = time.thread_time_ns()
        process(events)
        close()
        t2 = time.thread_time_ns()
        dec.append((t1 - t0) / 1e9)
        tot.append((t2 - t0) / 1e9)
        spans = n[0]
    d, t = statistics.median(dec), statistics.median(tot)
    return {"events": len(records), "spans": spans, "decode_s": d, "total_s": t,
            "spans_per_s": spans / t, "events_per_s": len(records) / t,
            "us_per_span": t * 1e6 / spans if spans else 0.0,
            "us_per_span_after_decode": (t - d) * 1e6 / spans if spans else 0.0,
            "us_per_event_decode": d * 1e6 / len(records)}


def profile(records: list[bytes], wall_offset: int, top: int = 18) -> str:
    """cProfile of one full-Pipeline replay: where the time per span goes."""
    p = factory.build(pipeline_options())
    events = [SocketEvent(r, wall_offset) for r in records]
    prof = cProfile.Profile()
    prof.enable()
    p.process(events)
    p.close()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="traced and untraced rounds each")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--sweep", default="2,4,8,16",
                    help="connection counts of paced traced rounds ('' for none)")
    ap.add_argument("--replay-reps", type=int, default=3)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one replay")
    args = ap.parse_args(argv or [])
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("bench_pipeline needs wrk and nginx (scripts/setup.sh)")
    cpus = sorted(os.sched_getaffinity(0))
    agent_cpu, taskset = None, []
    if not args.no_pin and len(cpus) >= 2:
        agent_cpu = cpus[-1]
        taskset = ["taskset", "-c", ",".join(str(c) for c in cpus[:-1])]
    base, traced, sweep = [], [], []
    tmp = tempfile.mkdtemp(prefix="zt-bench-wrk-")
    script = os.path.join(tmp, "paced.lua")
    with open(script, "w") as f:
        f.write(PACED)
    try:
        with nginx_pair(taskset) as (net, url):
            cfg = ProbeConfig(netns={h.inode for h in net.hosts})
            with SocketTracer(cfg) as tracer:
                d = Drainer(tracer, agent_cpu, cfg)
                d.start()
                try:
                    for i in range(args.rounds):
                        tracer.pause()
                        base.append(run_wrk(net, url, args.threads, args.connections,
                                            args.duration, taskset))
                        tracer.resume()
                        d.keep = i == 0
                        traced.append(traced_round(net, url, tracer, d, args.threads,
                                                   args.connections, args.duration, taskset))
                        d.keep = False
                        print(f"  round {i + 1}: untraced {base[-1]['rps']:,.0f} req/s, "
                              f"traced {_fmt_round(traced[-1])}", flush=True)
                    for c in [int(x) for x in args.sweep.split(",") if x.strip()]:
                        r = traced_round(net, url, tracer, d, 1, c, args.duration, taskset,
                                         script)
                        r["connections"] = c
                        sweep.append(r)
                        print(f"  paced -t1 -c{c}: {_fmt_round(r)}", flush=True)
                finally:
                    d.stop = True
                    d.join(timeout=30)
                wall_offset = tracer.wall_offset
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reps = {}
    if d.kept:
        reps["spans"] = replay(d.kept, wall_offset, args.replay_reps, full=False)
        reps["pipeline"] = replay(d.kept, wall_offset, args.replay_reps, full=True)
    report(args, agent_cpu, base, traced, sweep, reps)
    if args.profile and d.kept:
        print(profile(d.kept, wall_offset))


def _fmt_round(r: dict) -> str:
    return (f"{r['rps']:,.0f} req/s ({r['requests']} requests), spans client "
            f"{r['client_ok']} server {r['server_ok']} incomplete {r['incomplete']}, "
            f"drops {r['drops_by_reason'] or 0}, agent {r['agent_cpu_s']:.2f} CPU s "
            f"({r['agent_util']:.0%} of a core), {r['cpu_ms_per_1k']:.1f} ms/1000 req, "
            f"{r['cpu_ms_per_1k_spanned']:.1f} ms/1000 spanned req")


def report(args, agent_cpu, base: list[dict], traced: list[dict], sweep: list[dict],
           reps: dict) -> None:
    pin = f"agent pinned to CPU {agent_cpu}, wrk+nginx to the others" if agent_cpu is not None \
        else "no pinning"
    print(f"# pipeline end to end: wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s on nginx (static 612 B, keep-alive) in a netns; {pin}; "
          f"medians of {args.rounds} alternating rounds")
    b, t = med(base, "rps"), med(traced, "rps")
    print(f"wrk requests/s untraced {b:,.0f}  traced {t:,.0f}  ratio {t / b:.2f}")
    print(f"spans/s (complete, client+server) {med(traced, 'spans_per_s'):,.0f}; agent CPU "
          f"{med(traced, 'cpu_ms_per_1k'):.1f} ms per 1000 wrk requests, "
          f"{med(traced, 'cpu_ms_per_1k_spanned'):.1f} ms per 1000 requests turned into both "
          f"spans; {med(traced, 'agent_util'):.0%} of one core while traced")
    print(f"loss: client spans {med(traced, 'client_loss'):.1%}, server spans "
          f"{med(traced, 'server_loss'):.1%} of wrk's requests; kernel drops per round "
          f"{[r['drops'] for r in traced]}; incomplete spans {[r['incomplete'] for r in traced]}")
    per = med(traced, "cpu_ms_per_1k_spanned")
    if per:
        print(f"agent capacity on one core (1e6 / ms per 1000 spanned requests): "
              f"{1e6 / per:,.0f} req/s")
    for r in sweep:
        print(f"paced -t1 -c{r['connections']}: {r['rps']:,.0f} req/s, drops {r['drops']}, "
              f"loss client {r['client_loss']:.2%} server {r['server_loss']:.2%}, agent "
              f"{r['agent_util']:.0%} of a core, {r['cpu_ms_per_1k_spanned']:.1f} ms/1000 "
              f"spanned req")
    ok = [r for r in sweep if r["drops"] == 0 and r["client_loss"] < 0.001
          and r["server_loss"] < 0.001]
    if ok:
        best = max(ok, key=lambda r: r["rps"])
        print(f"highest zero-loss load measured: {best['rps']:,.0f} req/s "
              f"(paced, -c{best['connections']})")
    elif sweep:
        print("no paced load was free of loss")
    for name, rep in reps.items():
        what = "ConnTracker+SpanAssembler" if name == "spans" else "Pipeline (with stitcher)"
        print(f"replay through {what}, one thread, {rep['events']} recorded events -> "
              f"{rep['spans']} spans: {rep['spans_per_s']:,.0f} spans/s, "
              f"{rep['us_per_span']:.1f} us/span (decode {rep['us_per_event_decode']:.2f} "
              f"us/event; {rep['us_per_span_after_decode']:.1f} us/span after decode)")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
