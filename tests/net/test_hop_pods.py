"""Hops named by their pods (agent/net/pods.py) on real namespaces, with the
Kubernetes enricher fed by the recorded API responses of tests/enrich.

The path of tests/net/topology.py: the client netns holds a process in the real cgroup
of the recorded pod `shop/checkout-...` (its containerd container), the server netns one
in the cgroup of `shop/db-0` (CRI-O); the gateway netns holds two processes tied to two
different pods, so it must name none.  The enricher resolves pid -> cgroup -> container
-> pod against a loopback server replaying the recorded pod list; the agent wiring
(`NetHops.install` on a pipeline with that enricher) does the rest.

What must hold: the client's veth, both ends (inside the pod and the host end, found
through the veth's peer netns id), is named by the checkout pod; the server's tun by
the db pod; the gateway's devices and the bridge port towards it by none; the
Prometheus hop series are labelled by workload, not by pod or random veth names.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.enrich import EnrichConfig, Enricher
from agent.metrics import AgentMetrics
from agent.net.live import NetHops
from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from agent.probes.tc import TcConfig
from tests.enrich.cgroups import CgroupLab
from tests.enrich.conftest import C_CHECKOUT, C_DB, U_CHECKOUT, U_DB, systemd_pod_slice
from tests.enrich.kubereplay import ReplayApi, Reply, fixture, wait_until
from tests.helpers.tracing import Draining
from tests.net.topology import nat_path

HERE = Path(__file__).resolve().parent
PORT = 8093
REQUESTS = 10
CHECKOUT = "checkout-7d9f8b6c5d-x2x9q"  # tests/enrich/fixtures/podlist.json
DB = "db-0"


def _pause(p, host, cgroup: Path) -> subprocess.Popen:
    """A process living in `host`'s netns and in `cgroup` (a pod's pause container)."""
    proc = p.spawn(host, "sleep", "300")
    (cgroup / "cgroup.procs").write_text(str(proc.pid))
    return proc


@pytest.fixture(scope="module")
def podded() -> dict:
    lab = CgroupLab()
    if not lab.v2:
        pytest.fail("no cgroup v2 hierarchy mounted")
    api = ReplayApi().start()
    api.script("replicaset", Reply(body=fixture("replicaset.json")))
    enricher = None
    try:
        with nat_path(0.0, 0.0, seed=1, subnet=238) as p:
            cg_checkout = lab.make(f"{systemd_pod_slice('burstable', U_CHECKOUT)}/"
                                   f"cri-containerd-{C_CHECKOUT}.scope")
            cg_db = lab.make(f"{systemd_pod_slice('besteffort', U_DB)}/crio-{C_DB}.scope")
            _pause(p, p.client, cg_checkout)
            _pause(p, p.server, cg_db)
            # the gateway: processes of two different pods in one netns -> no pod
            _pause(p, p.gateway, cg_checkout)
            _pause(p, p.gateway, cg_db)
            srv = p.spawn(p.server, sys.executable, str(HERE / "http_peer.py"), "server",
                          p.server_addr, str(PORT), stdout=subprocess.PIPE, text=True)
            assert srv.stdout.readline().strip() == "ready"
            enricher = Enricher(EnrichConfig(
                node_name="node-a", api_host=api.url, host_name="test-host",
                backoff_initial=0.02, backoff_max=0.1, request_timeout=1.0))
            assert enricher.pods.wait_synced(5)
            pipeline = Pipeline()
            pipeline.metrics = AgentMetrics()
            pipeline.enricher = enricher
            traces: list = []
            pipeline.on_trace_obj = traces.append
            net = NetHops(TcConfig(interfaces=f"^{p.prefix}",
                                   netns=[p.client.name, p.gateway.name, p.server.name]))
            try:
                net.install(pipeline)  # makes the hook -> pod map from the enricher
                assert net.pods is not None
                names = {h.ifname: k for k, h in net.tc.hooks.items()}
                # the hop thread resolves pods of new hooks about once a second
                wanted = [f"{p.prefix}c", f"{p.prefix}ch", f"{p.prefix}tb"]
                assert wait_until(lambda: all(net.pods.get(names[n]) for n in wanted),
                                  timeout=15), net.pods.refused
                refused = {h.ifname: net.pods.refused.get(k) for k, h in net.tc.hooks.items()}
                with SocketTracer(ProbeConfig(netns={p.client.inode})) as st, \
                        Draining([(st, pipeline)], settle_s=1.5):
                    c = subprocess.Popen(p.client.cmd(
                        sys.executable, str(HERE / "http_peer.py"), "client", p.server_addr,
                        str(PORT), str(REQUESTS)), stdout=subprocess.DEVNULL)
                    assert c.wait(timeout=120) == 0
                pods = {h.ifname: net.pods.get(k) for k, h in net.tc.hooks.items()}
            finally:
                net.close()
            clients = [(s, [n for n in tr.spans if n.source == "N"
                            and n.parent_span_id == s.span_id])
                       for tr in traces for s in tr.spans
                       if s.kind == "client" and s.source == "S"
                       and s.operation.startswith("GET /hop/")]
            samples = [s for f in pipeline.metrics.registry.collect() for s in f.samples]
            return {"prefix": p.prefix, "gw": p.gateway.name, "pods": pods, "refused": refused,
                    "clients": clients, "samples": samples}
    finally:
        if enricher is not None:
            enricher.close()
        api.stop()
        lab.close()


def test_each_hook_is_named_by_its_pod_or_by_none(podded):
    pre, pods = podded["prefix"], podded["pods"]
    got = {name[len(pre):]: (ref.namespace, ref.name, ref.workload, ref.side) if ref else None
           for name, ref in pods.items()}
    assert got == {
        "c": ("shop", CHECKOUT, "checkout", "pod"),    # inside the client pod
        "ch": ("shop", CHECKOUT, "checkout", "host"),  # host end of its veth
        "gh": None, "g": None, "ta": None,             # the gateway: two pods, refused
        "tb": ("shop", DB, "db", "pod"),
        "br": None,                                    # the host's bridge: no pod's
    }
    assert podded["refused"][f"{pre}br"] == "the agent's netns"
    assert podded["refused"][f"{pre}g"] == "ambiguous"
    assert podded["refused"][f"{pre}gh"] == "peer: ambiguous"


def test_n_spans_carry_the_pods_of_both_ends(podded):
    pre = podded["prefix"]
    full = [ns for _c, ns in podded["clients"] if len(ns) == 10]
    assert len(full) >= 0.9 * REQUESTS, [len(ns) for _c, ns in podded["clients"]]
    for ns in full:
        by = {(n.attributes["zerotrace.net.leg"], n.attributes["zerotrace.net.from.interface"],
               n.attributes["zerotrace.net.interface"]): n.attributes for n in ns}
        a = by[("request", f"{pre}c", f"{pre}ch")]
        assert (a["zerotrace.net.from.pod"], a["zerotrace.net.from.pod.side"]) == (CHECKOUT, "pod")
        assert (a["zerotrace.net.pod"], a["zerotrace.net.pod.side"]) == (CHECKOUT, "host")
        assert a["zerotrace.net.pod.namespace"] == "shop"
        assert a["zerotrace.net.workload"] == "checkout"
        b = by[("request", f"{pre}ch", f"{pre}gh")]
        assert b["zerotrace.net.from.pod"] == CHECKOUT and "zerotrace.net.pod" not in b
        link = by[("request", f"{pre}ta", f"{pre}tb")]
        assert "zerotrace.net.from.pod" not in link
        assert (link["zerotrace.net.pod"], link["zerotrace.net.workload"]) == (DB, "db")
        back = by[("response", f"{pre}tb", f"{pre}ta")]
        assert back["zerotrace.net.from.pod"] == DB and "zerotrace.net.pod" not in back
        home = by[("response", f"{pre}ch", f"{pre}c")]
        assert (home["zerotrace.net.from.pod.side"], home["zerotrace.net.pod.side"]) == (
            "host", "pod")


def test_hop_series_are_labelled_by_workload(podded):
    pre = podded["prefix"]
    series = {tuple(s.labels[k] for k in ("leg", "from_workload", "from_netns",
                                          "from_interface", "workload", "netns",
                                          "interface"))
              for s in podded["samples"] if s.name == "zerotrace_network_hop_latency_seconds_count"}
    assert ("request", "shop/checkout", "pod", f"{pre}c", "shop/checkout", "host",
            "veth") in series
    assert ("request", "shop/checkout", "host", "veth", "", "host", f"{pre}gh") in series
    assert ("request", "", podded["gw"], f"{pre}ta", "shop/db", "pod", f"{pre}tb") in series
    # no pod name and no host veth name of a pod in any label
    for s in series:
        assert CHECKOUT not in s and DB not in s and f"{pre}ch" not in s


def test_pod_of_pids_never_guesses():
    from agent.net.pods import pod_of_pids

    pods = {1: {"k8s.pod.uid": "u1", "k8s.pod.name": "a", "k8s.namespace.name": "ns",
                "k8s.workload.name": "wa"},
            2: {"k8s.pod.uid": "u2", "k8s.pod.name": "b", "k8s.namespace.name": "ns"},
            3: {"host.name": "node"}}  # a process the enricher ties to no pod

    def tags(pid):
        if pid == 4:
            raise FileNotFoundError  # exited while being read
        return pods[pid]

    ref, why = pod_of_pids([3, 1, 4, 1], tags)
    assert (ref.name, ref.namespace, ref.workload, ref.group, why) == ("a", "ns", "wa",
                                                                       "ns/wa", "")
    assert pod_of_pids([1, 2], tags) == (None, "ambiguous")
    assert pod_of_pids([3, 4], tags) == (None, "no pod")
