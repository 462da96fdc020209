"""Live: nginx + wrk saturating this VM, untraced and traced by the real `zerotrace agent`
process (not pinned), side by side in one run (issue 13's live and overload targets).

    sudo .venv/bin/python -m bench.bench_live [--rounds 2] [--duration 8] \\
        [--threads 2] [--connections 16] [--cpu-budget 0.5] [--env K=V ...]

nginx (one worker, a 612-byte static file, keep-alive) runs in one network namespace and
wrk in another (bench_pipeline.nginx_pair).  Rounds alternate: wrk with no agent running,
then the agent started (`--print none --netns A --netns B --metrics-port P`, ready when it
logs "tracing"), wrk again, the agent's /metrics scraped, the agent stopped.  Reported per
traced round and as medians:
- throughput ratio traced / untraced (wrk requests/s);
- kernel loss: events the ring had no room for, of all it was offered (records + lost);
- sampling: exchanges shed on purpose and kept (both ends count: 2 per request), the
  keep rate the agent ended on;
- ring cost: records and bytes per wrk request;
- spans: server spans per wrk request (`zerotrace_requests_total`), client+server spans;
- agent RSS (VmRSS sampled every 0.25 s): when ready (idle), steady under load (median of
  the samples in the second half of the wrk run), peak (load and drain); with --smaps,
  where the resident memory is under load (/proc/PID/smaps at 3/4 of the wrk run, by
  mapping kind: ring buffer, compiler libraries, anonymous heap ...);
- agent CPU (utime+stime of the process over the wrk run): cores and µs per request;
- with --prog-stats, each BPF program's kernel run time per wrk request (which
  tracepoints fire how often per request, ns a run): the probes' cost in nginx and wrk.
The machine's load (`uptime`) is printed with the figures: the VM is shared."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.bench_pipeline import nginx_pair, run_wrk

ROOT = Path(__file__).resolve().parents[1]
CLK = os.sysconf("SC_CLK_TCK")


def load() -> str:
    return open("/proc/loadavg").read().split(" ", 3)[:3].__str__()


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


_KINDS = (("ring buffer (bpf map)", re.compile(r"anon_inode:bpf")),
          ("LLVM/clang", re.compile(r"/lib(LLVM|clang)[^/]*\.so")),
          ("libbcc", re.compile(r"/libbcc[^/]*\.so")),
          ("heap [heap]", re.compile(r"^\[heap\]$")),
          ("stacks", re.compile(r"^\[stack")),
          ("our compiled modules", re.compile(r"/agent/.*\.so$")),
          ("python + other libraries", re.compile(r"\.so|/python")))


def smaps_mb(pid: int) -> dict[str, float]:
    """Resident MB of a process by mapping kind (anonymous: Python's object arenas, glibc's
    mmap'd chunks and thread arenas, and anything without a file; the kernel merges
    neighbouring anonymous mappings, so they are not told apart by size here)."""
    out: dict[str, float] = {}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and not head[0].endswith(":"):
                path = head[5].strip() if len(head) > 5 else ""
                kind = next((k for k, rx in _KINDS if rx.search(path)),
                            "anonymous" if not path else "other files")
            elif head[0] == "Rss:":
                out[kind] = out.get(kind, 0.0) + int(head[1]) / 1024
            elif head[0] in ("Private_Clean:", "Private_Dirty:"):
                # USS: what this process alone holds (what stopping it would free)
                out["(private, USS)"] = out.get("(private, USS)", 0.0) + int(head[1]) / 1024
            if head[0] in ("Shared_Clean:", "Shared_Dirty:") and kind == "LLVM/clang":
                # the compiler's pages other bcc processes map too: memtrim cannot give
                # those back (they are theirs as well)
                out["(LLVM/clang shared)"] = out.get("(LLVM/clang shared)", 0.0) + int(
                    head[1]) / 1024
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def comm_cpu_s(name: str, netns: int | None = None) -> float:
    """CPU seconds (user+system) of the running processes called `name` (nginx), in
    network namespace `netns` (inode) when given: other nginx processes on a shared
    machine come and go, and one that exits mid-run made the difference negative."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
            if netns is not None and os.stat(f"/proc/{d}/ns/net").st_ino != netns:
                continue
        except OSError:
            continue
        if raw[raw.index("(") + 1:raw.rindex(")")] == name:
            fields = raw.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def comm_schedstat(name: str, netns: int | None = None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the processes called
    `name` in network namespace `netns` (/proc/PID/schedstat; nginx's worker is one
    thread): whether a process that does not use its CPU waits for work or for a CPU."""
    run = wait = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() != name:
                    continue
            if netns is not None and os.stat(f"/proc/{d}/ns/net").st_ino != netns:
                continue
            with open(f"/proc/{d}/schedstat") as f:
                r, w, _n = f.read().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(r) / 1e9, wait + int(w) / 1e9
    return run, wait


def pin_comm(name: str, netns: int, cpu: int) -> None:
    """Confine the processes called `name` in network namespace `netns` to one CPU."""
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() != name or os.stat(f"/proc/{d}/ns/net").st_ino != netns:
                    continue
            os.sched_setaffinity(int(d), {cpu})
        except (OSError, ValueError):
            continue


def wrk_measured(net, url: str, args) -> dict:
    """run_wrk, and the CPU the traced programs spent per request (wrk: this process's
    waited-for children; nginx: its processes), in which the probes' own cost shows:
    tracepoints run in the context of the syscalls they trace."""
    ns = net.hosts[1].inode  # nginx_pair's server namespace
    t0, n0, m0 = os.times(), comm_cpu_s("nginx", ns), machine_cpu_s()
    s0 = comm_schedstat("nginx", ns)
    w = run_wrk(net, url, args.threads, args.connections, args.duration,
                taskset=["taskset", "-c", "1"] if args.pin else None)
    t1, n1, m1 = os.times(), comm_cpu_s("nginx", ns), machine_cpu_s()
    s1 = comm_schedstat("nginx", ns)
    wrk = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
    n = w["requests"]
    w["app_us_per_req"] = (wrk + n1 - n0) * 1e6 / n if n else 0.0
    wall = t1.elapsed - t0.elapsed
    # the whole machine over the run, in cores: what nginx, wrk (and the agent) did not
    # spend went to other tasks, interrupts, the hypervisor (steal) or nothing (idle)
    w["machine"] = {k: (m1[k] - m0[k]) / wall for k in m1}
    w["app_cores"] = (wrk + n1 - n0) / wall
    w["nginx_cores"] = (n1 - n0) / wall
    # nginx's time: on a CPU, runnable but waiting for one, and the rest asleep (no work)
    w["nginx_run"], w["nginx_wait"] = ((b - a) / wall for a, b in zip(s0, s1, strict=True))
    return w


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_s() -> dict[str, float]:
    """CPU seconds of the whole machine by kind, from /proc/stat's first line (the
    softirq time of packets on loopback and veths is not in any process's times)."""
    with open("/proc/stat") as f:
        vals = f.readline().split()[1:1 + len(_STAT_FIELDS)]
    hz = os.sysconf("SC_CLK_TCK")
    return {k: int(v) / hz for k, v in zip(_STAT_FIELDS, vals, strict=True)}


def prog_runs(pid: int) -> dict[int, tuple[int, int]]:
    """prog_id -> (run_time_ns, run_cnt) of every BPF program process pid holds (the
    kernel counts only while BPF run-time statistics are on: bench_tc.RunStats)."""
    out: dict[int, tuple[int, int]] = {}
    d = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(d):
        try:
            with open(f"{d}/{fd}") as f:
                kv = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if "prog_id" in kv and "run_cnt" in kv:
            out[int(kv["prog_id"])] = (int(kv["run_time_ns"]), int(kv["run_cnt"]))
    return out


def prog_names(pid: int) -> dict[int, str]:
    """prog_id -> the tracepoints/probes it is attached to in process pid (bpftool's
    program names stop at 15 characters: all of ours read "tracepoint__sys")."""
    import json

    try:
        rows = json.loads(subprocess.run(["bpftool", "perf", "show", "--json"], check=True,
                                         capture_output=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return {}
    names: dict[int, list[str]] = {}
    for r in rows:
        if r.get("pid") == pid:
            what = r.get("tracepoint") or r.get("func") or r.get("filename") or r["fd_type"]
            names.setdefault(r["prog_id"], []).append(str(what).rsplit("/", 1)[-1])
    return {k: ",".join(sorted(set(v))) for k, v in names.items()}


def prog_report(before: dict, after: dict, names: dict[int, str], requests: int) -> list[str]:
    """Per program: runs and ns per wrk request, ns a run, largest first."""
    rows = []
    for pid_, (t1, c1) in after.items():
        t0, c0 = before.get(pid_, (0, 0))
        if c1 > c0:
            rows.append((t1 - t0, c1 - c0, names.get(pid_, f"prog {pid_}")))
    rows.sort(reverse=True)
    n = max(1, requests)
    total = sum(t for t, _c, _n in rows)
    out = [f"BPF programs (kernel run-time stats): {total / n:,.0f} ns a request in all"]
    out += [f"  {t / n:7.0f} ns/req  {c / n:5.2f} runs/req  {t / c:6.0f} ns/run  {name[:90]}"
            for t, c, name in rows]
    return out


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


_METRIC = re.compile(r'^(zerotrace_\w+?)(\{[^}]*\})? ([0-9.e+-]+)$', re.M)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for name, labels, value in _METRIC.findall(text):
        # labels in alphabetical order, whatever order the exposition used
        pairs = sorted(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if pairs else "")
        out[key] = out.get(key, 0.0) + float(value)
        out[name + "{*}"] = out.get(name + "{*}", 0.0) + float(value)
    return out


class Agent:
    """The agent as a process: started, waited for, sampled, stopped."""

    def __init__(self, netns: list[str], port: int, env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "agent.cli", "agent", "--print", "none",
               "--metrics-port", str(port)]
        for n in netns:
            cmd += ["--netns", n]
        self.port = port
        self.p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **env}, start_new_session=True)
        self.log: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.rss: list[tuple[float, float]] = []  # (monotonic time, MB)
        self._sampling = False

    def _read(self) -> None:
        for line in self.p.stderr:
            self.log.append(line.rstrip())
            if "tracing; stop with" in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 120) -> float:
        t0 = time.monotonic()
        if not self.ready.wait(timeout):
            self.stop()
            raise RuntimeError("agent not ready:\n" + "\n".join(self.log[-20:]))
        time.sleep(0.5)  # its metrics server
        return time.monotonic() - t0

    def sample(self) -> None:
        self._sampling = True

        def run() -> None:
            while self._sampling and self.p.poll() is None:
                try:
                    self.rss.append((time.monotonic(), proc_rss_mb(self.p.pid)))
                except OSError:
                    return
                time.sleep(0.25)

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> list[str]:
        self._sampling = False
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self._reader.join(timeout=10)
        return self.log


