"""How often a Go wake-up before a pooled http.Client write is NOT the hand-off of that
request: the measurement behind agent/stitch/handoff.py.

    sudo .venv/bin/python -m bench.bench_gowake [--requests 160] [--concurrency 8]
        [--gogc 100] [--hog 0] [--rounds 1] [--noise] [--show-refused] [--cost|--micro]

Runs tests/stitch/services/gohop.go (GOMAXPROCS=2) in a network namespace in front of a
backend, under the real probes with the wake probes on, sends requests whose URL carries
a unique nonce and checks, for every request the transport's writeLoop writes to the
backend, the wake records between that goroutine's previous write and this one against
the truth (which nonce the waker goroutine had read from its own client).  Rules:
- any wake: exactly one runtime.ready of the writer, waker from R14 (g0 -> m.curg);
- any wake, thread goroutine: the same with the waker taken as the goroutine
  runtime.execute last put on the thread (what goid.c knows), as a naive probe would;
- hand-off (HandoffIndex): one receive, one value of known sender (a channel hand-off,
  or a value the writer took from the channel's buffer, named by the slot's records),
  nothing else.
--noise makes gohop wake goroutines for other reasons too (GOHOP_NOISE, gohop.go),
--gogc lowers GOGC (more GC wake-ups), --hog N runs N CPU hogs in the namespace,
--show-refused prints the records before each write the index refuses.
--cost: gohop's CPU a request and probe hits a request with the probes off, the hand-off
probes only (ZEROTRACE_GO_BUFFERS=0) and all; --micro: CPU per probe hit on a tight
buffered-channel loop."""

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
from agent.stitch.handoff import (
    KIND_NAMES,
    WAKE_DEQ,
    WAKE_DIRECT,
    WAKE_ENQ,
    WAKE_MIXED,
    WAKE_SWAP,
    HandoffIndex,
)
from agent.stitch.runtime import GOROUTINE_BASE

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "tests" / "stitch" / "services"
BACKEND, SERVICE = 9310, 9311
_WAKES = (abi.WAKE_HANDOFF, abi.WAKE_OTHER)  # runtime.ready records


def _cpu_s(pid: int) -> float:
    """CPU time of pid's threads so far, in seconds, to the nanosecond (schedstat: user
    and system time alike; uprobe handling is system time of the process)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread gone meanwhile
    return total / 1e9


PROBES = ("send", "ready", "chanrecv", "selectgo", "chansend", "recv", "typedmemmove",
          "newstack")


def _hits(tracer) -> dict[str, int]:
    """Uprobe hits so far per hand-off probe (bpf/gowake.c go_probe_hits, all CPUs)."""
    import ctypes as ct

    table = tracer._bpf[b"go_probe_hits"]
    return {name: sum(table[ct.c_int(i)]) for i, name in enumerate(PROBES)}


def run(requests: int, concurrency: int, gogc: int, hogs: int, noise: bool = False,
        handoffs: bool = True, cpu: list | None = None,
        buffers: bool = True) -> tuple[list, list, int]:
    """(socket events, wake events, gohop pid) of one loaded run; with `cpu`, gohop's
    CPU seconds during the load and the hand-off probes' hits are appended to it.
    buffers=False leaves the buffer probes off (ZEROTRACE_GO_BUFFERS=0)."""
    from agent.demo.services import go_binary
    from agent.probes.loader import ProbeConfig, SocketTracer
    from tests.helpers.netns import network
    from tests.stitch.hops import load, wait_ready

    binary = go_binary(SERVICES / "gohop.go", "gohop")
    os.environ["ZEROTRACE_GO_BUFFERS"] = "1" if buffers else "0"
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
                c0, h0 = _cpu_s(hop.pid), _hits(tracer)
                load(host, SERVICE, requests, concurrency)
                if cpu is not None:
                    h1 = _hits(tracer)
                    cpu.append(_cpu_s(hop.pid) - c0)
                    cpu.append({k: h1[k] - h0[k] for k in h1})
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


# --micro: one goroutine sending a value into a channel's buffer and taking it out again,
# its thread's CPU time per round trip; the probes it hits per round trip: chanrecv
# (hand-off probes), and chansend plus typedmemmove twice (buffer probes)
_MICRO_GO = """package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

