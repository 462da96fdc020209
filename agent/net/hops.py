"""Hop records (agent/probes/tc.py) become N spans: one per hop of a request and of its
response, from the packet carrying the message's first byte at one hook to the same
packet at the next.

A message is named by what the writing socket saw: (netns inode, local port, remote
port, TCP seq of the first byte).  That is exactly the key a client S span carries for
its request (netns, local.port, remote.port, req_seq), so joining a request's hops to
its span needs no guess.  The response is written by the server, whose ports differ
behind NAT; it is found by its seq (the client span's resp_seq) and accepted only when
the response's sighting in the client's own netns is addressed to the client's port.

Per hop:
- the span runs from the first sighting at the earlier hook to the first sighting at
  the later one (what the hop added to the exchange, retransmission waits included);
- `zerotrace.net.hop_latency_ns` is the transit of the copy that got through: the first
  sighting at the later hook minus the last sighting at the earlier hook before it;
- `zerotrace.net.retransmissions` counts copies beyond the first at the earlier hook,
  `zerotrace.net.lost` the copies seen there and never at the later hook.

The records are indexed by compiled code (agent/net/_hops.pyx: `HopIndex`, and
`HopRing`, which drains the kernel's ring into it); this module makes the spans.
"""

from __future__ import annotations

import os

from agent.net._hops import HopIndex
from agent.net._nspans import boundary, hop_spans
from agent.net.pods import PodRef
from agent.net.sighting import HookKey, Sighting
from agent.probes.tc import Hook
from proto.span import KIND_INTERNAL, SOURCE_NETWORK, STATUS_OK, Span

__all__ = ["HopIndex", "Sighting", "boundary", "boundary_py", "client_hops", "hop_spans",
           "hop_spans_py", "server_hops", "spans_for_client"]

TCP_RST = 0x04
MessageKey = tuple[int, int, int, int]  # writer netns, writer lport, writer rport, seq


class _NoPods:
    """No interface -> pod map (outside Kubernetes): hops are named by netns."""

    @staticmethod
    def get(_key: tuple[int, int]) -> PodRef | None:
        return None


NO_PODS = _NoPods()


def _hook_name(hooks: dict[tuple[int, int], Hook], hk: HookKey) -> tuple[str, str]:
    h = hooks.get((hk[0], hk[1]))
    if h is None:
        return f"netns:{hk[0]}", f"if{hk[1]}"
    return h.netns, h.ifname


def hop_spans_py(path: list[Sighting], hooks: dict[tuple[int, int], Hook], parent: Span,
                 leg: str, wall_offset: int, pods=NO_PODS) -> list[Span]:
    """One N span per consecutive pair of hooks of `path`, children of `parent`; a hook
    that belongs to a pod (`pods`: agent/net/pods.py) names it in the attributes.

    `hop_spans` (agent/net/_nspans.pyx) is the same compiled:
    this is the reference tests/net/test_nspans.py compares it with, and
    bench/bench_hops.py's "before"."""
    out: list[Span] = []
    if len(path) < 2:
        return out
    # each sighting ends one hop and starts the next: its names, direction and pod
    # looked up once
    info = []
    for s in path:
        ns, ifname = _hook_name(hooks, s.hook)
        info.append((ns, ifname, "egress" if s.hook[2] == 0 else "ingress",
                     pods.get(s.hook[:2])))
    # the hops' span ids from one getrandom call: a call per span (new_span_id) was
    # ~1/4 of making an N span on the busy machine (prof of agent/net/live.place)
    ids = os.urandom(8 * (len(path) - 1)).hex()
    for i in range(len(path) - 1):
        a, b = path[i], path[i + 1]
        a_ns, a_if, a_dir, pa = info[i]
        b_ns, b_if, b_dir, pb = info[i + 1]
        arrived = b.times[0]
        last = a.times[-1]  # times are sorted: the last copy, unless it came after
        if last > arrived:
            before = [t for t in a.times if t <= arrived]
            last = before[-1] if before else a.times[0]
        transit = arrived - last
        attrs = {
            "zerotrace.net.leg": leg,
            "zerotrace.net.from.interface": a_if, "zerotrace.net.from.netns": a_ns,
            "zerotrace.net.from.direction": a_dir,
            "zerotrace.net.interface": b_if, "zerotrace.net.netns": b_ns,
            "zerotrace.net.direction": b_dir,
            "zerotrace.net.hop_latency_ns": transit,
            "zerotrace.net.retransmissions": len(a.times) - 1,
            "zerotrace.net.lost": max(0, len(a.times) - len(b.times)),
            "zerotrace.net.rst": bool((a.flags | b.flags) & TCP_RST),
            "zerotrace.net.zero_window": a.zero_window or b.zero_window,
            "zerotrace.net.packet": b.packet,
        }
        if pa is not None:
            attrs.update(pa.attributes("zerotrace.net.from."))
        if pb is not None:
            attrs.update(pb.attributes("zerotrace.net."))
        out.append(Span(
            trace_id=parent.trace_id, span_id=ids[16 * i:16 * i + 16],
            parent_span_id=parent.span_id, kind=KIND_INTERNAL,
            source=SOURCE_NETWORK, protocol=parent.protocol,
            # interfaces only: `zerotrace trace` cuts operations at 70 characters, and
            # the namespaces are in the attributes
            operation=f"{leg} {a_if} {a_dir} -> {b_if} {b_dir}",
            status=STATUS_OK, start_ns=a.first + wall_offset, end_ns=arrived + wall_offset,
            service=parent.service, netns=b.hook[0], transport="tcp", agent=parent.agent,
            attributes=attrs))
    return out