def traced_round(net, url: str, args, env: dict[str, str]) -> dict:
    a = Agent([h.path for h in net.hosts], args.metrics_port, env)
    try:
        ready_s = a.wait_ready()
        rss_idle = proc_rss_mb(a.p.pid)
        smaps_idle = smaps_mb(a.p.pid) if args.smaps else {}
        m0 = scrape(a.port)
        cpu0 = proc_cpu_s(a.p.pid)
        a.sample()
        smaps: list[dict[str, float]] = []
        if args.smaps:
            def snap() -> None:
                smaps.append(smaps_mb(a.p.pid))
                if env.get("ZEROTRACE_MEMORY_REPORT", "0") != "0":
                    a.p.send_signal(signal.SIGUSR1)  # the agent reports its heap now

            timer = threading.Timer(0.75 * args.duration, snap)
            timer.start()
        t0 = time.monotonic()
        if args.prog_stats:
            from bench.bench_tc import RunStats

            with RunStats():
                p0 = prog_runs(a.p.pid)
                w = wrk_measured(net, url, args)
                p1 = prog_runs(a.p.pid)
            progs = prog_report(p0, p1, prog_names(a.p.pid), w["requests"])
        else:
            w, progs = wrk_measured(net, url, args), []
        t1 = time.monotonic()
        cpu_s = proc_cpu_s(a.p.pid) - cpu0
        time.sleep(2.0)  # the tail drains, keep-alive connections stay open
        m1 = scrape(a.port)
    finally:
        log = a.stop()
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    n = w["requests"]
    lost = d.get('zerotrace_stage_events_total{reason="ringbuf_full",stage="kernel"}', 0.0)
    records = d.get("zerotrace_ring_records_total", 0.0)
    rss = [mb for _t, mb in a.rss] or [0.0]
    mid = t0 + (t1 - t0) / 2
    half = [mb for t, mb in a.rss if mid <= t <= t1] or rss
    out = dict(w)
    out.update({
        "ready_s": ready_s,
        "lost": lost,
        "loss": lost / (records + lost) if records + lost else 0.0,
        "records_per_req": records / n if n else 0.0,
        "bytes_per_req": d.get("zerotrace_ring_bytes_total", 0.0) / n if n else 0.0,
        "shed": d.get("zerotrace_shed_exchanges_total", 0.0),
        "kept": d.get("zerotrace_sampled_kept_exchanges_total", 0.0),
        "shed_conns": d.get("zerotrace_shed_connections_total", 0.0),
        "keep_ratio": m1.get("zerotrace_sampling_keep_ratio", 1.0),
        "server_spans": d.get("zerotrace_requests_total{*}", 0.0),
        "spans": d.get('zerotrace_stage_events_total{reason="spans",stage="assembler"}', 0.0),
        "cpu_s": cpu_s,
        "cores": cpu_s / args.duration,
        "us_per_req": cpu_s * 1e6 / n if n else 0.0,
        "rss_idle": rss_idle,
        "rss_steady": statistics.median(half),
        "rss_peak": max(rss),
        # the resident memory each second from the load's start (the drain included)
        "rss_by_s": [max((mb for t, mb in a.rss if t0 + k <= t < t0 + k + 1), default=0.0)
                     for k in range(int(t1 - t0) + 2)],
        "smaps": smaps[0] if smaps else {},
        "smaps_idle": smaps_idle,
        "progs": progs,
        "exit": [line for line in log if line.startswith("zerotrace:")][-6:]
        + [line for line in log if line.startswith("zerotrace-mem:")],
    })
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--metrics-port", type=int, default=19464)
    ap.add_argument("--cpu-budget", type=float, default=None,
                    help="ZEROTRACE_CPU_BUDGET for the agent (cores; 0: no CPU limit)")
    ap.add_argument("--env", action="append", default=[], help="K=V for the agent")
    ap.add_argument("--smaps", action="store_true",
                    help="where the agent's resident memory is, under load (smaps by kind)")
    ap.add_argument("--prog-stats", action="store_true",
                    help="the kernel's run time of each BPF program per wrk request (BPF "
                         "run-time statistics on during traced wrk runs: a little slower)")
    ap.add_argument("--pin", action="store_true",
                    help="nginx on CPU 0 and wrk on CPU 1 (the agent not pinned): a figure "
                         "without the scheduler's placement of the two, next to the unpinned "
                         "one the issue asks for")
    ap.add_argument("--compare-off", action="store_true",
                    help="each round also traced with shedding off (ZEROTRACE_SHEDDING=0)")
    ap.add_argument("--compare", action="append", default=[], metavar="K=V[,K=V]",
                    help="each round also traced with these agent settings (repeatable): "
                         "variants side by side under the same load")
    args = ap.parse_args(argv or [])
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("bench_live needs wrk and nginx (scripts/setup.sh)")
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.cpu_budget is not None:
        env["ZEROTRACE_CPU_BUDGET"] = str(args.cpu_budget)
    variants: list[tuple[str, dict[str, str]]] = [("", env)]
    if args.compare_off:
        variants.append(("shedding off ", {**env, "ZEROTRACE_SHEDDING": "0"}))
    for spec in args.compare:
        extra = dict(kv.split("=", 1) for kv in spec.split(","))
        variants.append((f"[{spec}] ", {**env, **extra}))
    base: list[dict] = []
    traced: list[list[dict]] = [[] for _ in variants]
    load0 = load()
    with nginx_pair() as (net, url):
        if args.pin:
            pin_comm("nginx", net.hosts[1].inode, 0)
        for i in range(args.rounds):
            base.append(wrk_measured(net, url, args))
            # variants in turn, rotated each round so no one always runs last
            order = [(i + k) % len(variants) for k in range(len(variants))]
            for k in order:
                traced[k].append(traced_round(net, url, args, variants[k][1]))
            for k in range(len(variants)):
                _print_round(i, variants[k][0], base[-1], traced[k][-1])
    for (what, venv), rows in zip(variants, traced, strict=True):
        _report(args, venv, load0, base, rows, what.replace("shedding off ", "shedding off: "))


