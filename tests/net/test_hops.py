"""Issue 18's must-show: per-hop N spans on a real NAT path with a slow link.

client netns -> veth -> bridge -> veth -> gateway netns (MASQUERADE) -> tun ~5 ms~ tun
-> server netns.  The TC probes (bpf/tc.c) and the socket probes run for real; the
client's S spans come from the real pipeline, and their N spans from agent/net/hops.py.
The +5 ms must show on the request's hop across the slow link and on no other hop;
with 20 % loss on that link, lost copies must show on that hop and no other."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from agent.metrics import AgentMetrics
from agent.net.live import NetHops
from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from agent.probes.tc import TcConfig
from tests.helpers.tracing import Draining
from tests.net import flame_check
from tests.net.topology import nat_path

HERE = Path(__file__).resolve().parent
PORT = 8089
DELAY_MS = 5.0


def run(delay_ms: float, loss: float, requests: int, seed: int, slow: str = "ab",
        clients: int = 1, marks: str = "auto", sample_shift: int | None = None) -> dict:
    """Send `requests` on one connection across the path, traced by a real pipeline with
    the TC probes installed on it (agent/net/live.py); the client spans with the N spans
    of their traces, and the server spans."""
    with nat_path(delay_ms, loss, seed=seed, slow=slow) as p:
        srv = p.spawn(p.server, sys.executable, str(HERE / "http_peer.py"), "server",
                      p.server_addr, str(PORT), stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        pipeline = Pipeline()
        pipeline.metrics = AgentMetrics()  # the per-hop histograms register on it
        traces: list = []
        pipeline.on_trace_obj = traces.append
        names = [p.client.name, p.gateway.name, p.server.name]
        net = NetHops(TcConfig(interfaces=f"^{p.prefix}", netns=names, marks=marks,
                               sample_shift=sample_shift))
        try:
            net.install(pipeline)
            with SocketTracer(ProbeConfig(netns={p.client.inode, p.server.inode})) as st, \
                    Draining([(st, pipeline)], settle_s=1.5):
                procs = [subprocess.Popen(p.client.cmd(
                    sys.executable, str(HERE / "http_peer.py"), "client", p.server_addr,
                    str(PORT), str(requests)), stdout=subprocess.DEVNULL)
                    for _ in range(clients)]
                for c in procs:
                    assert c.wait(timeout=120) == 0
        finally:
            net.close()
        spans = {}
        servers = []
        for tr in traces:
            for c in tr.spans:
                if (c.kind == "client" and c.netns == p.client.inode and c.source == "S"
                        and c.operation.startswith("GET /hop/")):
                    spans[c.span_id] = (c, [n for n in tr.spans if n.source == "N"
                                            and n.parent_span_id == c.span_id])
                elif c.kind == "server" and c.netns == p.server.inode and c.source == "S":
                    servers.append((c, {n.span_id: n for n in tr.spans if n.source == "N"}))
        samples = [s for f in pipeline.metrics.registry.collect() for s in f.samples]
        return {"prefix": p.prefix, "spans": spans, "servers": servers, "traces": traces,
                "requests": requests * clients, "gw_link": p.gw_link, "samples": samples,
                "net": net.counters()}


def hop_name(n) -> str:
    a = n.attributes
    return (f"{a['zerotrace.net.leg']}:{a['zerotrace.net.from.interface']}>"
            f"{a['zerotrace.net.interface']}")


def by_hop(result: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for _c, ns in result["spans"].values():
        for n in ns:
            out.setdefault(hop_name(n), []).append(n)
    return out


@pytest.fixture(scope="module")
def slow() -> dict:
    return run(DELAY_MS, 0.0, requests=20, seed=1)


@pytest.fixture(scope="module")
def concurrent() -> dict:
    return run(DELAY_MS, 0.0, requests=10, seed=1, clients=4)


@pytest.fixture(scope="module")
def slow_back() -> dict:
    return run(DELAY_MS, 0.0, requests=20, seed=1, slow="ba")


@pytest.fixture(scope="module")
def lossy() -> dict:
    return run(DELAY_MS, 0.2, requests=30, seed=3)


def expected_hops(prefix: str) -> tuple[list[str], list[str]]:
    path = [f"{prefix}c", f"{prefix}ch", f"{prefix}gh", f"{prefix}g", f"{prefix}ta",
            f"{prefix}tb"]
    req = [f"request:{a}>{b}" for a, b in zip(path, path[1:], strict=False)]
    back = path[::-1]
    resp = [f"response:{a}>{b}" for a, b in zip(back, back[1:], strict=False)]
    return req, resp


def test_every_request_has_its_hops_in_path_order(slow):
    req, resp = expected_hops(slow["prefix"])
    assert len(slow["spans"]) >= 0.9 * slow["requests"], "client S spans missing"
    complete = 0
    for c, ns in slow["spans"].values():
        got = [hop_name(n) for n in ns]
        if got == req + resp:
            complete += 1
        for n in ns:  # children of the client span, inside the trace
            assert n.parent_span_id == c.span_id and n.trace_id == c.trace_id
            assert n.source == "N" and n.start_ns <= n.end_ns
    assert complete >= 0.9 * slow["requests"], f"{complete} with the full path"


def test_server_spans_are_children_of_the_last_request_hop(slow):
    prefix = slow["prefix"]
    under = 0
    for srv, n_spans in slow["servers"]:
        parent = n_spans.get(srv.parent_span_id)
        if parent is not None:
            assert hop_name(parent) == f"request:{prefix}ta>{prefix}tb"
            assert parent.end_ns <= srv.start_ns + 1_000_000  # clocks of two probes
            under += 1
    assert under >= 0.9 * slow["requests"], f"{under} server spans under an N span"


def check_delay_on(result: dict, link: str) -> None:
    hops = by_hop(result)
    report = {}
    for name, ns in hops.items():
        ms = [n.attributes["zerotrace.net.hop_latency_ns"] / 1e6 for n in ns]
        report[name] = (statistics.median(ms), max(ms))
    for name, (med, mx) in sorted(report.items()):
        print(f"{name:<40} median {med:7.3f} ms  max {mx:7.3f} ms")
    med, _ = report.pop(link)
    assert abs(med - DELAY_MS) <= 1.0, f"slow hop {med:.3f} ms"
    # the forwarder holds every packet at least DELAY_MS after the TC egress hook
    assert min(n.attributes["zerotrace.net.hop_latency_ns"] for n in hops[link]) >= \
        DELAY_MS * 1e6 * 0.98
    for name, (med, _mx) in report.items():
        assert med < 1.0, f"{name}: {med:.3f} ms on a hop with no delay"


def test_the_slow_hop_and_only_it_shows_the_delay(slow):
    prefix = slow["prefix"]
    check_delay_on(slow, f"request:{prefix}ta>{prefix}tb")


def test_hop_latency_histograms(slow):
    # one histogram series per hop and leg; the slow link's requests all fall in the
    # buckets above 5 ms, every other hop's below 1 ms
    prefix = slow["prefix"]
    count = {}
    under_1ms = {}
    for s in slow["samples"]:
        key = (s.labels.get("leg"), s.labels.get("from_interface"), s.labels.get("interface"))
        if s.name == "zerotrace_network_hop_latency_seconds_count":
            count[key] = s.value
        elif (s.name == "zerotrace_network_hop_latency_seconds_bucket"
              and s.labels["le"] == "0.001"):
            under_1ms[key] = s.value
    req, resp = expected_hops(prefix)
    names = {f"{leg}:{a}>{b}" for leg, a, b in count}
    assert names == set(req + resp)
    link = ("request", f"{prefix}ta", f"{prefix}tb")
    n_link = sum(1 for _c, ns in slow["spans"].values() for n in ns
                 if hop_name(n) == f"request:{prefix}ta>{prefix}tb")
    assert count[link] == n_link >= 0.9 * slow["requests"]
    assert under_1ms[link] == 0
    assert all(under_1ms[k] == count[k] for k in count if k != link)
    assert slow["net"]["hop_spans"] == sum(count.values())
    assert slow["net"]["ring_full"] == 0 and slow["net"]["hop_records"] > 0


def test_flame_graph_shows_the_hops_between_client_and_server(slow):
    # the N spans as the flame graphs draw them (server/flamegraph), on a real trace;
    # ZT_RECORD_HOP_TRACE=1 saves it for the root-free flame-graph tests
    spans = flame_check.hop_trace(slow["traces"])
    assert spans is not None, "no trace with the full path"
    print(flame_check.check(spans, slow_link_ms=DELAY_MS))
    if os.environ.get("ZT_RECORD_HOP_TRACE") == "1":
        flame_check.save_fixture(spans)


def test_the_response_hop_shows_a_delay_towards_the_client(slow_back):
    prefix = slow_back["prefix"]
    check_delay_on(slow_back, f"response:{prefix}tb>{prefix}ta")


def test_loss_shows_on_the_lossy_hop_only(lossy):
    prefix = lossy["prefix"]
    link = f"request:{prefix}ta>{prefix}tb"
    hops = by_hop(lossy)
    lost = {name: sum(n.attributes["zerotrace.net.lost"] for n in ns)
            for name, ns in hops.items()}
    retrans = sum(n.attributes["zerotrace.net.retransmissions"] for n in hops[link])
    print(f"lost copies per hop: {lost}; retransmissions entering the link: {retrans}")
    lost_on_link = lost.pop(link)
    assert lost_on_link > 0 and retrans > 0
    assert all(v == 0 for v in lost.values())
    # a request that lost a copy still measures the copy that got through
    for n in hops[link]:
        assert n.attributes["zerotrace.net.hop_latency_ns"] >= DELAY_MS * 1e6 * 0.98
    # Prometheus: the lost copies are counted on that hop's labels and no other
    prom_lost = {(s.labels["leg"], s.labels["from_interface"], s.labels["interface"]): s.value
                 for s in lossy["samples"] if s.name == "zerotrace_network_hop_lost_total"}
    assert prom_lost == {("request", f"{prefix}ta", f"{prefix}tb"): lost_on_link}


def test_concurrent_connections_never_borrow_hops(concurrent):
    # four connections at once through the same NAT: every hop of a request carries
    # its own connection's packet, rewritten by MASQUERADE only past the gateway
    prefix, gw = concurrent["prefix"], concurrent["gw_link"]
    req, resp = expected_hops(prefix)
    assert len(concurrent["spans"]) >= 0.9 * concurrent["requests"]
    ports = set()
    for c, ns in concurrent["spans"].values():
        # an S span without resp_seq (seen: the first exchange of each of 4 connections
        # opened at once is 'incomplete: gap' on the socket side) has no response hops
        assert [hop_name(n) for n in ns] == req + (resp if c.resp_seq is not None else [])
        ports.add(c.local.port)
        for n in ns[:len(req)]:
            src, dst = n.attributes["zerotrace.net.packet"].split(">")
            # POSTROUTING runs before the egress hook: rewritten from ta on
            nat = n.attributes["zerotrace.net.interface"] in (f"{prefix}ta", f"{prefix}tb")
            assert dst == f"{c.remote.addr}:{c.remote.port}"
            assert (src.startswith(f"{gw}:") if nat
                    else src == f"{c.local.addr}:{c.local.port}")
        if c.resp_seq is not None:
            last = ns[-1].attributes["zerotrace.net.packet"]
            assert last.endswith(f">{c.local.addr}:{c.local.port}")
    assert len(ports) == 4


def test_syscall_marks_give_the_same_hops():
    # kernels before 6.10 (no tcp_sendmsg_locked) mark writes at syscall entry instead
    r = run(DELAY_MS, 0.0, requests=8, seed=1, marks="syscalls")
    req, resp = expected_hops(r["prefix"])
    full = [ns for _c, ns in r["spans"].values() if [hop_name(n) for n in ns] == req + resp]
    assert len(full) >= 7
    link = [n for ns in full for n in ns if hop_name(n) == req[-1]]
    med = statistics.median(n.attributes["zerotrace.net.hop_latency_ns"] for n in link)
    assert abs(med / 1e6 - DELAY_MS) <= 1.0
