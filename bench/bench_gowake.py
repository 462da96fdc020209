"""How often a Go wake-up before a pooled http.Client write is NOT the hand-off of that
request: the measurement behind agent/stitch/handoff.py.

    sudo .venv/bin/python -m bench.bench_gowake [--requests 160] [--concurrency 8]
        [--gogc 100] [--hog 0] [--rounds 1]

Runs tests/stitch/services/gohop.go (GOMAXPROCS=2) in a network namespace in front of a
backend, under the real probes with the wake probes on, sends requests whose URL carries
a unique nonce and checks, for every request the transport's writeLoop writes to the
backend, the wake records between that goroutine's previous write and this one against
the truth (which nonce the waker goroutine had read from its own client).  Rules:
- any wake: exactly one runtime.ready of the writer, waker from R14 (g0 -> m.curg);
- any wake, thread goroutine: the same with the waker taken as the goroutine
  runtime.execute last put on the thread (what goid.c knows), as a naive probe would;
- hand-off (HandoffIndex): one receive, one channel hand-off, nothing else.
--noise makes gohop wake goroutines for other reasons too (GOHOP_NOISE, gohop.go),
--gogc lowers GOGC (more GC wake-ups), --hog N runs N CPU hogs in the namespace."""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.probes import abi
from agent.stitch.handoff import HandoffIndex
from agent.stitch.runtime import GOROUTINE_BASE

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "tests" / "stitch" / "services"
BACKEND, SERVICE = 9310, 9311


