"""CPU of making N spans in process (issue 18): agent/net/live.place on traces of a
client and a server S span whose request and response each passed 4 hooks (as in
bench_tc's wrk: 6 N spans a request), the index filled with packed hop records.

bench_tc has no S spans to join, so it misses this cost: with S spans present it is the
agent's largest hop cost.  Each round times place() with the compiled N span maker
(agent/net/_nspans.pyx: hop_spans, boundary) and with the Python one (agent/net/hops.py
hop_spans_py, boundary_py), on fresh copies of the same traces, alternating, so before
and after share the machine's load.  Both use the same compiled index (HopIndex.path).
Also timed alone: path() and hop_spans for one leg.

    .venv/bin/python -m bench.bench_hops [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

from agent.net import hops
from agent.net.hops import HopIndex
from agent.net.live import place
from agent.probes.tc import HOP, Hook
from proto.span import Endpoint, Span

CNS, SNS = 111, 222
HOOKS = {(CNS, 2): Hook("a", CNS, 2, "va", False), (0, 3): Hook("host", 0, 3, "vah", False),
         (0, 4): Hook("host", 0, 4, "vbh", False), (SNS, 2): Hook("b", SNS, 2, "vb", False)}
PATH = [(CNS, 2, 0), (0, 3, 1), (0, 4, 0), (SNS, 2, 1)]  # netns, ifindex, direction


def records(n: int) -> tuple[list[bytes], list[tuple]]:
    """Packed hop records of n requests and their responses, and each request's
    (port, req_seq, resp_seq)."""
    sa, da = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    raws, reqs = [], []
    ts = 1
    for i in range(n):
        port = 40000 + i % 8
        req, resp = (i * 7919) & 0xffffffff, (i * 7919 + 3) & 0xffffffff
        for seq, w, hp in ((req, (CNS, port, 8090), PATH), (resp, (SNS, 8090, port), PATH[::-1])):
            for ns, ifx, d in hp:
                ts += 700
                raws.append(HOP.pack(ts, ns, 0, seq, ifx, w[0], sa, da, 100, w[1], w[2], w[1],
                                     w[2], 40, d, 0x18, 500, 0, 4))
        reqs.append((port, req, resp))
    return raws, reqs


def traces(reqs: list[tuple]) -> list[list[Span]]:
    """Fresh client + server spans (place() re-parents and annotates them)."""
    out = []
    for port, req, resp in reqs:
        c = Span(kind="client", source="S", netns=CNS, local=Endpoint("10.0.0.1", port),
                 remote=Endpoint("10.0.0.2", 8090), req_seq=req, resp_seq=resp,
                 trace_id="t" * 32, protocol="http", service="client")
        s = Span(kind="server", source="S", netns=SNS, local=Endpoint("10.0.0.2", 8090),
                 remote=Endpoint("10.0.0.1", port), req_seq=req, resp_seq=resp,
                 trace_id="t" * 32, parent_span_id=c.span_id, protocol="http",
                 service="server")
        out.append([c, s])
    return out


def time_place(index: HopIndex, trs: list[list[Span]]) -> tuple[float, int]:
    t = time.process_time_ns()
    n = 0
    for tr in trs:
        n += len(place(tr, index, HOOKS, 0))
    return (time.process_time_ns() - t) / len(trs) / 1000, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    raws, reqs = records(a.requests)
    index = HopIndex(max_messages=4 * a.requests, max_records=16 * a.requests)
    index.add_raw(raws)
    compiled, python = hops.hop_spans, hops.hop_spans_py
    cbound = hops.boundary
    res: dict[str, list[float]] = {"python (hops.py)": [], "compiled (_nspans)": []}
    leg: dict[str, list[float]] = {"python (hops.py)": [], "compiled (_nspans)": []}
    per_req = 0.0
    try:
        for _ in range(a.rounds):
            for name, fn in (("python (hops.py)", python), ("compiled (_nspans)", compiled)):
                hops.hop_spans = fn  # what client_hops / server_hops call
                hops.boundary = cbound if fn is compiled else hops.boundary_py
                trs = traces(reqs)
                us, n = time_place(index, trs)
                per_req = n / len(trs)
                res[name].append(us)
                paths = [(c, index.path((c.netns, c.local.port, c.remote.port, c.req_seq)))
                         for c, _ in trs[:2000]]
                t = time.process_time_ns()
                for c, p in paths:
                    fn(p, HOOKS, c, "request", 0, hops.NO_PODS)
                leg[name].append((time.process_time_ns() - t) / len(paths) / 1000)
    finally:
        hops.hop_spans, hops.boundary = compiled, cbound
    trs = traces(reqs[:2000])
    keys = [(c.netns, c.local.port, c.remote.port, c.req_seq) for c, _ in trs]
    path_runs = []
    for _ in range(a.rounds):
        t = time.process_time_ns()
        for k in keys:
            index.path(k)
        path_runs.append((time.process_time_ns() - t) / len(keys) / 1000)
    path_us = statistics.median(path_runs)
    print(f"# bench_hops: {a.requests} requests a round, {per_req:.1f} N spans a request, "
          f"{a.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    base = statistics.median(res["python (hops.py)"])
    for name, v in res.items():
        m = statistics.median(v)
        print(f"  place(), {name:<22} {m:7.2f} us CPU a request  ratio {m / base:.3f}   "
              f"hop_spans of one leg (3 spans) {statistics.median(leg[name]):6.2f} us   "
              f"(rounds {', '.join(f'{x:.1f}' for x in v)})")
    print(f"  index.path() of one leg (4 hooks): {path_us:.2f} us")


if __name__ == "__main__":
    main()
