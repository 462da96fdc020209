"""Prometheus instruments of the network hops (N spans): per-hop latency histograms and
counters of retransmitted, lost and reset copies.

A hop is labelled by the two hooks it joins (`from_workload`, `from_netns`,
`from_interface`, `workload`, `netns`, `interface`) and the message's leg
(`request`/`response`).  A hook that belongs to a pod (agent/net/pods.py) is labelled
by what outlives the pod: `workload` = `namespace/workload` (the pod's name when it
has no workload), `netns` = `pod` or `host` (its side of the pod's veth), and
`interface` = the name inside the pod (`eth0`) or `veth` for the host end (whose name
is random per pod).  So a rolling restart adds no series; the exact pod and names are
on the N spans, reached from the histogram's trace-id exemplars.  Other hooks keep their
netns and interface names (`workload` empty).  The set is capped anyway: past
`max_hops` distinct hops the rest are counted under `other`.  The latency is
`zerotrace.net.hop_latency_ns`, the transit of the copy that got through, so that a
retransmission shows in the counters and not as a slow bucket.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proto.span import SOURCE_NETWORK, Span

# transit through a veth or a bridge is microseconds; a NIC, a tunnel or a congested link
# milliseconds
_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, .001, .0025, .005, .01, .025, .05, .1,
            .25, .5, 1)
_LABELS = ("leg", "from_workload", "from_netns", "from_interface", "workload", "netns",
           "interface")
OTHER = ("other",) * 6


def _end(a: dict, p: str) -> tuple[str, str, str]:
    """(workload, netns, interface) labels of one end of a hop (attribute prefix p)."""
    pod = a.get(f"{p}pod")
    if not pod:
        return "", str(a.get(f"{p}netns", "")), str(a.get(f"{p}interface", ""))
    group = f"{a.get(f'{p}pod.namespace', '')}/{a.get(f'{p}workload') or pod}"
    if a.get(f"{p}pod.side") == "host":
        return group, "host", "veth"
    return group, "pod", str(a.get(f"{p}interface", ""))


class HopMetrics:
    """Observes the N spans of emitted traces into bounded per-hop instruments."""

    def __init__(self, registry: CollectorRegistry, max_hops: int = 256) -> None:
        self.max_hops = max_hops
        self._hops: set[tuple[str, ...]] = set()
        self.latency = Histogram(
            "zerotrace_network_hop_latency_seconds",
            "Transit time of a message's first packet from one TC hook to the next",
            _LABELS, buckets=_BUCKETS, registry=registry)
        self.retransmissions = Counter(
            "zerotrace_network_hop_retransmissions",
            "Copies of a message's first packet seen again at a hop's first hook",
            _LABELS, registry=registry)
        self.lost = Counter(
            "zerotrace_network_hop_lost",
            "Copies of a message's first packet seen at a hop's first hook, never at "
            "its second", _LABELS, registry=registry)
        self.sampling = Gauge(
            "zerotrace_network_hop_sampling_ratio",
            "Fraction of messages whose hops are recorded (1 in 2^k by a hash of the "
            "message's TCP seq; lowered under load to keep hop records in budget)",
            registry=registry)
        self.sampling.set(1.0)
        self.resets = Counter(
            "zerotrace_network_hop_resets",
            "Hops whose packets carried a TCP RST", _LABELS, registry=registry)

    def _hop(self, a: dict) -> tuple[str, ...]:
        hop = (*_end(a, "zerotrace.net.from."), *_end(a, "zerotrace.net."))
        if hop not in self._hops:
            if len(self._hops) >= self.max_hops:
                return OTHER
            self._hops.add(hop)
        return hop

    def observe(self, spans: Iterable[Span]) -> int:
        """Record the N spans among `spans`; returns how many there were."""
        n = 0
        for s in spans:
            if s.source != SOURCE_NETWORK:
                continue
            a = s.attributes
            labels = (str(a.get("zerotrace.net.leg", "")), *self._hop(a))
            n += 1
            self.latency.labels(*labels).observe(
                int(a.get("zerotrace.net.hop_latency_ns", 0)) / 1e9,
                exemplar={"trace_id": s.trace_id} if s.trace_id else None)
            retrans = int(a.get("zerotrace.net.retransmissions", 0))
            if retrans:
                self.retransmissions.labels(*labels).inc(retrans)
            lost = int(a.get("zerotrace.net.lost", 0))
            if lost:
                self.lost.labels(*labels).inc(lost)
            if a.get("zerotrace.net.rst"):
                self.resets.labels(*labels).inc()
        return n
