"""Small ring records and deliberate shedding, on real probes and real traffic.

- Skip hints (agent/probes/skiphints.py, bpf/data.c zt_skip_hint): the syscalls of a
  body the parser skips by length stay out of the ring, and the spans are the same as
  without hints: bodies far beyond the capture size, pipelined requests, chunked bodies.
- Sampling (agent/probes/shedding.py, bpf/data.c zt_sample): with a keep rate below
  one, whole exchanges are left out and counted, both ends of a request agree, and no
  span is partial; the counters reach Prometheus.
Client and server are real processes (tests/probes/httpio.py) in two network
namespaces; the tracer is scoped to them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.pipeline import Pipeline
from agent.probes import abi
from agent.probes.loader import ProbeConfig, SocketTracer
from agent.probes.skiphints import SkipHints
from tests.helpers.netns import network

pytestmark = pytest.mark.kernel
HTTPIO = str(Path(__file__).with_name("httpio.py"))
PORT = 8080
BIG = 3 * 1024 * 1024 + 17  # far beyond the 1 KiB capture: ~48 writes of 64 KiB


@pytest.fixture(scope="module")
def net():
    with network(2, subnet=241) as n:
        srv = n.hosts[1]
        p = n.spawn(srv, sys.executable, HTTPIO, "server", srv.addr, str(PORT),
                    stdout=subprocess.PIPE, text=True)
        assert "listening" in p.stdout.readline()
        yield n


@pytest.fixture(scope="module")
def tracer(net):
    with SocketTracer(ProbeConfig(netns={h.inode for h in net.hosts}, tls=False)) as t:
        yield t


def run_client(net, plan: list) -> dict:
    srv = net.hosts[1]
    out = subprocess.run(net.hosts[0].cmd(sys.executable, HTTPIO, "client", srv.addr,
                                          str(PORT), json.dumps(plan)),
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def traced(tracer: SocketTracer, plan: list, net, hints: bool = False) -> tuple[list, dict]:
    """Run plan under the probes; the spans the pipeline made, and the probes' counters
    moved meanwhile."""
    p = Pipeline()
    spans: list = []
    p.on_span = lambda ctx: spans.append(ctx.span)
    h = SkipHints(tracer, p.assembler, p.tracker, min_skip=4096) if hints else None
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            p.process(tracer.poll(0.01))
            if h is not None:
                h.run()  # every batch: the test wants the hints early
            p.tick()

    before = tracer.stats()
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        res = run_client(net, plan)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=30)
    empty = 0
    while empty < 5:
        events = tracer.poll(0.05)
        empty = 0 if events else empty + 1
        p.process(events)
    p.close()
    after = tracer.stats()
    moved = {k: after[k] - before[k] for k in after}
    moved["sent"], moved["read"] = res["sent"], res["read"]
    return spans, moved


def summary(spans: list) -> Counter:
    """What a span says, without ids, times and offsets (those differ run to run)."""
    return Counter((s.kind, s.operation, s.status_code, s.incomplete, s.req_bytes,
                    s.resp_bytes) for s in spans)


PLAN = [
    [f"/len/{BIG}?pace=3", "/small", f"/len/{BIG}?pace=3", "/small"],  # big bodies
    [["/small", "/len/600", "/small"], "/small"],  # pipelined: all three fit one capture
    ["/chunked/40?pace=2", "/small"],  # chunked: framing in the body, never skipped
]


def test_skip_hints_keep_big_bodies_out_of_the_ring_and_spans_identical(tracer, net):
    plain, m0 = traced(tracer, PLAN, net, hints=False)
    hinted, m1 = traced(tracer, PLAN, net, hints=True)
    assert m0["sent"] == m1["sent"] == 10
    assert m0["skipped_syscalls"] == 0
    # most of the two big bodies' writes (server) and reads (client) left the ring
    assert m1["skipped_syscalls"] > 40, m1
    assert m1["ring_bytes"] < m0["ring_bytes"] - 40 * 1024, (m0, m1)
    assert m1["ring_records"] < m0["ring_records"] - 40, (m0, m1)
    s0, s1 = summary(plain), summary(hinted)
    assert s0 == s1
    # both ends of every request: 10 requests, client and server spans
    assert sum(s0.values()) == 20
    ops = {k[1] for k in s0}
    assert f"GET /len/{BIG}" in ops and "GET /chunked/40" in ops
    big = [s for s in hinted if s.operation == f"GET /len/{BIG}" and s.kind == "server"]
    assert len(big) == 2 and all(s.resp_bytes >= BIG for s in big)
    # the response ends where its last write ends (the payload-less last record)
    assert all(s.end_ns - s.start_ns > 40 * 3_000_000 for s in big)


def test_sampling_sheds_whole_exchanges_counted_and_both_ends_agree(tracer, net):
    plan = [["/small"] * 40 for _ in range(6)] + [["/small"] for _ in range(20)]
    tracer.set_keep(abi.KEEP_ALL // 2)
    try:
        spans, m = traced(tracer, plan, net)
    finally:
        tracer.set_keep(abi.KEEP_ALL)
    n = m["sent"]
    assert n == m["read"] == 260
    kinds = Counter(s.kind for s in spans)
    # every exchange decided on both ends: the kept ones have both spans, none partial
    assert m["kept_exchanges"] + m["shed_exchanges"] == 2 * n, m
    assert m["shed_exchanges"] > 0.2 * 2 * n and m["kept_exchanges"] > 0.2 * 2 * n, m
    assert kinds["client"] == kinds["server"] == m["kept_exchanges"] // 2, (kinds, m)
    assert [s for s in spans if s.incomplete] == []
    assert {s.operation for s in spans} == {"GET /small"}
    assert m["shed_syscalls"] >= m["shed_exchanges"] and m["shed_bytes"] > 0
    # the client's and the server's span of a kept request name the same seqs
    client = {(s.req_seq, s.resp_seq) for s in spans if s.kind == "client"}
    server = {(s.req_seq, s.resp_seq) for s in spans if s.kind == "server"}
    assert client == server


def test_sampling_counters_are_exported(tracer, net):
    from prometheus_client import generate_latest

    from agent.metrics import AgentMetrics

    tracer.set_keep(abi.KEEP_ALL // 4)
    try:
        run_client(net, [["/small"] * 30])
        time.sleep(0.2)
        stats = tracer.stats()
        m = AgentMetrics()
        m.add_kernel(tracer.stats, lambda: tracer.keep / abi.KEEP_ALL, tracer.ring_fill)
        text = generate_latest(m.registry).decode()
    finally:
        tracer.set_keep(abi.KEEP_ALL)
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines()
                 if line.startswith("zerotrace_"))
    assert float(lines["zerotrace_shed_exchanges_total"]) >= stats["shed_exchanges"] > 0
    assert float(lines["zerotrace_ring_records_total"]) >= stats["ring_records"] > 0
    assert float(lines["zerotrace_sampling_keep_ratio"]) == 0.25
    assert "zerotrace_shed_connections_total" in lines
    assert "zerotrace_skipped_syscalls_total" in lines


def _map_ids(pid: int) -> set[int]:
    import os

    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("map_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def test_maps_are_freed_on_close(net):
    import os

    before = _map_ids(os.getpid())
    t = SocketTracer(ProbeConfig(netns={h.inode for h in net.hosts}, tls=False))
    t.set_keep(abi.KEEP_ALL // 2)
    t.set_skip_hint(0x1000, 0, 5)
    mine = _map_ids(os.getpid()) - before
    assert len(mine) >= 5  # events, config, drops, stats, skips, socks ...
    t.close()
    assert _map_ids(os.getpid()) & mine == set()
    left = mine
    deadline = time.monotonic() + 20  # the kernel frees maps after a grace period
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        out = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True,
                             text=True, check=True).stdout
        left = {m["id"] for m in json.loads(out or "[]")} & mine
    assert left == set()


def test_a_connection_shed_whole_is_traced_again_when_the_overload_ends(net):
    # A connection the probes never saw open (here: opened before the tracer) has no
    # known role, so sampling keeps or sheds it whole.  Shed at a low keep rate, it
    # must come back once the rate is back to all: a keep-alive pool opened before the
    # agent would otherwise stay invisible for the rest of its life, after any overload.
    srv = net.hosts[1]
    loop = ("import socket,sys,time\n"
            f"s=socket.create_connection(('{srv.addr}',{PORT}));f=s.makefile('rb')\n"
            "print('connected',flush=True)\n"
            "for _ in range(400):\n"
            "  s.sendall(b'GET /small HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n"
            "  h=b''\n"
            "  while not h.endswith(b'\\r\\n\\r\\n'): h+=f.read(1)\n"
            "  f.read(100); time.sleep(0.05)\n")
    client = net.spawn(net.hosts[0], sys.executable, "-c", loop, stdout=subprocess.PIPE,
                       text=True)
    assert "connected" in client.stdout.readline()
    with SocketTracer(ProbeConfig(netns={h.inode for h in net.hosts}, tls=False)) as t:
        def served(seconds: float) -> int:
            n, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                n += sum(1 for e in t.poll(0.05) if e.type == abi.EV_DATA and
                         e.lport == PORT)
            return n

        assert served(0.5) > 0  # traced before any overload
        t.set_keep(0)
        served(0.3)  # syscalls that began before the change
        shed = served(0.7)
        t.set_keep(abi.KEEP_ALL)
        served(0.2)
        again = served(1.0)
    client.kill()
    assert shed == 0, f"{shed} server records while shedding everything"
    assert again > 0, "the connection stayed shed after the keep rate went back to all"


def test_a_server_connection_from_before_the_agent_is_sampled_by_exchange(net):
    # Its role comes from the listening port (maps.h `listening`, seeded from /proc when
    # sampling starts): a shed exchange on it is counted in the stamps of the serving
    # thread's kept records (abi.F_SHED_STAMP), so an event loop serving it never has a
    # request read the stitcher cannot see.  Without the role it was kept or shed
    # whole, and shed whole it said nothing.
    srv = net.hosts[1]
    loop = ("import socket,sys,time\n"
            f"s=socket.create_connection(('{srv.addr}',{PORT}));f=s.makefile('rb')\n"
            "print('connected',flush=True)\n"
            "for _ in range(1000):\n"
            "  s.sendall(b'GET /small HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n"
            "  h=b''\n"
            "  while not h.endswith(b'\\r\\n\\r\\n'): h+=f.read(1)\n"
            "  f.read(100); time.sleep(0.01)\n")
    client = net.spawn(net.hosts[0], sys.executable, "-c", loop, stdout=subprocess.PIPE,
                       text=True)
    assert "connected" in client.stdout.readline()
    kept = 0
    stamps: list[int] = []
    with SocketTracer(ProbeConfig(netns={h.inode for h in net.hosts}, tls=False)) as t:
        t.poll(0.5)
        t.set_keep(abi.KEEP_ALL // 2)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            for e in t.poll(0.05):
                if e.type == abi.EV_DATA and e.lport == PORT:
                    kept += 1
                    if e.flags & abi.F_SHED_STAMP:
                        stamps.append(e.stamp)
        t.set_keep(abi.KEEP_ALL)
    client.kill()
    # the serving thread's counters moved between its kept records: shed request reads
    # and shed answers, each exchange answered (none left open at a kept record but
    # the one it may be reading)
    reads = {s & abi.STAMP_READS_MASK for s in stamps}
    answers = {(s >> abi.STAMP_ANSWERS_SHIFT) & abi.STAMP_READS_MASK for s in stamps}
    opened = [(s >> abi.STAMP_OPEN_SHIFT) & abi.STAMP_OPEN_MASK for s in stamps]
    assert kept > 0 and stamps, f"{kept} server records kept, {len(stamps)} stamped"
    assert len(reads) > 1 and len(answers) > 1, (sorted(reads)[:9], sorted(answers)[:9])
    assert max(opened) <= 1, opened


def test_a_full_ring_makes_the_probes_cut_the_keep_rate_themselves(net):
    # Nobody reads the ring (an agent stalled in a long batch): the probes must not go
    # on losing events at full rate until the shedder looks.  On the first failed submit
    # they turn sampling on and cut the rate x1/4, again at most every 20 ms while it
    # stays full (bpf/maps.h zt_ring_full_cut), down to a floor; counted.  Only when
    # told to (an agent that sheds): the tests' tracers elsewhere just lose records.
    srv = net.hosts[1]
    loop = ("import socket,sys,time\n"
            f"s=socket.create_connection(('{srv.addr}',{PORT}));f=s.makefile('rb')\n"
            "print('connected',flush=True)\n"
            "for _ in range(600):\n"
            "  s.sendall(b'GET /small HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n"
            "  h=b''\n"
            "  while not h.endswith(b'\\r\\n\\r\\n'): h+=f.read(1)\n"
            "  f.read(100)\n"
            "print('done',flush=True)\n")
    cfg = ProbeConfig(netns={h.inode for h in net.hosts}, tls=False, ring_pages=16)
    with SocketTracer(cfg) as t:
        assert t.keep == abi.KEEP_ALL
        t.ready_to_shed()  # what an agent that sheds does when ready
        t0 = time.monotonic()
        client = net.spawn(net.hosts[0], sys.executable, "-c", loop,
                           stdout=subprocess.PIPE, text=True)
        assert "connected" in client.stdout.readline()
        assert "done" in client.stdout.readline()
        took = time.monotonic() - t0
        client.wait(timeout=10)
        keep, stats, drops = t.keep, t.stats(), t.drops()
        shed_mode = t._bpf[b"config"][0].shed_mode  # noqa: SLF001 - the kernel's side
    print(f"keep {keep}, cuts {stats['ring_cuts']}, lost {drops['ringbuf_full']}, "
          f"shed {stats['shed_exchanges']} exchanges in {took:.2f}s")
    assert drops["ringbuf_full"] > 0  # the 64 KiB ring did fill
    assert shed_mode == 1 and keep < abi.KEEP_ALL
    assert 1 <= stats["ring_cuts"] <= took / 0.02 + 1  # paced, not one per lost event
    assert keep >= 64  # never below the floor (ZT_KEEP_FLOOR)
    assert stats["shed_exchanges"] > 0  # whole exchanges left out from then on


SPECULATIVE = """
import select, socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(8)
print('listening', flush=True)
c, _ = srv.accept(); c.setblocking(False)
while True:
    # as Go's net/http and nginx do: read again right after answering, park on EAGAIN
    try:
        data = c.recv(4096)
    except BlockingIOError:
        select.select([c], [], [])
        data = c.recv(4096)
    if not data:
        break
    c.setblocking(True)
    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')
    c.setblocking(False)
