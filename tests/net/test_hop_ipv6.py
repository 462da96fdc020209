"""IPv6 hops: the TC probes (bpf/tc.c) parse IPv6/TCP and the marks take AF_INET6
sockets, so a request over IPv6 through a pod-like veth, the host's bridge and another
veth gets its N spans like one over IPv4.

client netns --veth--> bridge (root netns) --veth--> server netns, ULA addresses
(fd00:<n>::/64, no duplicate address detection so they work at once)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.net.live import NetHops
from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from agent.probes.tc import TcConfig
from tests.helpers.netns import Host, kill_group, sh
from tests.helpers.tracing import Draining

HERE = Path(__file__).resolve().parent
PORT = 8094
REQUESTS = 10


@contextmanager
def v6_bridge() -> Iterator[tuple[str, Host, Host]]:
    tag = uuid.uuid4().hex[:6]
    pre = f"zs{tag}"
    c, s = Host(f"zs-{tag}-client", "fd00:e6::1"), Host(f"zs-{tag}-server", "fd00:e6::2")
    br = f"{pre}br"
    made: list[str] = []
    try:
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "link", "set", br, "up")
        for h, short in ((c, "c"), (s, "s")):
            sh("ip", "netns", "add", h.name)
            made.append(h.name)
            sh(*h.cmd("ip", "link", "set", "lo", "up"))
            outer, inner = f"{pre}{short}h", f"{pre}{short}"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", inner, "netns", h.name)
            sh("ip", "link", "set", outer, "master", br)
            sh("ip", "link", "set", outer, "up")
            sh(*h.cmd("ip", "-6", "addr", "add", f"{h.addr}/64", "dev", inner, "nodad"))
            sh(*h.cmd("ip", "link", "set", inner, "up"))
        yield pre, c, s
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)


@pytest.fixture(scope="module")
def v6() -> dict:
    with v6_bridge() as (pre, c, s):
        srv = s.popen(sys.executable, str(HERE / "http_peer.py"), "server", s.addr, str(PORT),
                      stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            pipeline = Pipeline()
            traces: list = []
            pipeline.on_trace_obj = traces.append
            net = NetHops(TcConfig(interfaces=f"^{pre}", netns=[c.name, s.name]))
            try:
                net.install(pipeline)
                with SocketTracer(ProbeConfig(netns={c.inode, s.inode})) as st, \
                        Draining([(st, pipeline)], settle_s=1.5):
                    cl = subprocess.Popen(c.cmd(
                        sys.executable, str(HERE / "http_peer.py"), "client", s.addr,
                        str(PORT), str(REQUESTS)), stdout=subprocess.DEVNULL)
                    assert cl.wait(timeout=120) == 0
            finally:
                net.close()
        finally:
            kill_group(srv)
        clients = [(x, [n for n in tr.spans if n.source == "N" and n.parent_span_id == x.span_id])
                   for tr in traces for x in tr.spans
                   if x.kind == "client" and x.source == "S" and x.netns == c.inode
                   and x.operation.startswith("GET /hop/")]
        return {"prefix": pre, "clients": clients, "client": c.addr, "server": s.addr}


def test_ipv6_requests_get_their_hops(v6):
    pre = v6["prefix"]
    path = [f"{pre}c", f"{pre}ch", f"{pre}sh", f"{pre}s"]
    want = ([f"request:{a}>{b}" for a, b in zip(path, path[1:], strict=False)]
            + [f"response:{a}>{b}" for a, b in zip(path[::-1], path[::-1][1:], strict=False)])
    assert len(v6["clients"]) >= 0.9 * REQUESTS
    full = 0
    for c, ns in v6["clients"]:
        got = [f"{n.attributes['zerotrace.net.leg']}:{n.attributes['zerotrace.net.from.interface']}"
               f">{n.attributes['zerotrace.net.interface']}" for n in ns]
        if got != want:
            continue
        full += 1
        for n in ns:
            src, dst = n.attributes["zerotrace.net.packet"].split(">")
            client_end = f"[{v6['client']}]:{c.local.port}"
            server_end = f"[{v6['server']}]:{PORT}"
            leg = n.attributes["zerotrace.net.leg"]
            assert (src, dst) == ((client_end, server_end) if leg == "request"
                                  else (server_end, client_end))
            assert 0 < n.attributes["zerotrace.net.hop_latency_ns"] < 50_000_000
    assert full >= 0.9 * REQUESTS, [len(ns) for _c, ns in v6["clients"]]
