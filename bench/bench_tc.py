"""Cost of the TC hop probes (bpf/tc.c), with vs without, side by side.

    sudo .venv/bin/python -m bench.bench_tc [--rounds 5] [--repeat 200000]

1. ns per packet at one hook: the kernel runs the classifier on a prepared packet
   (BPF_PROG_TEST_RUN, `repeat` times in the kernel, its own timer) for an empty
   classifier (the floor of any TC program) and for ours on a UDP packet, a TCP
   segment that starts no message (the common case: a map lookup, no record) and one
   that starts a message (lookup + ring record).
2. End to end: request/response round trips on one TCP connection between two network
   namespaces joined by a veth pair, probes attached (both veth ends, ingress+egress,
   plus the write-marking tracepoints) vs detached, alternating rounds; medians.
3. Throughput: wrk against nginx across a bridge, traced vs untraced (issue target:
   ratio >= 0.95).
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

from agent.probes.tc import TcConfig, TcTracer, has_sendmsg_tracepoint

BPF_PROG_TEST_RUN = 10
SYS_BPF = 321  # x86_64


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


def per_hook(rounds: int, repeat: int) -> None:
    from bcc import BPF

    empty = BPF(text=b"int zt_empty(struct __sk_buff *skb) { return 0; }")
    empty_fd = empty.load_func(b"zt_empty", BPF.SCHED_CLS).fd
    with TcTracer(TcConfig(interfaces="^$", host=False)) as tc:  # loaded, attached nowhere
        fd = tc._fns[(False, 0)]
        seq_hit = 123456789
        # a message start as the write probe would have left it (ports of the writer)
        start = struct.pack("<QIIHHI", time.monotonic_ns(), 1, 1, 40000, 8080, 0)
        tc._bpf[b"starts"][ctypes.c_uint32(seq_hit)] = (
            tc._bpf[b"starts"].Leaf.from_buffer_copy(start))
        cases = [("empty classifier (floor)", empty_fd, packet(6, 1)),
                 ("zt: UDP packet", fd, packet(17, 0)),
                 ("zt: TCP segment, no message start", fd, packet(6, 42)),
                 ("zt: TCP segment starting a message", fd, packet(6, seq_hit))]
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
        try:
            for _ in range(rounds):
                res[states[2]].append(once())
                tc.poll(0)
                tc.detach_filters()
                res[states[1]].append(once())
                tc.set_marking(False)
                res[states[0]].append(once())
                tc.set_marking(True)
                tc.refresh()
        finally:
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


def throughput(rounds: int, seconds: int, body: int) -> None:
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

        on, off = [], []
        tc = TcTracer(TcConfig(interfaces=f"^zb{tag}[ab]h?$", netns=[a, b]))
        try:
            assert len(tc.hooks) == 4, tc.hooks
            for _ in range(rounds):
                on.append(wrk())
                tc.poll(0)
                tc.detach_filters()
                tc.set_marking(False)
                off.append(wrk())
                tc.set_marking(True)
                tc.refresh()
        finally:
            tc.close()
        mon, moff = statistics.median(on), statistics.median(off)
        print(f"# wrk -c8 across a bridge, {body}-byte responses, {seconds} s rounds, "
              f"median of {rounds}; TC on 4 veth ends")
        print(f"  untraced {moff:9.0f} req/s   traced {mon:9.0f} req/s   "
              f"traced/untraced {mon / moff:.3f}")
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
    args = ap.parse_args()
    print(f"# load: {os.getloadavg()[0]:.2f} (2 vCPUs shared; figures are indicative)")
    per_hook(args.rounds, args.repeat)
    end_to_end(args.rounds, args.round_trips, args.marks)
    for body in (64, 65536):
        throughput(args.rounds, 3, body)


if __name__ == "__main__":
    main()