type req struct{ p *int; n int }

// CPU time of this thread in ns (schedstat: exact, and blind to the time spent waiting
// for a CPU on a loaded machine)
func cpuNs() int64 {
	b, _ := os.ReadFile("/proc/thread-self/schedstat")
	v, _ := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
	return v
}

func main() {
	runtime.LockOSThread()
	ch := make(chan req, 1)
	x := 0
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() { // each line: how many round trips
		n, _ := strconv.Atoi(in.Text())
		t0 := cpuNs()
		for i := 0; i < n; i++ {
			ch <- req{&x, i}
			r := <-ch
			x += r.n
		}
		fmt.Println((cpuNs() - t0) / int64(n))
	}
}
"""


def micro(rounds: int, n: int = 20000) -> None:
    """ns per buffered channel round trip with no probes, with the hand-off probes and
    with the buffer probes too; the differences per probe hit."""
    import tempfile

    from agent.demo.services import CACHE_DIR, go_binary
    from agent.probes.loader import ProbeConfig, SocketTracer

    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        src = Path(tmp) / "gochanloop.go"
        src.write_text(_MICRO_GO)
        binary = go_binary(src, "gochanloop")
    p = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "GOMAXPROCS": "1"})
    assert p.stdout.readline().strip() == "ready"

    def once(k: int = n) -> int:
        p.stdin.write(f"{k}\n")
        p.stdin.flush()
        return int(p.stdout.readline())

    got: dict[str, list[int]] = collections.defaultdict(list)
    try:
        for _ in range(rounds):
            # schedstat moves in scheduler ticks: bare, many more round trips
            got["bare"].append(once(n * 200))
            for mode, buffers in (("wakes", False), ("all", True)):
                os.environ["ZEROTRACE_GO_BUFFERS"] = "1" if buffers else "0"
                with SocketTracer(ProbeConfig(pids={p.pid})) as tracer:
                    assert tracer.follow_go(p.pid).startswith("goroutine")
                    once()  # warm
                    got[mode].append(once())
    finally:
        p.kill()
        p.wait()
    best = {k: min(v) for k, v in got.items()}
    print(dict(got))
    print(f"buffered channel round trip, CPU ns, min of {rounds}: " + ", ".join(
        f"{k} {v} ns" for k, v in best.items()))
    print(f"hand-off probes: +{best['wakes'] - best['bare']} ns (1 hit: chanrecv); buffer "
          f"probes: +{best['all'] - best['wakes']} ns (3 hits: chansend, typedmemmove x2): "
          f"{(best['all'] - best['wakes']) / 3:.0f} ns per hit")


def _nonce(payload: bytes) -> str | None:
    from tests.stitch.hops import NONCE

    m = NONCE.search(payload.decode("latin-1"))
    return m.group(0) if m else None


def analyse(events: list, wakes: list, pid: int, show_refused: bool = False) -> dict:
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
    slot_recs: dict[int, list] = collections.defaultdict(list)  # address -> records
    for w in wakes:
        if w.pid == pid and w.kind in (WAKE_ENQ, WAKE_DEQ, WAKE_SWAP):
            slot_recs[w.waker].append(w)
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
            readies = [w for w in inside if w.kind in _WAKES]
            values = collections.Counter(KIND_NAMES[w.kind] for w in inside
                                         if w.kind in (WAKE_DEQ, WAKE_SWAP, WAKE_DIRECT,
                                                       WAKE_MIXED))
            c[f"values taken before write: {dict(values) or 'none'}"] += 1
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
            by_buffer = index.stats["answered by buffer"]
            got = index.waker(pid, GOROUTINE_BASE + w_goid, prev, ts)
            how = "buffer" if index.stats["answered by buffer"] > by_buffer else "wake"
            if got is None:
                c["hand-off: none"] += 1
                if show_refused:
                    print(f"refused: writer {w_goid} write {ts} ({nonce}), records since "
                          f"{prev}:")
                    for w in by_wakee.get(w_goid, ()):
                        if prev < w.ts < ts:
                            print(f"  {w.ts} {KIND_NAMES.get(w.kind, w.kind)} waker={w.waker:#x}"
                                  f" other={w.thread_goid} lost={w.lost}")
                            if w.kind in (WAKE_DEQ, WAKE_SWAP):
                                before = [x for x in slot_recs.get(w.waker, ()) if x.ts < w.ts]
                                for x in before[-2:]:
                                    print(f"    slot before: {x.ts} {KIND_NAMES[x.kind]} by "
                                          f"{x.goid} lost={x.lost}")
            else:
                ok = request_of(got[0] - GOROUTINE_BASE, got[1]) == nonce
                c[f"hand-off: {'right' if ok else 'WRONG'}"] += 1
                c[f"hand-off: {'right' if ok else 'WRONG'} (by {how})"] += 1
            prev = ts
    for w in wakes:
        if w.pid == pid and w.kind in _WAKES and not w.waker:
            # the scheduler readied it (timer, netpoll deadline, finalizer): no goroutine
            # did; runtime.execute's goroutine of the thread is stale there
            c["scheduler wakes: thread's goroutine (execute) names one"
              if w.thread_goid else "scheduler wakes: thread's goroutine none"] += 1
    kinds = collections.Counter(KIND_NAMES[w.kind] + ("" if w.waker or
                                w.kind not in _WAKES else " (scheduler)")
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
    ap.add_argument("--show-refused", action="store_true",
                    help="print the records before each write the index refuses")
    ap.add_argument("--micro", action="store_true",
                    help="ns per probe hit on a buffered channel round trip in a loop")
    ap.add_argument("--cost", action="store_true",
                    help="gohop CPU per request with the hand-off probes off and on")
    a = ap.parse_args()
    if a.micro:
        micro(max(a.rounds, 3))
        return
    if a.cost:
        # off: goroutines followed (runtime.execute) but no hand-off probes; wakes: the
        # hand-off probes without the buffer ones; all: every probe
        modes = {"off": (False, False), "wakes": (True, False), "all": (True, True)}
        got: dict[str, list] = {m: [] for m in modes}
        for _ in range(a.rounds):
            for mode, (on, buffers) in modes.items():
                cpu: list = []
                run(a.requests, a.concurrency, a.gogc, a.hog, a.noise, on, cpu, buffers)
                got[mode].append(cpu)
                hits = sum(cpu[1].values()) if on else 0
                print(f"{mode:5s}: gohop {cpu[0] / a.requests * 1e6:6.0f} us CPU per request,"
                      f" {hits / a.requests:5.1f} probe hits per request "
                      f"{ {k: round(v / a.requests, 2) for k, v in cpu[1].items() if v} }")
        base = sorted(c[0] for c in got["off"])[len(got["off"]) // 2]
        for mode in ("wakes", "all"):
            cpu_s = sorted(c[0] for c in got[mode])[len(got[mode]) // 2]
            hits = sorted(sum(c[1].values()) for c in got[mode])[len(got[mode]) // 2]
            extra = (cpu_s - base) / a.requests * 1e6
            print(f"median {mode}: +{extra:.0f} us CPU per request over off, "
                  f"{hits / a.requests:.1f} hits per request, "
                  f"{(cpu_s - base) / max(hits, 1) * 1e9:.0f} ns per hit")
        return
    total: collections.Counter = collections.Counter()
    for _ in range(a.rounds):
        events, wakes, pid = run(a.requests, a.concurrency, a.gogc, a.hog, a.noise)
        got = analyse(events, wakes, pid, a.show_refused)
        total.update(got)
    for k in sorted(total):
        print(f"{k:55s} {total[k]}")


if __name__ == "__main__":
    main()
