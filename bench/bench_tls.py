"""Cost of the TLS uprobes (bpf/tls.c): CPU ns per SSL_read/SSL_write, traced vs
untraced, side by side in one run.

    sudo .venv/bin/python -m bench.bench_tls [--rounds 5] [--iterations 20000] [--size 64]
    sudo .venv/bin/python -m bench.bench_tls --go [...]     Go crypto/tls (bpf/gotls.c)
    sudo .venv/bin/python -m bench.bench_tls --nginx [--rounds 5] [--duration 5]
                                       HTTPS throughput: wrk -> nginx over TLS

With --nginx, nginx (one worker, a 612-byte static file, keep-alive) serves HTTPS in a
network namespace and wrk (which links the system libssl too: both ends traced) loads
it from another; rounds alternate "no agent" (every probe detached), "socket probes
only", then the TLS modes below; reported: wrk's requests/s and the CPU of nginx and of
wrk per request per mode (medians), the ratios to "no agent", and the uprobe hits per
request of each process.  The agent's side is a drainer (poll only, no parsing): this
isolates what the probes cost the traced programs.

With --go, tests/tls/programs/gotls.go's loop mode does the same ping-pong between a
client and a server goroutine of one Go process (crypto/tls), and the CPU ns are the
process's per crypto/tls call (Write or Read, 4 a round trip); the empty uprobes sit
where bpf/gotls.c's do.

bench/tls_loop.c ping-pongs `size` bytes over TLS on loopback TCP (a client and a
forked server, the system libssl).  Rounds alternate the TLS modes, the socket probes
attached in all: TLS uprobes detached ("untraced"); programs that only count their hits
where TlsAttacher puts the probes, with a return probe on every site as before session 5
("empty, before") or on all but the writes, as now ("empty, same sites": the trap cost
alone, the floor of this design); bpf/tls.c's programs with the writes' return probes
("traced, before": ZEROTRACE_TLS_WRITE_RETURN=1) or without ("traced").
An agent thread drains the ring throughout.
Per round: each process's CPU ns per SSL call (a round trip is 2 calls on each side)
and wall ns per round trip; medians reported.  With --nginx, each program's own run
time per request (kernel.bpf_stats_enabled) too.  What "traced" adds over "empty, same
sites": the per-thread call state, the syscall-enter program's work inside SSL calls,
and the plaintext event (header + up to 1 KiB into the ring)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.probes.loader import ProbeConfig, SocketTracer

HERE = Path(__file__).resolve().parent
PORT = 47311
GO_PORT = 47312


class Drainer(threading.Thread):
    """The agent's consumer, so the ring never fills (a full ring would be cheaper)."""

    def __init__(self, tracer: SocketTracer) -> None:
        super().__init__(daemon=True)
        self.tracer, self.events, self.stop = tracer, 0, False
        # poll() also scans for processes and attaches: the tracer is not thread-safe,
        # so a round changing probes holds this
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop:
            with self.lock:
                self.events += len(self.tracer.poll(0.02))


# "before": writes with a return probe too (ZEROTRACE_TLS_WRITE_RETURN=1), the design
# until session 5; the others: writes at entry only (bpf/tls.c ZT_TLS_NORET)
MODES = ("untraced", "empty, before", "empty, same sites", "traced, before", "traced")


