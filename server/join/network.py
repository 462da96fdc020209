"""Network hops (N spans) of a request whose client and server are on two nodes.

Each agent sees only its own node's hooks: the client's agent makes the hops of the
request up to where it left that node (children of the client span) and of the response
from where it arrived; the server's agent the hops of the request from where it
arrived and of the response until it left (children of the server span, marked
`zerotrace.net.placement = server side`).  Each also puts the boundary sightings on
its S span (`zerotrace.net.request.left` / `.response.arrived` on the client span,
`zerotrace.net.request.arrived` / `.response.left` on the server span).

Once the join has linked the two S spans (and only then: the link is the join's exact
rule, never a guess here), this pass builds the hop that crosses between the nodes
from the two boundaries, puts every N span of the exchange under the client span,
and makes the server span a child of the request's last hop: the same shape a
single agent gives a request whose two ends it sees (agent/net/live.py).

The crossing hop's times come from two clocks (each agent's wall clock): it is built
only when the arrival is not before the departure, else the server span says why.
"""

from __future__ import annotations

import hashlib

from proto.span import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, SOURCE_NETWORK, STATUS_OK, Span

PLACEMENT = "zerotrace.net.placement"
POD_KEYS = ("pod", "pod.namespace", "pod.side", "workload")


def _crossing(client: Span, server: Span, leg: str, left: dict | None,
              arrived: dict | None) -> Span | str | None:
    """The hop from `left` (last hook on the sending node) to `arrived` (first hook on
    the receiving node); a reason string when the clocks make it impossible."""
    if not isinstance(left, dict) or not isinstance(arrived, dict):
        return None
    try:
        a_first, a_last = int(left["first_ns"]), int(left["last_ns"])
        b_first = int(arrived["first_ns"])
        a_copies, b_copies = int(left["copies"]), int(arrived["copies"])
    except (KeyError, TypeError, ValueError):
        return f"{leg}: boundary sighting unreadable"
    if b_first < a_first:
        return f"{leg}: arrival {a_first - b_first} ns before departure (node clocks differ)"
    transit = b_first - (a_last if a_last <= b_first else a_first)
    attrs = {
        "zerotrace.net.leg": leg,
        "zerotrace.net.from.interface": str(left.get("interface", "")),
        "zerotrace.net.from.netns": str(left.get("netns", "")),
        "zerotrace.net.from.direction": str(left.get("direction", "")),
        "zerotrace.net.interface": str(arrived.get("interface", "")),
        "zerotrace.net.netns": str(arrived.get("netns", "")),
        "zerotrace.net.direction": str(arrived.get("direction", "")),
        "zerotrace.net.hop_latency_ns": transit,
        "zerotrace.net.retransmissions": max(0, a_copies - 1),
        "zerotrace.net.lost": max(0, a_copies - b_copies),
        "zerotrace.net.rst": bool(left.get("rst")) or bool(arrived.get("rst")),
        "zerotrace.net.zero_window": (bool(left.get("zero_window"))
                                      or bool(arrived.get("zero_window"))),
        "zerotrace.net.packet": str(arrived.get("packet", "")),
        PLACEMENT: "joined across nodes",
    }
    # the pod each node's agent found for its boundary hook (agent/net/pods.py)
    for prefix, end in (("zerotrace.net.from.", left), ("zerotrace.net.", arrived)):
        for k in POD_KEYS:
            if end.get(k):
                attrs[prefix + k] = str(end[k])
    sid = hashlib.blake2b(f"{client.span_id}/{server.span_id}/{leg}".encode(),
                          digest_size=8).hexdigest()
    return Span(
        trace_id=client.trace_id, span_id=sid, parent_span_id=client.span_id,
        kind=KIND_INTERNAL, source=SOURCE_NETWORK, protocol=client.protocol,
        operation=(f"{leg} {left.get('interface', '?')} {left.get('direction', '?')} -> "
                   f"{arrived.get('interface', '?')} {arrived.get('direction', '?')}"),
        status=STATUS_OK, start_ns=a_first, end_ns=b_first, service=client.service,
        transport="tcp", agent=server.agent, attributes=attrs)


def place_across_nodes(spans: list[Span]) -> int:
    """Complete the network path of every client/server pair the join linked; adds the
    crossing hops to `spans` and returns how many."""
    by_id = {s.span_id: s for s in spans}
    under: dict[str, list[Span]] = {}
    for s in spans:
        if s.source == SOURCE_NETWORK:
            under.setdefault(s.parent_span_id, []).append(s)
    added: list[Span] = []
    for srv in spans:
        if srv.kind != KIND_SERVER or srv.attributes.get("zerotrace.join") != "linked":
            continue
        client = by_id.get(srv.parent_span_id)
        if client is None or client.kind != KIND_CLIENT:
            continue
        a, b = client.attributes, srv.attributes
        theirs = [n for n in under.get(srv.span_id, ())
                  if n.attributes.get(PLACEMENT) == "server side"]
        hops = list(under.get(client.span_id, ())) + theirs
        for leg, left, arrived in (("request", a.get("zerotrace.net.request.left"),
                                    b.get("zerotrace.net.request.arrived")),
                                   ("response", b.get("zerotrace.net.response.left"),
                                    a.get("zerotrace.net.response.arrived"))):
            x = _crossing(client, srv, leg, left, arrived)
            if isinstance(x, Span):
                hops.append(x)
                added.append(x)
            elif x:
                b["zerotrace.net.crossing"] = x
        for n in theirs:
            n.parent_span_id = client.span_id
        request = [n for n in hops if n.attributes.get("zerotrace.net.leg") == "request"]
        if request:
            srv.parent_span_id = max(request, key=lambda n: (n.end_ns, n.start_ns)).span_id
    spans.extend(added)
    return len(added)