def _print_round(i: int, what: str, b: dict, r: dict) -> None:
    print(f"  round {i + 1} {what}(load {load()}): untraced {b['rps']:,.0f} req/s, "
          f"traced {r['rps']:,.0f} req/s; loss {r['loss']:.3%} ({r['lost']:.0f} lost), "
          f"shed {r['shed']:.0f} kept {r['kept']:.0f} exchanges (keep "
          f"{r['keep_ratio']:.3f}), {r['records_per_req']:.2f} records "
          f"{r['bytes_per_req']:.0f} B per request, server spans "
          f"{r['server_spans']:.0f}, agent {r['cores']:.2f} cores "
          f"{r['us_per_req']:.1f} us/req, nginx+wrk {b['app_us_per_req']:.1f} -> "
          f"{r['app_us_per_req']:.1f} us/req, RSS ready {r['rss_idle']:.0f} MB, under load "
          f"{r['rss_steady']:.0f} MB (peak {r['rss_peak']:.0f})", flush=True)
    for who, row, extra in (("untraced", b, 0.0), ("traced", r, r["cores"])):
        m = row.get("machine")
        if m:
            busy = sum(v for k, v in m.items() if k not in ("idle", "iowait", "steal"))
            other = busy - row["app_cores"] - extra
            print(f"    machine {who} (cores): busy {busy:.2f} of which nginx+wrk "
                  f"{row['app_cores']:.2f} (nginx {row['nginx_cores']:.2f}), agent "
                  f"{extra:.2f}, other {other:.2f} "
                  f"(softirq {m['softirq']:.2f}); idle {m['idle'] + m['iowait']:.2f}, "
                  f"steal {m['steal']:.2f}; nginx on a CPU {row['nginx_run']:.2f}, "
                  f"waiting for one {row['nginx_wait']:.2f}, asleep "
                  f"{1 - row['nginx_run'] - row['nginx_wait']:.2f}")
    for when, key in (("ready", "smaps_idle"), ("under load", "smaps")):
        if r.get(key):
            print(f"    resident {when} by kind (MB): " + ", ".join(
                f"{k.strip()} {v:.1f}" for k, v in r[key].items() if v >= 0.05))
    if r.get("smaps"):
        print("    RSS each second of the load (MB): " + " ".join(
            f"{mb:.0f}" for mb in r["rss_by_s"]))
    for line in r.get("progs", []):
        print("    " + line)
    for line in r["exit"]:
        print("    " + line)