class EmptyProbes:
    """Programs that do nothing but count their hits, entry and return, at given sites:
    what the uprobes cost on this host before any work of ours.  Sites: where
    TlsAttacher puts them, with a return probe on every site ("before") or not on the
    writes (now)."""

    def __init__(self, sites: list[tuple[str, str, int, bool]]) -> None:
        from bcc import BPF

        # hits by process name (nginx, wrk, tls_loop): a hash update, ~0.1 us next to
        # a trap of 1-12 us
        self.bpf = BPF(text=b"struct zt_comm { char c[16]; };\n"
                            b"BPF_HASH(zt_traps, struct zt_comm, u64, 64);\n"
                            b"int zt_nop(void *ctx) { struct zt_comm k = {};"
                            b" bpf_get_current_comm(k.c, sizeof(k.c));"
                            b" zt_traps.increment(k); return 0; }")
        self.sites = sites  # (path, symbol or "", address, with a return probe)
        self.attached: list[tuple[str, str, int]] = []

    @staticmethod
    def same_sites(paths: list[str], write_return: bool) -> list[tuple[str, str, int, bool]]:
        from agent.probes import tls

        out = []
        for p in paths:
            inner = tls.inner_functions(p)
            for kind, (ex, plain) in tls.INNER.items():
                ret = write_return or kind != "write"
                out += ([(p, "", inner[kind], ret)] if kind in inner
                        else [(p, plain, 0, ret), (p, ex, 0, ret)])
            out.append((p, "SSL_do_handshake", 0, True))
        return out

    def traps(self) -> dict[str, int]:
        """Hits so far by process name (entry and return each count)."""
        return {k.c.decode(): v.value for k, v in self.bpf[b"zt_traps"].items()}

    def attach(self) -> None:
        for p, sym, addr, ret in self.sites:
            where = {"sym": sym.encode()} if sym else {"addr": addr}
            try:
                self.bpf.attach_uprobe(name=p.encode(), fn_name=b"zt_nop", **where)
            except Exception:  # noqa: BLE001 - an _ex symbol absent (1.0.x)
                continue
            if ret:
                self.bpf.attach_uretprobe(name=p.encode(), fn_name=b"zt_nop", **where)
            self.attached.append((p, sym, addr))

    def detach(self) -> None:
        for p, sym, addr in self.attached:
            where = {"sym": sym.encode()} if sym else {"addr": addr}
            for f in (self.bpf.detach_uprobe, self.bpf.detach_uretprobe):
                try:
                    f(name=p.encode(), **where)
                except Exception:  # noqa: BLE001 - best effort
                    pass
        self.attached = []


def _empty(paths: list[str]) -> dict[str, EmptyProbes]:
    return {"empty, before": EmptyProbes(EmptyProbes.same_sites(paths, True)),
            "empty, same sites": EmptyProbes(EmptyProbes.same_sites(paths, False))}


def prog_stats(bpf) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each program of `bpf` loaded so far, from its fdinfo
    (counted while kernel.bpf_stats_enabled is 1): steadier than requests/s on a busy
    host, since it counts only the programs' own time."""
    out = {}
    for name, fn in list(bpf.funcs.items()):
        try:
            with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                kv = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if "run_time_ns" in kv:
            n = name.decode() if isinstance(name, bytes) else name
            out[n] = (int(kv["run_time_ns"]), int(kv["run_cnt"]))
    return out


class BpfStats:
    """kernel.bpf_stats_enabled on for the run (restored at the end)."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self) -> BpfStats:
        with open(self.PATH) as f:
            self.was = f.read().strip()
        with open(self.PATH, "w") as f:
            f.write("1")
        return self

    def __exit__(self, *exc) -> None:
        with open(self.PATH, "w") as f:
            f.write(self.was)


def set_mode(tracer: SocketTracer, empty: dict[str, EmptyProbes], mode: str) -> None:
    """TLS probes as `mode` says (the socket probes stay): bpf/tls.c's with or without
    the writes' return probes, empty programs at the same sites, or none."""
    tracer.tls.detach_all()
    if mode.startswith("traced"):
        tracer.tls.write_return = mode == "traced, before"
        tracer.tls.reattach_all()
        tracer.tls.write_return = False
    elif mode.startswith("empty"):
        empty[mode].attach()


def build(tmp: str) -> tuple[str, str, str]:
    exe = os.path.join(tmp, "tls_loop")
    subprocess.run(["cc", "-O2", "-o", exe, str(HERE / "tls_loop.c"), "-lssl", "-lcrypto"],
                   check=True)
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    key, "-out", cert, "-days", "1", "-subj", "/CN=bench"], check=True,
                   capture_output=True)
    return exe, cert, key


