"""`zerotrace demo`: server + agent + a small traffic source, ending in a trace and a
flame graph on screen.  Everything it starts it stops; the host is left as found.

    gateway (nginx) -> api (Python, threads) -> licence (a line protocol: no span)
                                            -> postgres
                                            -> inventory (Go) -> redis
                                                              -> postgres (lib/pq)
                                                              -> pricing (Go, pooled client)
    with DNS look-ups through dnsmasq; each "pod" is a network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ZT = [sys.executable, "-m", "agent.cli"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="agent + server + demo services; prints a trace and a "
                                    "flame graph")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rate", type=int, default=100, help="requests per second")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--variant", choices=["go", "node"], default="go",
                   help="language of the inventory service")
    p.add_argument("--out", default="demo-out",
                   help="directory the flame graph files go to (the screen output stays on "
                        "stdout, unlike other commands' --out FILE)")
    p.set_defaults(func=run, writes_file=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start listening")


def _zt(*args: str, capture: bool = False) -> str:
    r = subprocess.run(ZT + list(args), capture_output=capture, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"zerotrace {' '.join(args)} failed: {r.stderr if capture else ''}")
    return r.stdout if capture else ""


class PodTags:
    """Demo stand-in for Kubernetes: each span's pod is its network namespace."""

    def __init__(self, base, pods: dict) -> None:
        self.base = base
        self.by_inode = {p.inode: p.name for p in pods.values()}

    def enrich(self, span) -> None:
        self.base.enrich(span)
        pod = self.by_inode.get(span.netns)
        if pod:
            span.service = pod
            span.resource.update({"k8s.namespace.name": "demo", "k8s.pod.name": pod,
                                  "service.name": pod})

    def counters(self) -> dict:
        return self.base.counters()

    def close(self) -> None:
        self.base.close()


def pipeline_options(server: str, pods: dict):
    """The demo's pipeline options (agent/factory.py): the agent's, with the pods' names
    as tags and spans exported to the demo's server; no metrics port."""
    from agent.enrich import EnrichConfig, Enricher
    from agent.export import BatchExporter, GrpcSpanExporter
    from agent.factory import Options
    from agent.pipeline import export_ports

    host = socket.gethostname()
    return Options(agent_name=host,
                   enricher=PodTags(Enricher(EnrichConfig.from_env({})), pods),
                   exporters=[("server", BatchExporter(GrpcSpanExporter(server, agent=host)))],
                   ignore_ports=frozenset(export_ports(server)))


def _trace_and_capture(topo, server: str, args: argparse.Namespace) -> dict:
    from agent import factory
    from agent.demo.fidelity import measure
    from agent.probes.loader import ProbeConfig, SocketTracer

    cfg = ProbeConfig(netns={p.inode for p in topo.pods.values()})
    print(f"demo: loading the eBPF probes (scoped to the {len(topo.pods)} demo pods)...",
          flush=True)
    with SocketTracer(cfg) as tracer:
        opts = pipeline_options(server, topo.pods)
        pipeline = factory.build(opts)
        exporter = pipeline.exporters[0][1]
        probes = factory.attach(pipeline, tracer, cfg, opts)
        traces = []
        pipeline.on_trace_obj = lambda tr: traces.append(tr.spans)
        probes.start()
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                probes.pump(0.05)

        th = threading.Thread(target=drain, daemon=True)
        th.start()
        topo.run_load(requests=10, rate=20, concurrency=2)  # warm connections, DNS caches
        print(f"demo: sending {args.requests} requests at {args.rate}/s through the gateway "
              f"{topo.gateway_url} ...", flush=True)
        truth = topo.run_load(requests=args.requests, rate=args.rate,
                              concurrency=args.concurrency)
        time.sleep(2.0)  # the last traces settle and leave the stitcher
        stop.set()
        th.join(timeout=30)
        probes.stop()
        pipeline.close()
        drops = tracer.drops()
    fid = measure(truth, traces, pod_index=topo.pod_index(), required_hops=topo.required_hops)
    ok = sum(1 for r in truth if r.status == 200)
    return {"fidelity": fid, "ok": ok, "sent": len(truth), "drops": drops,
            "summary": pipeline.summary(), "export": exporter.metrics()}


def run(args: argparse.Namespace) -> int:
    from agent import check

    reason = check.blocking_reason(check.run_checks(with_fentry=False, with_tc=False))
    if reason is not None:
        print(f"zerotrace: the demo cannot run here: {reason}", file=sys.stderr)
        return 1
    from agent.demo.topology import DemoTopology

    port = _free_port()
    server = f"127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="zt-demo-data-")
    srv = subprocess.Popen(ZT + ["server", "--listen", server, "--data", data],
                           start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=open(os.path.join(data, "server.log"), "w"))
    try:
        _wait_port(port, srv)
        print(f"demo: server listening on {server} (data in {data})", flush=True)
        print(f"demo: starting the demo pods ({args.variant} inventory)...", flush=True)
        with DemoTopology(variant=args.variant) as topo:
            res = _trace_and_capture(topo, server, args)
        f = res["fidelity"]
        print(f"\ndemo: {res['ok']}/{res['sent']} requests answered; kernel drops "
              f"{sum(res['drops'].values())}; spans exported "
              f"{res['export'].get('zerotrace_export_sent_total', 0)}")
        print(f"demo: stitching precision {100 * (f.precision or 0):.2f} %, requests complete "
              f"end to end {100 * (f.end_to_end or 0):.2f} %\n")
        rows = json.loads(_zt("traces", "--server", server, "--service", "gw", "--limit", "50",
                              "-o", "json", capture=True))
        if not rows:
            print("zerotrace: no trace reached the server", file=sys.stderr)
            return 1
        best = max(rows, key=lambda r: (r["spans"], -r["errors"]))
        tid = best["trace_id"]
        _zt("services", "--server", server)
        print()
        _zt("trace", tid, "--server", server)
        trace = json.loads(_zt("trace", tid, "--server", server, "-o", "json", capture=True))
        from agent.demo.screen import text_flamegraph
        print(f"\nflame graph of trace {tid} (x = time):")
        print(text_flamegraph(trace["spans"]))
        os.makedirs(args.out, exist_ok=True)
        for ext in ("svg", "html", "json", "folded"):
            path = os.path.join(args.out, f"trace-{tid[:12]}.{ext}")
            _zt("flamegraph", tid, "--server", server, "--out", path)
        print(f"\ndemo: flame graph files in {args.out}/trace-{tid[:12]}.{{svg,html,json,folded}}"
              " (the .html is interactive: hover, click to zoom, search)")
        return 0
    finally:
        try:
            os.killpg(srv.pid, signal.SIGTERM)
            srv.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(srv.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(data, ignore_errors=True)
