"""`zerotrace trace` names an N line by where the hop is: the pods (namespace/name) of
its two hooks, else their netns, `FROM to TO:` when they differ.  A trace recorded from
the real NAT path (tests/net/fixtures/hop_trace.json) with the pod attributes the agent
puts on hops (agent/net/pods.py: the client's veth both ends in shop/checkout-..., the
server's tun in shop/db-0), pushed to a real `zerotrace server` through the agent's
exporter and printed by `zerotrace` run as a process."""

from __future__ import annotations

import re
from dataclasses import replace

from agent.net.pods import PodRef
from tests.cli.cli_proc import push, start_server, zt
from tests.net.flame_check import load_fixture

CHECKOUT = PodRef("checkout-5d9c7b-x2k4q", "shop", "uid-1", "checkout", "pod")
DB = PodRef("db-0", "shop", "uid-2", "db", "pod")


def test_n_lines_name_pods_or_netns(tmp_path):
    spans = load_fixture()
    pre = "zq692b6a"
    pods = {f"{pre}c": CHECKOUT, f"{pre}ch": replace(CHECKOUT, side="host"), f"{pre}tb": DB}
    hops = [s for s in spans if s.source == "N"]
    for n in hops:
        a = n.attributes
        for prefix in ("zerotrace.net.from.", "zerotrace.net."):
            ref = pods.get(a[f"{prefix}interface"])
            if ref is not None:
                a.update(ref.attributes(prefix))
    server, addr = start_server(tmp_path / "data")
    try:
        push(addr, spans)
        r = zt("trace", spans[0].trace_id, "--server", addr)
    finally:
        server.stop()
    assert r.rc == 0, r.err
    lines = [ln.strip() for ln in r.out.splitlines()[1:]]
    n_lines = [ln for ln in lines if ln.startswith("N ")]
    assert len(n_lines) == len(hops) == 10
    got = [re.match(r"N int (.*?: \w+ \S+ \w+ -> \S+ \w+)  ", ln).group(1) for ln in n_lines]
    ck, gw = "shop/checkout-5d9c7b-x2k4q", "zq-692b6a-gw"
    assert got == [  # the path in order: request, then response
        f"{ck}: request {pre}c egress -> {pre}ch ingress",
        f"{ck} to host: request {pre}ch ingress -> {pre}gh egress",
        f"host to {gw}: request {pre}gh egress -> {pre}g ingress",
        f"{gw}: request {pre}g ingress -> {pre}ta egress",
        f"{gw} to shop/db-0: request {pre}ta egress -> {pre}tb ingress",
        f"shop/db-0 to {gw}: response {pre}tb egress -> {pre}ta ingress",
        f"{gw}: response {pre}ta ingress -> {pre}g egress",
        f"{gw} to host: response {pre}g egress -> {pre}gh ingress",
        f"host to {ck}: response {pre}gh ingress -> {pre}ch egress",
        f"{ck}: response {pre}ch egress -> {pre}c ingress",
    ]
    # S lines keep their service
    assert [ln.split()[2] for ln in lines if ln.startswith("S ")] == ["python", "python"]