def run_loop(exe: str, cert: str, key: str, iters: int, size: int) -> tuple[float, ...]:
    r = subprocess.run([exe, str(PORT), str(iters), str(size), cert, key],
                       capture_output=True, text=True, timeout=600, check=True)
    return tuple(float(x) for x in r.stdout.split())


class GoEmptyProbes:
    """Programs that do nothing at every point bpf/gotls.c probes in a Go binary."""

    def __init__(self, binary: str) -> None:
        from bcc import BPF

        from agent.probes import gotls

        self.bpf = BPF(text=b"int zt_nop(void *ctx) { return 0; }")
        f = gotls.facts(binary)
        self.name = binary.encode()
        self.sites = [(sym, off) for sym, off, _fn in gotls.probe_plan(binary, f)]
        self.attached: list[tuple[str, int]] = []

    def attach(self) -> None:
        for sym, off in self.sites:
            self.bpf.attach_uprobe(name=self.name, sym=sym.encode(), fn_name=b"zt_nop",
                                   sym_off=off)
            self.attached.append((sym, off))

    def detach(self) -> None:
        for sym, off in self.attached:
            self.bpf.detach_uprobe(name=self.name, sym=sym.encode(), sym_off=off)
        self.attached = []


def go_round(tracer: SocketTracer, drain: Drainer, binary: str, mode: str,
             empty: GoEmptyProbes, iters: int, size: int, cert: str,
             key: str) -> tuple[float, ...]:
    """One Go loop process: started, probed by the scan (as the agent would), then the
    probes left (traced), detached (untraced) or replaced by empty ones, then run."""
    p = subprocess.Popen([binary, "loop", str(iters), str(size), cert, key],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "GOTLS_LOOP_ADDR": f"127.0.0.1:{GO_PORT}"})
    try:
        assert p.stdout.readline().strip() == "ready"
        with drain.lock:
            tracer.tls.scan(force=True)
            if not any(p.pid in b.pids for b in tracer.tls.go.attached()):
                raise SystemExit(f"the Go loop was not probed: {tracer.tls.go.binaries}")
            if mode != "traced":
                tracer.tls.go.detach_all()
            if mode == "empty uprobes":
                empty.attach()
        p.stdin.write("\n")
        p.stdin.flush()
        cpu, wall = (float(x) for x in p.stdout.readline().split())
        p.wait(timeout=60)
    finally:
        empty.detach()
        if p.poll() is None:
            p.kill()
            p.wait()
    # one column per side is not measurable in one process: the same figure twice
    return cpu, cpu, wall


def main_go(args: argparse.Namespace) -> None:
    from agent.demo.services import go_binary

    binary = str(go_binary(HERE.parent / "tests" / "tls" / "programs" / "gotls.go", "gotls"))
    with tempfile.TemporaryDirectory() as tmp:
        _exe, cert, key = build(tmp)
        with SocketTracer(ProbeConfig(ports={GO_PORT}, tls=True)) as tracer:
            drain = Drainer(tracer)
            drain.start()
            res: dict[str, list[tuple[float, ...]]] = {m: [] for m in GO_MODES}
            plaintext = 0
            empty = GoEmptyProbes(binary)
            for _ in range(args.rounds):
                for mode in GO_MODES:
                    before = tracer.tls_stats().get("tls_plaintext_events", 0)
                    res[mode].append(go_round(tracer, drain, binary, mode, empty,
                                              args.iterations, args.size, cert, key))
                    time.sleep(0.3)
                    if mode == "traced":
                        plaintext += tracer.tls_stats().get("tls_plaintext_events", 0) - before
            drain.stop = True
            drain.join()
            drops = tracer.drops()
    report(args, res, plaintext, drops, "Go crypto/tls uprobes", "ns/call (process)",
           [("added by zerotrace", "traced", "untraced"),
            ("of which the traps", "empty uprobes", "untraced"),
            ("zerotrace's own", "traced", "empty uprobes")])


