"""Cost of the TC hop probes (bpf/tc.c), with vs without, side by side.

    sudo .venv/bin/python -m bench.bench_tc [--rounds 5] [--repeat 200000]
        [--only hook,marks,rtt,wrk]

1. ns per packet at one hook: the kernel runs the classifier on a prepared packet
   (BPF_PROG_TEST_RUN, `repeat` times in the kernel, its own timer) for an empty
   classifier (the floor of any TC program) and for ours on a UDP packet, a TCP
   segment that starts no message (the common case: a map lookup, no record) and one
   that starts a message (lookup + ring record).
2. End to end: request/response round trips on one TCP connection between two network
   namespaces joined by a veth pair, probes attached (both veth ends, ingress+egress,
   plus the write-marking tracepoints) vs detached, alternating rounds; medians.
3. Marks per syscall: CPU ns per write+read iteration of a loopback TCP loop
   (bench/syscall_loop.c) with no marks, read marks only (sock:sock_recv_length: the
   cost per recvmsg), write marks only (tcp_sendmsg_locked) and both; alternating
   rounds, medians.  TC filters play no part (loopback is not hooked).
4. Throughput: wrk against nginx across a bridge, traced vs untraced (issue target:
   ratio >= 0.95), and where the difference goes: TC filters alone (no marks: every
   segment a lookup miss), marks alone (no filters), both.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid

from agent.probes.tc import MAX_SAMPLE_SHIFT, TcConfig, TcTracer, has_sendmsg_tracepoint

BPF_PROG_TEST_RUN = 10
BPF_ENABLE_STATS = 32
SYS_BPF = 321  # x86_64


class RunStats:
    """The kernel's per-program run time (BPF_ENABLE_STATS: kernel.bpf_stats_enabled for
    as long as the returned fd is open; it adds ~two clock reads to every BPF program
    run on the machine, so it is on only around a measurement)."""

    def __enter__(self) -> RunStats:
        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint32 * 4)(0)  # type = BPF_STATS_RUN_TIME
        self.fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def prog_run(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind fd (bpftool reads the counters)."""
    import json

    with open(f"/proc/self/fdinfo/{fd}") as f:
        pid = next(int(ln.split()[1]) for ln in f if ln.startswith("prog_id:"))
    info = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(pid), "--json"],
                                     check=True, capture_output=True, text=True).stdout)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def mark_fds(tc: TcTracer) -> dict[str, int]:
    """name -> prog fd of the marking programs loaded in tc."""
    names = {f"raw_tracepoint__{tp.decode()}": tp.decode() for tp in
             (*tc.READ_MARK_TRACEPOINTS, b"tcp_sendmsg_locked")}
    return {short: tc._bpf.funcs[full.encode()].fd for full, short in names.items()
            if full.encode() in tc._bpf.funcs}


def report_runs(title: str, before: dict[str, tuple[int, int]],
                after: dict[str, tuple[int, int]], per: str = "", n: int = 0) -> None:
    print(f"  {title}: ns per program run (kernel run-time stats)")
    for name in after:
        t = after[name][0] - before[name][0]
        c = after[name][1] - before[name][1]
        extra = f"   {c / n:6.2f} runs per {per}" if n and per else ""
        print(f"    {name:<26} {t / c if c else 0:7.1f} ns x {c:9d} runs{extra}")
    if n and per:
        total = sum(after[k][0] - before[k][0] for k in after)
        print(f"    all of them: {total / n:7.0f} ns of BPF per {per}")


class _TestRun(ctypes.Structure):
    # union bpf_attr, the `test` member (uapi linux/bpf.h)
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32 * 5)]


