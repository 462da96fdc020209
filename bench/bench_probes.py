"""Probe overhead and decoding throughput, traced vs untraced in one run.

    sudo .venv/bin/python -m bench.bench_probes [--rounds 7] [--iterations 200000]

Cost is CPU time per syscall in tight loops (bench/syscall_loop.c), alternating
untraced (tracepoints detached) and traced (attached, agent thread draining and
decoding) rounds; medians reported.  The agent's own CPU per traced syscall is added,
because a probe that is cheap in the kernel but expensive to drain is not cheap."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.conn.tracker import ConnTracker
from agent.pipeline import tune_gc
from agent.probes import abi
from agent.probes.events import SocketEvent
from agent.probes.loader import ProbeConfig, SocketTracer

HERE = Path(__file__).resolve().parent
PORT = 47001


def build_loop(tmp: str) -> str:
    exe = os.path.join(tmp, "syscall_loop")
    subprocess.run(["cc", "-O2", "-o", exe, str(HERE / "syscall_loop.c")], check=True)
    return exe


class Drainer(threading.Thread):
    """The agent's consumer: drain and decode; thread CPU time measured by itself."""

    def __init__(self, tracer: SocketTracer) -> None:
        super().__init__(daemon=True)
        self.tracer = tracer
        self.events = 0
        self.cpu_ns = 0
        self.stop = False
        self.keep: list[bytes] = []
        self.tracker = ConnTracker()

    def run(self) -> None:
        t0 = time.thread_time_ns()
        while not self.stop:
            raw = self.tracer.poll_raw(0.02)
            off = self.tracer.wall_offset
            update = self.tracker.update
            for r in raw:
                update(SocketEvent(r, off))
            self.events += len(raw)
            if len(self.keep) < 200_000:
                self.keep.extend(raw[:1000])
            self.cpu_ns = time.thread_time_ns() - t0


def run_loop(exe: str, mode: str, n: int) -> float:
    out = subprocess.run([exe, mode, str(n), str(PORT)], capture_output=True, text=True,
                         check=True).stdout
    return float(out)


def measure(exe: str, tracer: SocketTracer, drainer: Drainer, mode: str, n: int,
            rounds: int, syscalls_per_iter: int) -> dict:
    base, traced, agent = [], [], []
    for _ in range(rounds):
        tracer.pause()
        base.append(run_loop(exe, mode, n) / syscalls_per_iter)
        tracer.resume()
        ev0, cpu0 = drainer.events, drainer.cpu_ns
        traced.append(run_loop(exe, mode, n) / syscalls_per_iter)
        time.sleep(0.1)  # let the drainer finish this round's events
        agent.append((drainer.cpu_ns - cpu0) / (n * syscalls_per_iter))
        if mode == "tcp":
            got = drainer.events - ev0
            print(f"  round: {got} events for {n * syscalls_per_iter} syscalls, "
                  f"drops {tracer.drops()}")
    b, t, a = statistics.median(base), statistics.median(traced), statistics.median(agent)
    return {"untraced_ns": b, "traced_ns": t, "added_kernel_ns": t - b, "agent_ns": a,
            "added_total_ns": t - b + a, "ratio": t / b}


def decode_rate(records: list[bytes], off: int) -> float:
    t0 = time.perf_counter()
    for r in records:
        SocketEvent(r, off)
    return len(records) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=200_000)
    args = ap.parse_args(argv or [])
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_loop(tmp)
        with SocketTracer(ProbeConfig(ports={PORT}, trace_self=False)) as tracer:
            tune_gc()  # as the agent command does
            drainer = Drainer(tracer)
            drainer.start()
            tcp = measure(exe, tracer, drainer, "tcp", args.iterations, args.rounds, 2)
            # sampling on and nothing kept: what a shed syscall still costs (bpf/data.c
            # zt_sample decides at exit; the entry's work is done either way)
            tracer.set_keep(0)
            shed = measure(exe, tracer, drainer, "tcp", args.iterations, args.rounds, 2)
            tracer.set_keep(abi.KEEP_ALL)
            stats = tracer.stats()
            null = measure(exe, tracer, drainer, "devnull", args.iterations, args.rounds, 1)
            drainer.stop = True
            drainer.join()
            drops = tracer.drops()
            records = drainer.keep
            rate = decode_rate(records, tracer.wall_offset)
            live = drainer.events / (drainer.cpu_ns / 1e9) if drainer.cpu_ns else 0
    print("# probes: CPU ns per syscall, medians of", args.rounds, "alternating rounds")
    print(f"{'case':<34}{'untraced':>10}{'traced':>10}{'+kernel':>10}{'+agent':>10}"
          f"{'+total':>10}{'ratio':>8}")
    cases = (("tcp write/read 100 B (per syscall)", tcp),
             ("same, sampled out (keep 0)", shed), ("write 100 B to /dev/null", null))
    for name, r in cases:
        print(f"{name:<34}{r['untraced_ns']:>10.0f}{r['traced_ns']:>10.0f}"
              f"{r['added_kernel_ns']:>10.0f}{r['agent_ns']:>10.0f}{r['added_total_ns']:>10.0f}"
              f"{r['ratio']:>8.2f}")
    print(f"decode: {rate:,.0f} events/s on one core (SocketEvent from {len(records)} recorded"
          f" records); live drain+decode+offsets: {live:,.0f} events per agent CPU-second")
    print(f"kernel drops during the run: {drops}")
    print(f"ring: {stats['ring_records']} records, {stats['ring_bytes']} bytes "
          f"({stats['ring_bytes'] / max(1, stats['ring_records']):.0f} B a record); sampled out: "
          f"{stats['shed_syscalls']} syscalls")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
