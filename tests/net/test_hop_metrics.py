"""Per-hop Prometheus instruments stay bounded and count only N spans."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agent.net.metrics import HopMetrics
from proto.span import SOURCE_NETWORK, SOURCE_SYSCALL, Span


def n_span(i: int, lost: int = 0) -> Span:
    return Span(source=SOURCE_NETWORK, kind="internal", trace_id="ab" * 16, attributes={
        "zerotrace.net.leg": "request", "zerotrace.net.from.netns": "host",
        "zerotrace.net.from.interface": f"veth{i}", "zerotrace.net.netns": "host",
        "zerotrace.net.interface": "cni0", "zerotrace.net.hop_latency_ns": 30_000,
        "zerotrace.net.retransmissions": lost, "zerotrace.net.lost": lost,
        "zerotrace.net.rst": False})


def samples(reg: CollectorRegistry, name: str) -> dict:
    return {s.labels["from_interface"]: s.value for f in reg.collect() for s in f.samples
            if s.name == name}


def test_hops_past_the_cap_count_as_other():
    reg = CollectorRegistry()
    m = HopMetrics(reg, max_hops=3)
    assert m.observe([n_span(i) for i in range(10)]) == 10
    counts = samples(reg, "zerotrace_network_hop_latency_seconds_count")
    assert counts == {"veth0": 1, "veth1": 1, "veth2": 1, "other": 7}


def test_only_network_spans_and_only_real_losses():
    reg = CollectorRegistry()
    m = HopMetrics(reg)
    s = Span(source=SOURCE_SYSCALL, kind="client")
    assert m.observe([s, n_span(0), n_span(1, lost=2)]) == 2
    assert samples(reg, "zerotrace_network_hop_lost_total") == {"veth1": 2}
    assert samples(reg, "zerotrace_network_hop_retransmissions_total") == {"veth1": 2}
    buckets = {s.labels["le"]: s.value for f in reg.collect() for s in f.samples
               if s.name == "zerotrace_network_hop_latency_seconds_bucket"
               and s.labels["from_interface"] == "veth0"}
    assert buckets["2.5e-05"] == 0 and buckets["5e-05"] == 1


def test_pod_hooks_are_labelled_by_workload_not_by_pod():
    # two replicas of one Deployment (different pods, random host veth names): one series
    reg = CollectorRegistry()
    m = HopMetrics(reg)
    spans = []
    for pod, veth in (("checkout-7d9f-a", "veth1a2b"), ("checkout-7d9f-b", "veth9f8e")):
        s = n_span(0)
        s.attributes.update({
            "zerotrace.net.from.interface": "eth0", "zerotrace.net.from.netns": "cni-1",
            "zerotrace.net.from.pod": pod, "zerotrace.net.from.pod.namespace": "shop",
            "zerotrace.net.from.pod.side": "pod", "zerotrace.net.from.workload": "checkout",
            "zerotrace.net.interface": veth, "zerotrace.net.pod": pod,
            "zerotrace.net.pod.namespace": "shop", "zerotrace.net.pod.side": "host",
            "zerotrace.net.workload": "checkout"})
        spans.append(s)
    bare = n_span(1)  # a hook of no pod keeps its names
    m.observe([*spans, bare])
    series = {tuple(s.labels[k] for k in ("from_workload", "from_netns", "from_interface",
                                          "workload", "netns", "interface")): s.value
              for f in reg.collect() for s in f.samples
              if s.name == "zerotrace_network_hop_latency_seconds_count"}
    assert series == {("shop/checkout", "pod", "eth0", "shop/checkout", "host", "veth"): 2,
                      ("", "host", "veth1", "", "host", "cni0"): 1}