def test_run(prog_fd: int, pkt: bytes, repeat: int) -> float:
    """Mean ns per run of prog_fd on pkt, as the kernel timed it."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(pkt, len(pkt))
    out = ctypes.create_string_buffer(len(pkt) + 256)
    attr = _TestRun(prog_fd=prog_fd, data_size_in=len(pkt), data_in=ctypes.addressof(buf),
                    data_size_out=len(out), data_out=ctypes.addressof(out), repeat=repeat)
    if libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN")
    return float(attr.duration)


def packet(proto: int, seq: int, sport: int = 40000, dport: int = 8080,
           payload: int = 100) -> bytes:
    """Ethernet + IPv4 + TCP (or UDP) with `payload` bytes."""
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 64240, 0, 0)
          if proto == 6 else struct.pack("!HHHH", sport, dport, 8 + payload, 0))
    tot = 20 + len(l4) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 1, 0, 64, proto, 0,
                     socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"))
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    return eth + ip + l4 + b"x" * payload


def packet6(seq: int, payload: int = 100) -> bytes:
    """Ethernet + IPv6 + TCP with `payload` bytes."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 8080, seq, 0, 5 << 4, 0x18, 64240, 0, 0)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + payload, 6, 64,
                      socket.inet_pton(socket.AF_INET6, "fd00::1"),
                      socket.inet_pton(socket.AF_INET6, "fd00::2"))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip6 + tcp + b"x" * payload


def start_slot(seq: int, bits: int = 17) -> int:
    """The slot of `starts` for seq (zt_slot in bpf/tc.c, ZT_STARTS_BITS = 17)."""
    return ((seq * 2654435761) & 0xFFFFFFFF) >> (32 - bits)


def per_hook(rounds: int, repeat: int) -> None:
    from bcc import BPF

    empty = BPF(text=b"int zt_empty(struct __sk_buff *skb) { return 0; }")
    empty_fd = empty.load_func(b"zt_empty", BPF.SCHED_CLS).fd
    with TcTracer(TcConfig(interfaces="^$", host=False)) as tc:  # loaded, attached nowhere
        fd = tc._fns[(False, 0)]
        seq_hit = 123456789
        # a message start as the write probe would have left it (ports of the writer),
        # in the slot bpf/tc.c's zt_slot finds for its seq
        starts = tc._bpf[b"starts"]
        leaf = starts.Leaf()
        leaf.ts, leaf.netns, leaf.tgid, leaf.lport, leaf.rport = (
            time.monotonic_ns(), 1, 1, 40000, 8080)
        leaf.seq = seq_hit
        starts[ctypes.c_uint32(start_slot(seq_hit))] = leaf
        cases = [("empty classifier (floor)", empty_fd, packet(6, 1)),
                 ("zt: UDP packet", fd, packet(17, 0)),
                 ("zt: TCP segment, no message start", fd, packet(6, 42)),
                 ("zt: TCP segment starting a message", fd, packet(6, seq_hit)),
                 ("zt: IPv6 TCP segment, no start", fd, packet6(42)),
                 ("zt: IPv6 TCP segment starting a message", fd, packet6(seq_hit))]
        res: dict[str, list[float]] = {name: [] for name, _f, _p in cases}
        for _ in range(rounds):
            for name, f, pkt in cases:
                n = repeat if "starting" not in name else min(repeat, 10000)
                res[name].append(test_run(f, pkt, n))
                tc.poll(0)  # keep the ring from filling (a full ring is cheaper)
        floor = statistics.median(res[cases[0][0]])
        print(f"# ns per packet at one TC hook (BPF_PROG_TEST_RUN, median of {rounds})")
        for name, v in res.items():
            m = statistics.median(v)
            print(f"  {name:<40} {m:7.1f} ns   (+{m - floor:6.1f} over the floor)")
    empty.cleanup()


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Drainer:
    """The agent's side, as agent/net/live.py runs it: a thread that drains the ring
    every 50 ms and indexes the records (HopIndex), its own CPU time measured, under
    the agent's GC settings; the ring never fills, as in a running agent (a full ring
    makes hits cheaper)."""

    def __init__(self, tc: TcTracer) -> None:
        import threading

        from agent.net.hops import HopIndex
        from agent.pipeline import tune_gc

        # the agent's collector settings: with CPython's defaults, collections of the
        # index's ~65 000 live messages were more than half of the drain cost
        tune_gc()

        self.tc, self.index = tc, HopIndex()
        self.records = 0
        self.cpu_ns = 0
        self.adaptive = False  # run TcTracer.adapt about once a second, as the agent does
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from agent.net.live import BUSY_DRAIN

        t0 = time.thread_time_ns()
        got = 0
        next_adapt = time.monotonic() + 1.0
        while not self._stop.is_set():
            if self.tc.wait(0.005 if got > BUSY_DRAIN else 0.05):
                got = self.tc.drain_into(self.index)
                self.records += got
            else:
                got = 0
            now = time.monotonic()
            if now >= next_adapt:
                next_adapt = now + 1.0
                if self.adaptive:
                    self.tc.adapt(now)
            self.cpu_ns = time.thread_time_ns() - t0

    def snapshot(self) -> tuple[int, int]:
        return self.records, self.cpu_ns

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def marks_per_syscall(rounds: int, n: int) -> None:
    """CPU ns per loopback write+read with each set of marking tracepoints attached."""
    import tempfile

    from bench.bench_probes import build_loop

    with tempfile.TemporaryDirectory() as tmp:
        exe = build_loop(tmp)

        def once(port: int) -> float:
            return float(subprocess.run([exe, "tcp", str(n), str(port)], check=True,
                                        capture_output=True, text=True).stdout)

        states = ("no marks", "read marks", "write marks", "read + write marks")
        res: dict[str, list[float]] = {k: [] for k in states}
        with TcTracer(TcConfig(interfaces="^$", host=False)) as tc:  # no filters at all
            if not tc.read_marks:
                print("# marks per syscall: this kernel has no sock:sock_recv_length")
                return
            tc.set_marking(False)
            port = 47300
            for _ in range(rounds):
                for k in states:
                    reads, writes = "read" in k, "write" in k
                    if reads or writes:
                        tc.set_marking(True, writes=writes, reads=reads)
                    port += 1
                    res[k].append(once(port))
                    if reads or writes:
                        tc.set_marking(False, writes=writes, reads=reads)
            # the programs' own time per run, with both marks on
            tc.set_marking(True)
            fds = mark_fds(tc)
            with RunStats():
                before = {k: prog_run(fd) for k, fd in fds.items()}
                once(port + 1)
                after = {k: prog_run(fd) for k, fd in fds.items()}
            tc.set_marking(False)
        base = statistics.median(res[states[0]])
        print(f"# marks: CPU ns per write(100 B)+read on loopback TCP (bench/syscall_loop.c "
              f"tcp), {n} per round, median of {rounds}")
        for k in states:
            m = statistics.median(res[k])
            print(f"  {k:<22} {m:8.1f} ns   +{m - base:6.1f} ns per write+read   "
                  f"(rounds {', '.join(f'{v:.0f}' for v in res[k])})")
        report_runs("both marks on", before, after, "write+read", n)


