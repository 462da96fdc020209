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
from bench.bench_live import prog_names, prog_runs
from bench.bench_tc import RunStats

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
            rounds: int, syscalls_per_iter: int, progs: dict | None = None) -> dict:
    """CPU per syscall untraced / traced (medians); with `progs`, the kernel's run time
    of each program over the traced rounds is added into it (prog_id -> [ns, runs])."""
    base, traced, agent = [], [], []
    me = os.getpid()
    for _ in range(rounds):
        tracer.pause()
        base.append(run_loop(exe, mode, n) / syscalls_per_iter)
        tracer.resume()
        ev0, cpu0 = drainer.events, drainer.cpu_ns
        if progs is not None:
            with RunStats():
                p0 = prog_runs(me)
                traced.append(run_loop(exe, mode, n) / syscalls_per_iter)
                p1 = prog_runs(me)
            for pid_, (t1, c1) in p1.items():
                t0, c0 = p0.get(pid_, (0, 0))
                acc = progs.setdefault(pid_, [0, 0])
                acc[0] += t1 - t0
                acc[1] += c1 - c0
        else:
            traced.append(run_loop(exe, mode, n) / syscalls_per_iter)
        time.sleep(0.1)  # let the drainer finish this round's events
        agent.append((drainer.cpu_ns - cpu0) / (n * syscalls_per_iter))
        if mode in ("tcp", "rr"):
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
            progs: dict[str, dict] = {"tcp": {}, "shed": {}, "devnull": {}}
            tcp = measure(exe, tracer, drainer, "tcp", args.iterations, args.rounds, 2,
                          progs["tcp"])
            # sampling on and nothing kept: what a shed syscall still costs (bpf/data.c
            # zt_sample decides at exit; the entry's work is done either way)
            tracer.set_keep(0)
            shed = measure(exe, tracer, drainer, "tcp", args.iterations, args.rounds, 2,
                           progs["shed"])
            # request/response (every syscall turns its socket's direction): kept, then
            # with sampling keeping ~1/64 (most syscalls shed at entry, bpf/data.c
            # zt_shed_at_entry)
            tracer.set_keep(abi.KEEP_ALL)
            rr = measure(exe, tracer, drainer, "rr", args.iterations, args.rounds, 4,
                         progs.setdefault("rr", {}))
            tracer.set_keep(abi.KEEP_ALL // 64)
            rr_shed = measure(exe, tracer, drainer, "rr", args.iterations, args.rounds, 4,
                              progs.setdefault("rr shed", {}))
            tracer.set_keep(abi.KEEP_ALL)
            stats = tracer.stats()
            null = measure(exe, tracer, drainer, "devnull", args.iterations, args.rounds, 1,
                           progs["devnull"])
            names = prog_names(os.getpid())
            drainer.stop = True
            drainer.join()
            drops = tracer.drops()
            records = drainer.keep
            rate = decode_rate(records, tracer.wall_offset)
            live = drainer.events / (drainer.cpu_ns / 1e9) if drainer.cpu_ns else 0
    print("# probes: CPU ns per syscall, medians of", args.rounds, "alternating rounds")
    print(f"{'case':<38}{'untraced':>10}{'traced':>10}{'+kernel':>10}{'+agent':>10}"
          f"{'+total':>10}{'ratio':>8}")
    cases = (("tcp write/read 100 B (per syscall)", tcp),
             ("same, sampled out (keep 0)", shed),
             ("request/response 100 B (per syscall)", rr),
             ("same, sampled (keep 1/64)", rr_shed), ("write 100 B to /dev/null", null))
    for name, r in cases:
        print(f"{name:<38}{r['untraced_ns']:>10.0f}{r['traced_ns']:>10.0f}"
              f"{r['added_kernel_ns']:>10.0f}{r['agent_ns']:>10.0f}{r['added_total_ns']:>10.0f}"
              f"{r['ratio']:>8.2f}")
    print("# kernel run time per program (BPF run-time stats, traced rounds; the loop's "
          "own syscalls and whatever else ran then)")
    for case, per in (("tcp", 2 * args.iterations), ("shed", 2 * args.iterations),
                      ("rr", 4 * args.iterations), ("rr shed", 4 * args.iterations),
                      ("devnull", args.iterations)):
        rows = sorted(((t, c, names.get(p, f"prog {p}")) for p, (t, c) in progs[case].items()
                       if c), reverse=True)
        total = sum(t for t, _c, _n in rows) / (args.rounds * per)
        print(f"{case}: {total:.0f} ns of BPF per loop syscall; " + "; ".join(
            f"{name[:40]} {t / c:.0f} ns/run x{c / (args.rounds * per):.2f}"
            for t, c, name in rows[:6]))
    print(f"decode: {rate:,.0f} events/s on one core (SocketEvent from {len(records)} recorded"
          f" records); live drain+decode+offsets: {live:,.0f} events per agent CPU-second")
    print(f"kernel drops during the run: {drops}")
    print(f"ring: {stats['ring_records']} records, {stats['ring_bytes']} bytes "
          f"({stats['ring_bytes'] / max(1, stats['ring_records']):.0f} B a record); sampled out: "
          f"{stats['shed_syscalls']} syscalls")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
