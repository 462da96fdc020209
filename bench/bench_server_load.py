"""Load on `zerotrace server`: N agents push for D seconds while a reader fetches traces.

    .venv/bin/python -m bench.bench_server_load [--agents 16] [--duration 60] [--rate 2000]

Starts a real `zerotrace server` process on loopback over a fresh data directory, then
N agent processes, each exporting as the agent does (`BatchExporter` +
`GrpcSpanExporter`, Arrow wire, 4 096-span batches or 0.5 s, retries with backoff) at
`--rate` spans/s (server spans of ~10 attributes, one trace each, ids known to the
reader).  During the run a reader fetches random traces already acked
(`QueryService/GetTrace`) back to back.  Prints one JSON object: spans/s acked, push
latency p50/p99/max (one `export()` call, retries excluded), trace-by-id p50/p99, the
server's peak RSS (VmHWM), drops, read errors by gRPC code and the server's query-pool
refusals (its /metrics, zerotrace_server_queries_refused_total), and the machine's load
(`os.getloadavg`): the agents, the reader and the server share this machine's CPUs, so
on a small machine the figure is a floor for the server, not its capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def run_agent(addr: str, index: int, rate: int, duration: float, progress: str = "") -> dict:
    """One agent process: spans at `rate`/s for `duration` s; its stats.  Writes the
    count of spans acked so far to `progress` (for the reader) every half second."""
    from agent.export import BatchExporter, GrpcSpanExporter
    from proto.span import Endpoint, Span

    exp = GrpcSpanExporter(addr, agent=f"load-{index}")
    lat: list[float] = []
    export = exp.export

    def timed(spans):
        t = time.perf_counter()
        try:
            return export(spans)
        finally:
            lat.append(time.perf_counter() - t)

    exp.export = timed  # type: ignore[method-assign]
    b = BatchExporter(exp, max_queue_spans=200_000)
    res = {"k8s.pod.name": f"load-{index}-7f9c", "k8s.namespace.name": "bench",
           "service.name": f"svc-{index % 8}"}
    t_first = time.time()
    t_end = time.monotonic() + duration
    seq = 1  # trace id 0 is not a trace id
    last_note = 0.0
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        now = time.time_ns()
        spans = []
        for _ in range(per_tick):
            spans.append(Span(
                trace_id=f"{index:04x}{seq:028x}", kind="server", source="S", protocol="http",
                operation="GET /api/items/{id}", status="ok", status_code="200",
                start_ns=now, end_ns=now + 2_000_000, service=f"svc-{index % 8}",
                process="api", pid=1000 + index, transport="tcp",
                local=Endpoint("10.0.0.1", 8080), remote=Endpoint("10.0.1.2", 40000 + seq % 20000),
                req_seq=seq, resp_seq=seq + 1, agent=f"load-{index}",
                attributes={"http.request.method": "GET", "url.path": f"/api/items/{seq}",
                            "http.response.status_code": "200", "server.address": "api",
                            "user_agent.original": "python-requests/2.31.0"},
                resource=res))
            seq += 1
        b.submit(spans)
        if progress and t0 - last_note > 0.5:
            last_note = t0
            # Spans go out in order: the first `sent` of them are acked.
            Path(progress).write_text(str(b.metrics()["zerotrace_export_sent_total"]))
        time.sleep(max(0.0, tick - (time.monotonic() - t0)))
    b.force_flush(120)
    t_last = time.time()
    m = b.metrics()
    b.shutdown(5)
    return {"sent": m["zerotrace_export_sent_total"],
            "dropped": m["zerotrace_export_dropped_total"],
            "retries": m["zerotrace_export_retries_total"], "made": seq - 1, "push_s": lat,
            "t_first": t_first, "t_last": t_last}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vmhwm_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14, 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rfind(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(listen: str, name: str) -> float | None:
    """One sample of the server's /metrics (None: not there, or no answer)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=2000, help="spans/s per agent")
    ap.add_argument("--agent-child", nargs=5,
                    metavar=("ADDR", "INDEX", "RATE", "DURATION", "PROGRESS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.agent_child:
        addr, index, rate, duration, progress = args.agent_child
        print(json.dumps(run_agent(addr, int(index), int(rate), float(duration), progress)))
        return 0

    data = tempfile.mkdtemp(prefix="zt-load-")
    prog = tempfile.mkdtemp(prefix="zt-load-progress-")
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    metrics = f"127.0.0.1:{_free_port()}"
    srv = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "server", "--listen", addr, "--data", data,
         "--http", "", "--metrics", metrics], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        assert srv.stdout is not None
        for line in srv.stdout:
            if "listening on" in line:
                break
        else:
            raise SystemExit("the server exited before it listened")
        threading.Thread(target=srv.stdout.read, daemon=True).start()
        load_before = os.getloadavg()
        cpu_before = _cpu_s(srv.pid)
        agents = [subprocess.Popen(
            [sys.executable, "-m", "bench.bench_server_load", "--agent-child", addr, str(i),
             str(args.rate), str(args.duration), os.path.join(prog, f"progress-{i}")],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for i in range(args.agents)]
        t_start = time.monotonic()
        reads: list[float] = []
        read_errors = 0
        read_codes: dict[str, int] = {}  # gRPC status of the failed reads
        stop = threading.Event()

        def reader() -> None:
            nonlocal read_errors
            import grpc

            from proto.zerotrace.v1 import query_pb2, query_pb2_grpc

            with grpc.insecure_channel(addr) as ch:
                q = query_pb2_grpc.QueryServiceStub(ch)
                while not stop.is_set():
                    # A trace its agent has seen acked.
                    i = random.randrange(args.agents)
                    try:
                        acked = int(Path(prog, f"progress-{i}").read_text() or 0)
                    except (OSError, ValueError):
                        acked = 0
                    if acked < 1:
                        time.sleep(0.05)
                        continue
                    seq = random.randint(1, acked)
                    t = time.perf_counter()
                    try:
                        r = q.GetTrace(query_pb2.GetTraceRequest(
                            trace_id=f"{i:04x}{seq:028x}", no_join=True), timeout=60)
                        if len(r.spans) != 1:
                            read_errors += 1
                    except grpc.RpcError as e:
                        read_errors += 1
                        code = e.code().name if e.code() is not None else "?"
                        read_codes[code] = read_codes.get(code, 0) + 1
                    reads.append(time.perf_counter() - t)

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        loads = []
        while any(a.poll() is None for a in agents):
            loads.append(os.getloadavg()[0])
            time.sleep(1)
        stop.set()
        rt.join(70)
        wall = time.monotonic() - t_start
        stats = [json.loads(a.stdout.read().strip().splitlines()[-1]) for a in agents]
        peak = _vmhwm_mb(srv.pid)
        server_cpu = _cpu_s(srv.pid) - cpu_before
        refused = _scrape(metrics, "zerotrace_server_queries_refused_total")
    finally:
        srv.terminate()
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.kill()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(prog, ignore_errors=True)
    push = [x for s in stats for x in s["push_s"]]
    sent = sum(s["sent"] for s in stats)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "agents": args.agents, "duration_s": args.duration, "rate_per_agent": args.rate,
        "spans_made": sum(s["made"] for s in stats), "spans_acked": sent,
        # Over the agents' own time (first span made to last ack), not their start-up.
        "spans_per_s": round(sent / (max(s["t_last"] for s in stats)
                                     - min(s["t_first"] for s in stats))),
        "wall_s": round(wall, 1),
        "dropped": sum(s["dropped"] for s in stats), "retries": sum(s["retries"] for s in stats),
        "pushes": len(push),
        "push_p50_ms": round(statistics.median(push) * 1000, 1) if push else None,
        "push_p99_ms": round(_pct(push, 0.99) * 1000, 1),
        "push_max_ms": round(max(push) * 1000, 1) if push else None,
        "get_trace_n": len(reads), "get_trace_errors": read_errors,
        "get_trace_error_codes": read_codes,
        # the server's query pool turned these away (UNAVAILABLE): its /metrics
        "server_queries_refused": refused,
        "get_trace_p50_ms": round(statistics.median(reads) * 1000, 1) if reads else None,
        "get_trace_p99_ms": round(_pct(reads, 0.99) * 1000, 1),
        "server_peak_rss_mb": peak,
        # CPU the server itself used: spans per server CPU-second is the figure that
        # carries to a machine where the agents do not share the server's CPUs.
        "server_cpu_s": round(server_cpu, 1),
        "spans_per_server_cpu_s": round(sent / server_cpu) if server_cpu else None,
        "load_before": [round(x, 2) for x in load_before],
        "load_during_max": round(max(loads), 2) if loads else None,
        "load_during_mean": round(statistics.mean(loads), 2) if loads else None,
        "cpus": os.cpu_count(),
        "commit": _commit(),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