def _report(args, env: dict, load0: str, base: list, traced: list, what: str) -> None:
    med = lambda rows, k: statistics.median(x[k] for x in rows)  # noqa: E731
    b, t = med(base, "rps"), med(traced, "rps")
    print(f"# {what}live: wrk -t{args.threads} -c{args.connections} -d{args.duration}s on nginx "
          f"(612 B, keep-alive), {'nginx on CPU 0 and wrk on CPU 1, ' if args.pin else ''}"
          f"agent not pinned, env {env or '{}'}; medians of "
          f"{args.rounds}; load before {load0}, after {load()} (shared VM)")
    print(f"throughput untraced {b:,.0f} traced {t:,.0f} req/s: ratio {t / b:.2f} (target 0.8)")
    print(f"kernel loss {med(traced, 'loss'):.3%} of events (target 0.1 %); shed "
          f"{med(traced, 'shed'):.0f} / kept {med(traced, 'kept'):.0f} exchanges (2 per "
          f"request), keep rate at the end {med(traced, 'keep_ratio'):.3f}")
    print(f"ring: {med(traced, 'records_per_req'):.2f} records, "
          f"{med(traced, 'bytes_per_req'):.0f} bytes per request")
    a0, a1 = med(base, "app_us_per_req"), med(traced, "app_us_per_req")
    ag = med(traced, "us_per_req")
    print(f"CPU per request: nginx+wrk untraced {a0:.1f} us, traced {a1:.1f} us (the probes' "
          f"cost in the traced programs {a1 - a0:+.1f} us), agent {ag:.1f} us: overhead "
          f"{(a1 - a0 + ag) / a0:.0%} of the untraced cost (a ratio of 0.8 on a saturated "
          f"machine allows 25 %)" if a0 else "")
    print(f"agent: RSS ready {med(traced, 'rss_idle'):.0f} MB, steady under load "
          f"{med(traced, 'rss_steady'):.0f} MB, peak "
          f"{max(r['rss_peak'] for r in traced):.0f} MB (target 150); CPU "
          f"{med(traced, 'cores'):.2f} cores, {med(traced, 'us_per_req'):.1f} us per wrk "
          f"request; ready in {med(traced, 'ready_s'):.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