PEER = r"""
import socket, sys, time
mode, addr, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, 7100)); ls.listen(); print("ready", flush=True)
    while True:
        c, _ = ls.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while (d := c.recv(256)):
            c.sendall(b"r" * 64)
else:
    s = socket.create_connection((addr, 7100))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = time.perf_counter()
    for _ in range(n):
        s.sendall(b"q" * 64); s.recv(256)
    print((time.perf_counter() - t) / n * 1e6)
"""


def end_to_end(rounds: int, n: int, marks: str = "auto") -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = f"zb-{tag}-a", f"zb-{tag}-b"
    va, vb = f"zb{tag}a", f"zb{tag}b"
    server = None
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb,
           "netns", b)
        for ns, v, ip in ((a, va, "10.239.0.1/24"), (b, vb, "10.239.0.2/24")):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", ip, "dev", v)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", v, "up")
        server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", PEER,
                                   "server", "10.239.0.2", "0"], stdout=subprocess.PIPE,
                                  text=True, start_new_session=True)
        server.stdout.readline()

        def once() -> float:
            out = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", PEER,
                                  "client", "10.239.0.2", str(n)], check=True,
                                 capture_output=True, text=True).stdout
            return float(out)

        raw = marks == "auto" and has_sendmsg_tracepoint()
        how = "tcp_sendmsg_locked" if raw else "syscall entry"
        states = ("untraced", f"marks ({how})", "marks + TC")
        res: dict[str, list[float]] = {k: [] for k in states}
        tc = TcTracer(TcConfig(interfaces=f"^zb{tag}", netns=[a, b], host=False,
                               marks=marks))
        drainer = Drainer(tc)
        try:
            for _ in range(rounds):
                res[states[2]].append(once())
                tc.detach_filters()
                res[states[1]].append(once())
                tc.set_marking(False)
                res[states[0]].append(once())
                tc.set_marking(True)
                tc.refresh()
        finally:
            drainer.close()
            tc.close()
        base = statistics.median(res[states[0]])
        print(f"# request/response round trip over a veth pair (TC on both ends, ingress "
              f"and egress), {n} per round, median of {rounds}")
        for k in states:
            m = statistics.median(res[k])
            print(f"  {k:<32} {m:8.2f} us   +{1000 * (m - base):6.0f} ns per round trip"
                  f"   untraced/this {base / m:.3f}")
    finally:
        if server is not None:
            os.killpg(server.pid, 9)
            server.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class EmptyHooks:
    """A program that returns at once ("next"), on the hooks the TC probes use, as
    clsact filters or as tcx links: what attaching costs before any probe runs."""

    def __init__(self, hooks: list) -> None:
        from bcc import BPF

        self.hooks = hooks
        # one program a direction, so that run-time statistics tell them apart
        self._bpf = BPF(text=b"int zt_empty_e(struct __sk_buff *skb) { return -1; }\n"
                             b"int zt_empty_i(struct __sk_buff *skb) { return -1; }")
        self.fds = {ingress: self._bpf.load_func(name, BPF.SCHED_CLS).fd
                    for ingress, name in ((False, b"zt_empty_e"), (True, b"zt_empty_i"))}
        self.links: list[int] = []
        self.clsact: list = []

    def attach(self, tcx_links: bool) -> None:
        from pyroute2 import IPRoute

        from agent.probes import tcx
        from agent.probes.tc import PARENT_EGRESS, PARENT_INGRESS

        for h in self.hooks:
            ns = None if h.netns == "host" else h.netns
            if tcx_links:
                self.links += [tcx.attach(self.fds[ingress], h.ifindex, ingress, ns)
                               for ingress in (False, True)]
                continue
            with IPRoute(netns=ns) if ns else IPRoute() as ipr:
                ipr.tc("add", "clsact", h.ifindex)
                for parent, ingress in ((PARENT_EGRESS, False), (PARENT_INGRESS, True)):
                    ipr.tc("add-filter", "bpf", h.ifindex, ":1", fd=self.fds[ingress],
                           name="zt_empty", parent=parent, prio=1, classid=1,
                           direct_action=True)
            self.clsact.append(h)

    def detach(self) -> None:
        from pyroute2 import IPRoute

        for fd in self.links:
            os.close(fd)
        self.links.clear()
        for h in self.clsact:
            ns = None if h.netns == "host" else h.netns
            with IPRoute(netns=ns) if ns else IPRoute() as ipr:
                ipr.tc("del", "clsact", h.ifindex)
        self.clsact.clear()

    def close(self) -> None:
        self.detach()
        self._bpf.cleanup()