GO_MODES = ("untraced", "empty uprobes", "traced")


NGINX_MODES = ("no agent", "socket probes only") + MODES[1:]


def _cpu_s(pid: int) -> float:
    """utime + stime of process pid, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    """CPU of this process's reaped children (each wrk run)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main_nginx(args: argparse.Namespace) -> None:
    """wrk -> nginx over TLS, requests/s per mode (see the module docstring)."""
    import shutil

    from tests.helpers.netns import network
    from tests.helpers.nginx import nginx_conf

    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"--nginx needs {tool}")
    tmp = tempfile.mkdtemp(prefix="zt-bench-tls-nginx-")
    try:
        _exe, cert, key = build(tmp)
        os.makedirs(f"{tmp}/www")
        with open(f"{tmp}/www/index.html", "w") as f:
            f.write("<html>" + "x" * 599 + "</html>\n")  # 612 bytes, nginx's default page
        with network(2, subnet=244) as net:
            srv = net.hosts[1]
            with open(f"{tmp}/nginx.conf", "w") as f:
                f.write(nginx_conf(
                    tmp, f"{srv.addr}:443 ssl", worker_connections=1024,
                    http="keepalive_requests 10000000; keepalive_timeout 120s;",
                    server=f"ssl_certificate {cert};\nssl_certificate_key {key};"))
            net.spawn(srv, "nginx", "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"https://{srv.addr}/index.html"
            pidfile = f"{tmp}/nginx.pid"
            deadline = time.monotonic() + 10
            while subprocess.run(net.hosts[0].cmd("curl", "-ks", "-o", "/dev/null", url)
                                 ).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit("nginx did not come up")
                time.sleep(0.1)
            cfg = ProbeConfig(netns={h.inode for h in net.hosts}, tls=True)
            with SocketTracer(cfg) as tracer:
                drain = Drainer(tracer)
                drain.start()
                # the libraries nginx and wrk map (others' processes may have gone,
                # and their /proc/PID/root paths with them)
                paths = [lib.path for lib in tracer.tls.libraries.values()
                         if lib.symbols and not lib.static and not lib.path.startswith("/proc/")]
                empty = _empty(paths)
                res: dict[str, list[float]] = {m: [] for m in NGINX_MODES}
                # CPU us per request of nginx + wrk: less at the mercy of other jobs'
                # load than requests/s (which also counts time waiting for a CPU)
                cpu: dict[str, list[float]] = {m: [] for m in NGINX_MODES}
                side: dict[str, list[tuple[float, float]]] = {m: [] for m in NGINX_MODES}
                nginx_pid = int(open(pidfile).read())
                plain: list[float] = []
                traps: dict[str, list[dict[str, float]]] = {m: [] for m in empty}
                on = True
                # each program's run time per request, by mode (kernel.bpf_stats_enabled)
                bstats: dict[str, list[dict[str, float]]] = {m: [] for m in NGINX_MODES}
                stats_on = BpfStats()
                stats_on.__enter__()
                for _ in range(args.rounds):
                    for mode in NGINX_MODES:
                        with drain.lock:
                            if on:  # everything off, then on as the mode says
                                tracer.pause()
                                on = False
                            if mode != "no agent":
                                tracer.resume()
                                on = True
                                set_mode(tracer, empty, mode)
                        before = tracer.tls_stats().get("tls_plaintext_events", 0)
                        n0, w0 = _cpu_s(nginx_pid), _children_cpu_s()
                        traps0 = {m: e.traps() for m, e in empty.items()}
                        st0 = prog_stats(tracer._bpf)
                        out = subprocess.run(
                            net.hosts[0].cmd("wrk", "-t1", f"-c{args.connections}",
                                             f"-d{args.duration}s", url),
                            capture_output=True, text=True, timeout=args.duration + 60).stdout
                        rps = float(out.split("Requests/sec:")[1].split()[0])
                        reqs = int(out.split(" requests in ")[0].split()[-1])
                        res[mode].append(rps)
                        st1 = prog_stats(tracer._bpf)
                        bstats[mode].append({k: (v[0] - st0.get(k, (0, 0))[0]) / max(1, reqs)
                                             for k, v in st1.items()})
                        n_us = (_cpu_s(nginx_pid) - n0) * 1e6 / max(1, reqs)
                        w_us = (_children_cpu_s() - w0) * 1e6 / max(1, reqs)
                        cpu[mode].append(n_us + w_us)
                        side[mode].append((n_us, w_us))
                        with drain.lock:
                            for e in empty.values():
                                e.detach()
                        if mode in empty:  # hits per request by process
                            now = empty[mode].traps()
                            traps[mode].append({k: (v - traps0[mode].get(k, 0)) / max(1, reqs)
                                                for k, v in now.items()})
                        time.sleep(0.3)
                        if mode.startswith("traced"):  # 2 plaintext events a request, each end
                            seen = tracer.tls_stats().get("tls_plaintext_events", 0) - before
                            plain.append(seen / max(1, reqs))
                        print(f"  {mode:20} {rps:9.0f} req/s {cpu[mode][-1]:7.1f} us CPU/req",
                              flush=True)
                stats_on.__exit__()
                drain.stop = True
                drain.join()
                if not on:
                    tracer.resume()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    med = {m: statistics.median(v) for m, v in res.items()}
    print(f"# wrk -t1 -c{args.connections} -d{args.duration}s -> nginx over TLS (612 B), "
          f"{args.rounds} rounds, load {load:.1f}")
    for m in NGINX_MODES:
        print(f"{m:22} {med[m]:9.0f} req/s  rounds: " + " ".join(f"{x:.0f}" for x in res[m]))
    base = med["no agent"]
    for m in NGINX_MODES[1:]:
        print(f"ratio {m} / no agent: {med[m] / base:.3f}")
    cmed = {m: statistics.median(v) for m, v in cpu.items()}
    for m in NGINX_MODES:
        ng = statistics.median(x[0] for x in side[m])
        wk = statistics.median(x[1] for x in side[m])
        print(f"{m:22} {cmed[m]:7.1f} us CPU (nginx + wrk) per request (nginx {ng:.1f}, "
              f"wrk {wk:.1f}; min {min(cpu[m]):.1f})  rounds: " +
              " ".join(f"{x:.0f}" for x in cpu[m]))
    for m in NGINX_MODES[1:]:
        print(f"throughput ratio from CPU per request, {m} / no agent: "
              f"{cmed['no agent'] / cmed[m]:.3f} (best rounds "
              f"{min(cpu['no agent']) / min(cpu[m]):.3f})")
    if plain:
        print(f"plaintext events per request in traced rounds: {statistics.median(plain):.2f}"
              " (4 expected: request and response, at each end)")
    print("# the agent's programs, ns per request (medians; kernel.bpf_stats_enabled)")
    for m in NGINX_MODES[1:]:
        progs = sorted({k for r in bstats[m] for k in r})
        per = {k: statistics.median(r.get(k, 0) for r in bstats[m]) for k in progs}
        total = statistics.median(sum(r.values()) for r in bstats[m])
        print(f"{m:22} total {total:7.0f}: " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 20))
    for m, rounds in traps.items():
        names = sorted({k for r in rounds for k in r})
        print(f"uprobe hits per request, {m} (entry + return): " + ", ".join(
            f"{k} {statistics.median(r.get(k, 0) for r in rounds):.2f}" for k in names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--go", action="store_true", help="Go crypto/tls instead of OpenSSL")
    ap.add_argument("--nginx", action="store_true", help="HTTPS throughput, wrk -> nginx")
    ap.add_argument("--duration", type=int, default=5, help="--nginx: seconds per round")
    ap.add_argument("--connections", type=int, default=8, help="--nginx: wrk connections")
    args = ap.parse_args()
    if args.nginx:
        main_nginx(args)
        return
    if args.go:
        main_go(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        exe, cert, key = build(tmp)
        with SocketTracer(ProbeConfig(ports={PORT}, tls=True)) as tracer:
            if not tracer.tls or not tracer.tls.attached():
                raise SystemExit("no libssl with probes: nothing to measure")
            drain = Drainer(tracer)
            drain.start()
            res: dict[str, list[tuple[float, ...]]] = {m: [] for m in MODES}
            plaintext = 0
            paths = [lib.path for lib in tracer.tls.libraries.values()
                     if lib.symbols and not lib.path.startswith("/proc/")]
            empty = _empty(paths)
            traps: dict[str, list[float]] = {m: [] for m in empty}
            for _ in range(args.rounds):
                for mode in MODES:
                    with drain.lock:
                        set_mode(tracer, empty, mode)
                    before = tracer.tls_stats().get("tls_plaintext_events", 0)
                    t0 = {m: sum(e.traps().values()) for m, e in empty.items()}
                    res[mode].append(run_loop(exe, cert, key, args.iterations, args.size))
                    with drain.lock:
                        for e in empty.values():
                            e.detach()
                    if mode in empty:  # hits per SSL call (4 a round trip)
                        traps[mode].append((sum(empty[mode].traps().values()) - t0[mode])
                                           / (4 * args.iterations))
                    time.sleep(0.3)  # the drainer catches up
                    if mode.startswith("traced"):
                        plaintext += tracer.tls_stats().get("tls_plaintext_events", 0) - before
            for m, v in traps.items():
                print(f"uprobe hits per SSL call, {m}: {statistics.median(v):.2f}")
            drain.stop = True
            drain.join()
            drops = tracer.drops()
    report(args, res, plaintext, drops, "TLS uprobes", "",
           [("added by zerotrace", "traced", "untraced"),
            ("of which the traps", "empty, same sites", "untraced"),
            ("zerotrace's own", "traced", "empty, same sites"),
            ("before: added", "traced, before", "untraced"),
            ("before: the traps", "empty, before", "untraced"),
            ("before: own", "traced, before", "empty, before")])


def report(args: argparse.Namespace, res: dict, plaintext: int, drops: dict, what: str,
           note: str, diffs: list[tuple[str, str, str]]) -> None:
    load = os.getloadavg()[0]
    med = {m: [statistics.median(r[i] for r in rs) for i in range(3)] for m, rs in res.items()}
    print(f"# {what}, {args.rounds} rounds x {args.iterations} round trips of "
          f"{args.size} B, load {load:.1f} {note}")
    print(f"{'':22} {'client ns/call':>15} {'server ns/call':>15} {'wall ns/rtt':>12}")
    for m in res:
        print(f"{m:22} {med[m][0]:15.0f} {med[m][1]:15.0f} {med[m][2]:12.0f}")
    for name, a, b in diffs:
        d = [med[a][i] - med[b][i] for i in range(3)]
        print(f"{name:22} {d[0]:15.0f} {d[1]:15.0f} {d[2]:12.0f}")
    for m in res:  # the spread says how much the medians can be trusted
        print(f"  {m:22} client ns/call by round: " +
              " ".join(f"{r[0]:.0f}" for r in res[m]) + f"  (min {min(r[0] for r in res[m]):.0f})")
    expected = 4 * args.iterations * args.rounds * sum(m.startswith("traced") for m in res)
    print(f"plaintext events seen in traced rounds: {plaintext} (expected {expected}); "
          f"kernel drops: {drops}")


if __name__ == "__main__":
    main()