"""

PHASED_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
for phase in range(2):
    for _ in range(30):
        s.sendall(b'GET / HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')
        got = b''
        while not got.endswith(b'ok'):
            got += s.recv(100)
        time.sleep(0.01)
    print('phase', phase, flush=True)
    sys.stdin.readline()
"""


def test_a_request_counted_open_on_a_read_that_found_nothing_ends_when_one_is_kept(net):
    # A server that reads again right after answering (Go's net/http, nginx) finds
    # nothing (EAGAIN).  Under sampling that read turns the socket to the request
    # direction: decided at entry by the hash of the next request's seq, shed, and
    # counted open on the thread.  If the keep rate rises before the request comes, its
    # read is kept and no shed answer ends the count: the probes end it when the kept
    # exchange starts (bpf/data.c zt_sample), else the thread carried an open shed
    # request for the connection's life, and every call of its was refused.
    port = PORT + 7
    srv = net.hosts[1]
    server = net.spawn(srv, sys.executable, "-c", SPECULATIVE, srv.addr, str(port),
                       stdout=subprocess.PIPE, text=True)
    assert "listening" in server.stdout.readline()
    with SocketTracer(ProbeConfig(netns={h.inode for h in net.hosts}, tls=False)) as t:
        t.set_keep(0)  # every exchange shed, every EAGAIN turn counted
        client = net.spawn(net.hosts[0], sys.executable, "-c", PHASED_CLIENT, srv.addr,
                           str(port), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
        assert client.stdout.readline().startswith("phase 0")
        time.sleep(0.2)  # the server parked on its read that found nothing
        # the server's connection, accepted before the probes, has its role from the
        # listening port: its accept must not have taken the port out of the map (a
        # connection's socket is cloned from its listener: LISTEN -> SYN_RECV)
        assert t.stats()["shed_connections"] == 0
        t.set_keep(abi.KEEP_ALL)
        t.poll(0.1)
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().startswith("phase 1")
        stamps = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            stamps += [e.stamp for e in t.poll(0.05) if e.type == abi.EV_DATA
                       and e.lport == port and e.flags & abi.F_SHED_STAMP]
        client.stdin.write("\n")
        client.stdin.close()
        client.wait(timeout=10)
    server.kill()
    assert len(stamps) >= 40, len(stamps)  # phase 1's 30 exchanges, kept
    reads = [s & abi.STAMP_READS_MASK for s in stamps]
    opened = [(s >> abi.STAMP_OPEN_SHIFT) & abi.STAMP_OPEN_MASK for s in stamps]
    assert min(reads) >= 30  # phase 0's shed turns were counted on the server's thread
    # the first kept read's stamp, taken at its entry, still counts the request it is
    # reading (its EAGAIN turn); from its exit on, nothing is open
    assert opened[1:] == [0] * (len(opened) - 1), opened[:10]