def boundary_py(s: Sighting, hooks: dict[tuple[int, int], Hook], wall_offset: int,
                pods=NO_PODS) -> dict:
    """A message's sightings at one hook, for the hop that crosses to another node (the
    server builds it from both nodes' boundaries: server/join/network.py).

    `boundary` (agent/net/_nspans.pyx) is the same compiled; this is the reference
    tests/net/test_nspans.py compares it with."""
    ns, ifname = _hook_name(hooks, s.hook)
    out = {"netns": ns, "interface": ifname,
           "direction": "egress" if s.hook[2] == 0 else "ingress",
           "first_ns": s.times[0] + wall_offset, "last_ns": s.times[-1] + wall_offset,
           "copies": len(s.times), "rst": bool(s.flags & TCP_RST),
           "zero_window": s.zero_window, "packet": s.packet}
    ref = pods.get(s.hook[:2])
    if ref is not None:
        out.update(ref.attributes(""))
    return out


def _leg(index: HopIndex, key: MessageKey | None, hooks: dict[tuple[int, int], Hook],
         parent: Span, leg: str, wall_offset: int,
         pods=NO_PODS) -> tuple[list[Span], list[Sighting]]:
    if key is None:
        return [], []
    path = index.path(key)
    # None: the compiled maker skips the pod lookups (hop_spans_py takes NO_PODS)
    p = None if pods is NO_PODS and hop_spans is not hop_spans_py else pods
    return hop_spans(path, hooks, parent, leg, wall_offset, p), path


def client_hops(index: HopIndex, client: Span, hooks: dict[tuple[int, int], Hook],
                wall_offset: int, pods=NO_PODS) -> list[Span]:
    """`spans_for_client`, and on the client span where its request left this node and
    its response arrived (`zerotrace.net.request.left`, `zerotrace.net.response.arrived`)
    for a server on another node."""
    out: list[Span] = []
    if client.req_seq is not None:
        key = (client.netns, client.local.port, client.remote.port, client.req_seq)
        spans, path = _leg(index, key, hooks, client, "request", wall_offset, pods)
        out += spans
        if path:
            client.attributes["zerotrace.net.request.left"] = boundary(
                path[-1], hooks, wall_offset, pods)
    if client.resp_seq is not None:
        # marked by this node's reader (the writer is elsewhere), else by the writer here
        own = (client.netns, client.local.port, client.remote.port, client.resp_seq)
        rkey = own if own in index else index.response_key(
            client.resp_seq, client.netns, client.local.port)
        spans, path = _leg(index, rkey, hooks, client, "response", wall_offset, pods)
        out += spans
        if path:
            client.attributes["zerotrace.net.response.arrived"] = boundary(
                path[0], hooks, wall_offset, pods)
    return out


def server_hops(index: HopIndex, server: Span, hooks: dict[tuple[int, int], Hook],
                wall_offset: int, pods=NO_PODS) -> list[Span]:
    """For a server span whose client is not on this node: the hops of its request from
    where it entered this node, and of its response until it left, as children of the
    server span (the server re-parents them under the client span when it joins the
    two nodes' fragments), and the boundaries on the server span
    (`zerotrace.net.request.arrived`, `zerotrace.net.response.left`)."""
    out: list[Span] = []
    me = (server.netns, server.local.port, server.remote.port)
    if server.req_seq is not None:
        spans, path = _leg(index, (*me, server.req_seq), hooks, server, "request",
                           wall_offset, pods)
        out += spans
        if path:
            server.attributes["zerotrace.net.request.arrived"] = boundary(
                path[0], hooks, wall_offset, pods)
    if server.resp_seq is not None:
        spans, path = _leg(index, (*me, server.resp_seq), hooks, server, "response",
                           wall_offset, pods)
        out += spans
        if path:
            server.attributes["zerotrace.net.response.left"] = boundary(
                path[-1], hooks, wall_offset, pods)
    for n in out:
        n.attributes["zerotrace.net.placement"] = "server side"
    return out


spans_for_client = client_hops  # the name tests and benchmarks know