def _cpu_s(pid: int) -> float:
    """User + system CPU of pid so far (uprobe handling is system time of the process)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(requests: int, concurrency: int, gogc: int, hogs: int, noise: bool = False,
        handoffs: bool = True, cpu: list | None = None) -> tuple[list, list, int]:
    """(socket events, wake events, gohop pid) of one loaded run; with `cpu`, gohop's
    CPU seconds during the load are appended to it."""
    from agent.demo.services import go_binary
    from agent.probes.loader import ProbeConfig, SocketTracer
    from tests.helpers.netns import network
    from tests.stitch.hops import load, wait_ready

    binary = go_binary(SERVICES / "gohop.go", "gohop")
    with network(1, subnet=236) as net:
        host = net.hosts[0]
        backend = net.spawn(host, sys.executable, str(SERVICES / "backend.py"), str(BACKEND),
                            stdout=subprocess.PIPE, text=True)
        env = {**os.environ, "GOMAXPROCS": "2", "GOGC": str(gogc),
               "GOHOP_NOISE": "1" if noise else "0"}
        hop = net.spawn(host, str(binary), str(SERVICE), f"http://127.0.0.1:{BACKEND}",
                        stdout=subprocess.PIPE, text=True, env=env)
        wait_ready(backend, "backend")
        wait_ready(hop, "gohop")
        for _ in range(hogs):
            net.spawn(host, sys.executable, "-c", "while True: pass")
        events: list = []
        wakes: list = []
        with SocketTracer(ProbeConfig(netns={host.inode}, go_handoffs=handoffs)) as tracer:
            how = tracer.follow_go(hop.pid)
            assert how.startswith("goroutine"), how
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set():
                    b = tracer.poll(0.05)
                    events.extend(b)
                    wakes.extend(b.wakes)

            th = threading.Thread(target=drain)
            th.start()
            try:
                load(host, SERVICE, min(requests, 16), concurrency)  # connections, warm-up
                c0 = _cpu_s(hop.pid)
                load(host, SERVICE, requests, concurrency)
                if cpu is not None:
                    cpu.append(_cpu_s(hop.pid) - c0)
                time.sleep(1.0)
            finally:
                stop.set()
                th.join()
            b = tracer.poll(0.05)
            events.extend(b)
            wakes.extend(b.wakes)
            drops = tracer.drops()
        if any(drops.values()):
            print(f"kernel drops: {drops}")
        return events, wakes, hop.pid


def _nonce(payload: bytes) -> str | None:
    from tests.stitch.hops import NONCE

    m = NONCE.search(payload.decode("latin-1"))
    return m.group(0) if m else None


def analyse(events: list, wakes: list, pid: int) -> dict:
    """Counts per rule: right, wrong, none; and what the wakes before writes were."""
    reads: dict[int, list] = collections.defaultdict(list)  # goid -> [(ts, nonce)]
    writes: dict[int, list] = collections.defaultdict(list)  # goid -> [(ts, nonce)]
    for e in events:
        if e.pid != pid or e.type != abi.EV_DATA or not e.goid:
            continue
        if e.direction == abi.DIR_INGRESS and e.lport == SERVICE:
            n = _nonce(e.payload)
            if n:
                reads[e.goid].append((e.ts_exit, n))
        elif e.direction == abi.DIR_EGRESS and e.rport == BACKEND:
            writes[e.goid].append((e.ts_enter, _nonce(e.payload)))
    for v in (*reads.values(), *writes.values()):
        v.sort()
    by_wakee: dict[int, list] = collections.defaultdict(list)
    index = HandoffIndex(per_goroutine=1 << 30)  # queried after the run, not live
    for w in wakes:
        if w.pid == pid:
            by_wakee[w.goid].append(w)
    index.add_all(w for w in wakes if w.pid == pid)
    for v in by_wakee.values():
        v.sort(key=lambda w: w.ts)

    def request_of(goid: int, ts: int) -> str | None:
        """The nonce goroutine goid read last before ts (its context then)."""
        best = None
        for rts, n in reads.get(goid, ()):
            if rts < ts:
                best = n
        return best

    c: collections.Counter = collections.Counter()
    for w_goid, ws in writes.items():
        prev = 0
        for ts, nonce in ws:
            if nonce is None:
                prev = ts
                continue
            c["writes"] += 1
            inside = [w for w in by_wakee.get(w_goid, ()) if prev < w.ts < ts]
            readies = [w for w in inside if w.kind != abi.WAKE_RECV]
            c[f"readies before write: {min(len(readies), 3)}"] += 1
            for w in readies:
                if not w.waker:
                    c["wake: by the scheduler (g0, no curg)"] += 1
                elif w.kind == abi.WAKE_HANDOFF:
                    ok = request_of(w.waker, w.ts) == nonce
                    c["wake: hand-off of this request" if ok
                      else "wake: hand-off, NOT this request"] += 1
                else:
                    c["wake: other (not a hand-off)"] += 1
                if w.waker and w.thread_goid != w.waker:
                    c["wake: thread's goroutine (execute) != waker (R14)"] += 1
            # rule 1 and 2: exactly one wake of any kind
            if len(readies) == 1:
                w = readies[0]
                for rule, waker in (("any wake", w.waker), ("any wake, thread goroutine",
                                                            w.thread_goid)):
                    if not waker:
                        c[f"{rule}: none"] += 1
                    else:
                        ok = request_of(waker, w.ts) == nonce
                        c[f"{rule}: {'right' if ok else 'WRONG'}"] += 1
            else:
                c["any wake: none"] += 1
                c["any wake, thread goroutine: none"] += 1
            got = index.waker(pid, GOROUTINE_BASE + w_goid, prev, ts)
            if got is None:
                c["hand-off: none"] += 1
            else:
                ok = request_of(got[0] - GOROUTINE_BASE, got[1]) == nonce
                c[f"hand-off: {'right' if ok else 'WRONG'}"] += 1
            prev = ts
    for w in wakes:
        if w.pid == pid and w.kind != abi.WAKE_RECV and not w.waker:
            # the scheduler readied it (timer, netpoll deadline, finalizer): no goroutine
            # did; runtime.execute's goroutine of the thread is stale there
            c["scheduler wakes: thread's goroutine (execute) names one"
              if w.thread_goid else "scheduler wakes: thread's goroutine none"] += 1
    kinds = collections.Counter(abi.WAKE_KIND_NAMES[w.kind] + ("" if w.waker or
                                w.kind == abi.WAKE_RECV else " (scheduler)")
                                for w in wakes if w.pid == pid)
    c.update({f"records: {k}": v for k, v in kinds.items()})
    return dict(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--gogc", type=int, default=100)
    ap.add_argument("--hog", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--noise", action="store_true",
                    help="GOHOP_NOISE=1: timers, deadlines, a contended mutex, idle closes")
    ap.add_argument("--cost", action="store_true",
                    help="gohop CPU per request with the hand-off probes off and on")
    a = ap.parse_args()
    if a.cost:
        for _ in range(a.rounds):
            for on in (False, True):
                cpu: list = []
                run(a.requests, a.concurrency, a.gogc, a.hog, a.noise, on, cpu)
                print(f"hand-off probes {'on ' if on else 'off'}: gohop "
                      f"{cpu[0] / a.requests * 1e6:.0f} us CPU per request")
        return
    total: collections.Counter = collections.Counter()
    for _ in range(a.rounds):
        events, wakes, pid = run(a.requests, a.concurrency, a.gogc, a.hog, a.noise)
        got = analyse(events, wakes, pid)
        total.update(got)
    for k in sorted(total):
        print(f"{k:55s} {total[k]}")


if __name__ == "__main__":
    main()