def steady(tc: TcTracer, shift: int) -> None:
    """Sampling at 1 in 2**shift as a running agent has it in steady state: the packets'
    filter at the same shift at once.  An agent raises the filter a second after the
    marks (TcTracer.FILTER_LAG: messages marked at the old rate may still be on their
    way); between two states here no marks were made, and a round of a few seconds
    whose first second every payload packet looks into the 5 MB slot table (a cache
    miss at the first hook a packet passes) measured the state before, not this one."""
    tc.set_sampling(shift)
    tc._settle_filter(float("inf"))


def throughput(rounds: int, seconds: int, body: int, attach: str = "auto") -> None:
    """wrk against nginx across a bridge (ns a -> veth -> bridge -> veth -> ns b),
    TC on all four veth ends, traced vs untraced rounds alternating; requests/s."""
    import re
    import tempfile

    tag = uuid.uuid4().hex[:6]
    a, b, br = f"zb-{tag}-a", f"zb-{tag}-b", f"zb{tag}br"
    nginx = None
    try:
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "link", "set", br, "up")
        for ns, ip in ((a, "10.239.1.1/24"), (b, "10.239.1.2/24")):
            sh("ip", "netns", "add", ns)
            outer, inner = f"zb{tag}{ns[-1]}h", f"zb{tag}{ns[-1]}"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "link", "set", outer, "master", br)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", ip, "dev", inner)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        tmp = tempfile.mkdtemp(prefix="zt-bench-tc-")
        os.makedirs(f"{tmp}/www")
        with open(f"{tmp}/www/body", "wb") as f:
            f.write(b"x" * body)
        with open(f"{tmp}/nginx.conf", "w") as f:
            f.write(f"""daemon off; master_process off; worker_processes 1;
error_log {tmp}/error.log; pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p;
  fastcgi_temp_path {tmp}/f; uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
  server {{ listen 10.239.1.2:8090; root {tmp}/www; }} }}
""")
        nginx = subprocess.Popen(["ip", "netns", "exec", b, "nginx", "-c", f"{tmp}/nginx.conf",
                                  "-p", tmp], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

        def wrk() -> float:
            out = subprocess.run(["ip", "netns", "exec", a, "wrk", "-t1", "-c8",
                                  f"-d{seconds}s", "http://10.239.1.2:8090/body"],
                                 check=True, capture_output=True, text=True).stdout
            return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

        # "every message": sampling off (TcConfig.sample_shift 0); "adaptive": the
        # agent's default, TcTracer.adapt once a second (kept from one such round to the
        # next, as a running agent would be in steady state)
        every, adaptive = "traced, every message", "traced, adaptive sampling"
        # the floor of each way to attach: a program that returns at once on the same
        # hooks, as a clsact filter and as a tcx link
        empty_clsact, empty_tcx = "empty program, clsact", "empty program, tcx"
        states = ("untraced", empty_clsact, empty_tcx, "TC filters only", "marks only",
                  every, adaptive)
        res: dict[str, list[float]] = {k: [] for k in states}
        tc = TcTracer(TcConfig(interfaces=f"^zb{tag}[ab]h?$", netns=[a, b], attach=attach))
        empty = EmptyHooks(list(tc.hooks.values()))
        drainer = Drainer(tc)
        # per traced state: drainer CPU us per request, records a request, lost
        agent: dict[str, list[float]] = {every: [], adaptive: []}
        recs: dict[str, list[float]] = {every: [], adaptive: []}
        lost: dict[str, int] = {every: 0, adaptive: 0}
        shifts: list[int] = []
        shift = 0
        try:
            assert len(tc.hooks) == 4, tc.hooks
            tc.detach_filters()
            tc.set_marking(False)
            for _ in range(rounds):
                for k in states:
                    traced = k in (every, adaptive)
                    filters, marks = traced or "TC" in k, traced or "marks" in k
                    steady(tc, shift if k == adaptive else 0)
                    tc._adapted = None
                    drainer.adaptive = k == adaptive
                    if filters:
                        tc.refresh()
                    if marks:
                        tc.set_marking(True)
                    if k in (empty_clsact, empty_tcx):
                        empty.attach(k == empty_tcx)
                    r0, c0 = drainer.snapshot()
                    l0 = tc.lost()
                    rps = wrk()
                    res[k].append(rps)
                    empty.detach()
                    if filters and marks:
                        time.sleep(0.1)  # the drainer's last poll of the round
                        r1, c1 = drainer.snapshot()
                        n = max(1.0, rps * seconds)
                        agent[k].append((c1 - c0) / 1e3 / n)
                        recs[k].append((r1 - r0) / n)
                        lost[k] += tc.lost() - l0
                    if k == adaptive:
                        shift = tc.sample_shift
                        shifts.append(shift)
                    drainer.adaptive = False
                    if filters:
                        tc.detach_filters()
                    if marks:
                        tc.set_marking(False)
            # traced rounds with run-time stats: where the time goes per request
            fds = {**mark_fds(tc), **{f"tc {'l3' if l3 else 'eth'} "
                                       f"{'ingress' if d else 'egress'}": fd
                                       for (l3, d), fd in tc._fns.items() if not l3}}
            stats = []
            # and 1 in 1 024: almost every mark and packet unsampled (the floor)
            floor = (f"traced, 1 in {1 << MAX_SAMPLE_SHIFT}", MAX_SAMPLE_SHIFT)
            for k, sh_ in ((every, 0), (adaptive, shift), floor):
                steady(tc, sh_)
                tc.refresh()
                tc.set_marking(True)
                with RunStats():
                    before = {k: prog_run(fd) for k, fd in fds.items()}
                    stat_rps = wrk()
                    after = {k: prog_run(fd) for k, fd in fds.items()}
                stats.append((k, sh_, stat_rps, before, after))
                tc.detach_filters()
                tc.set_marking(False)
            # the floor of a run on each hook: the empty program, tcx
            empty_fds = {f"empty {'ingress' if i else 'egress'}": fd
                         for i, fd in empty.fds.items()}
            empty.attach(True)
            with RunStats():
                before = {k: prog_run(fd) for k, fd in empty_fds.items()}
                stat_rps = wrk()
                after = {k: prog_run(fd) for k, fd in empty_fds.items()}
            empty.detach()
            stats.append((empty_tcx, 0, stat_rps, before, after))
            time.sleep(0.1)
        finally:
            drainer.close()
            tc.close()
            empty.close()
        base = statistics.median(res[states[0]])
        print(f"# wrk -t1 -c8 across a bridge, {body}-byte responses, {seconds} s rounds, "
              f"median of {rounds}; TC on 4 veth ends, {tc.attach_mode} "
              f"({drainer.records} hop records "
              f"drained and indexed; lost to a full ring: every message {lost[every]}, "
              f"adaptive {lost[adaptive]}; adaptive sampling 1 in "
              f"{', '.join(str(1 << x) for x in shifts)})")
        for k in states:
            m = statistics.median(res[k])
            # each round's state against the same round's untraced run (seconds apart):
            # less exposed to the machine's load drifting over the whole run
            paired = statistics.median(v / u for v, u in zip(res[k], res[states[0]],
                                                             strict=True))
            print(f"  {k:<22} {m:9.0f} req/s   ratio {m / base:.3f}   paired {paired:.3f}   "
                  f"(rounds {', '.join(f'{v:.0f}' for v in res[k])})")
        for k, sh_, stat_rps, before, after in stats:
            what = k if k == empty_tcx else f"{k} (1 in {1 << sh_})"
            report_runs(f"{what}, a round with stats ({stat_rps:.0f} req/s)",
                        before, after, "request", int(stat_rps * seconds))
        for k in (every, adaptive):
            print(f"  {k}: agent (drain + index hop records) "
                  f"{statistics.median(agent[k]):.2f} us CPU per request, "
                  f"{statistics.median(recs[k]):.2f} records a request "
                  f"(rounds {', '.join(f'{v:.2f}' for v in agent[k])})")
    finally:
        if nginx is not None:
            os.killpg(nginx.pid, 9)
            nginx.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=200000)
    ap.add_argument("--round-trips", type=int, default=5000)
    ap.add_argument("--marks", choices=["auto", "syscalls"], default="auto",
                    help="where writes are marked (TcConfig.marks)")
    ap.add_argument("--loop", type=int, default=200000,
                    help="write+read iterations per round of the marks benchmark")
    ap.add_argument("--seconds", type=int, default=3, help="wrk round length")
    ap.add_argument("--attach", choices=["auto", "tcx", "clsact"], default="auto",
                    help="how the TC programs attach in the wrk rounds (TcConfig.attach)")
    ap.add_argument("--only", default="hook,marks,rtt,wrk",
                    help="comma-separated parts: hook, marks, rtt, wrk")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    print(f"# load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(2 vCPUs shared; figures are indicative)")
    if "hook" in parts:
        per_hook(args.rounds, args.repeat)
    if "marks" in parts:
        marks_per_syscall(args.rounds, args.loop)
    if "rtt" in parts:
        end_to_end(args.rounds, args.round_trips, args.marks)
    if "wrk" in parts:
        for body in (64, 65536):
            throughput(args.rounds, args.seconds, body, args.attach)
    print(f"# load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
