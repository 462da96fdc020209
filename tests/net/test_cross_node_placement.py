"""server/join/network.py on hand-made spans: the crossing hop from two boundaries,
placement under the client span, and refusal when the two clocks disagree."""

from __future__ import annotations

from proto.span import Span
from server.join.network import place_across_nodes

TID = "ab" * 16


def sighting(ifname: str, direction: str, first: int, last: int | None = None,
             copies: int = 1) -> dict:
    return {"netns": "n", "interface": ifname, "direction": direction, "first_ns": first,
            "last_ns": first if last is None else last, "copies": copies, "rst": False,
            "zero_window": False, "packet": "a:1>b:2"}


def pair(arrive_ns: int, left_last: int | None = None, copies: int = 1):
    client = Span(trace_id=TID, span_id="c" * 16, kind="client", source="S",
                  start_ns=1_000, end_ns=20_000, attributes={
                      "zerotrace.net.request.left": sighting("ta", "egress", 2_000,
                                                             left_last, copies)})
    server = Span(trace_id=TID, span_id="s" * 16, parent_span_id=client.span_id,
                  kind="server", source="S", start_ns=arrive_ns + 500, end_ns=arrive_ns + 900,
                  attributes={"zerotrace.join": "linked",
                              "zerotrace.net.request.arrived": sighting("tb", "ingress",
                                                                        arrive_ns)})
    theirs = Span(trace_id=TID, span_id="n" * 16, parent_span_id=server.span_id,
                  kind="internal", source="N", start_ns=arrive_ns, end_ns=arrive_ns + 100,
                  attributes={"zerotrace.net.leg": "request",
                              "zerotrace.net.placement": "server side"})
    return client, server, theirs


def test_crossing_hop_between_the_boundaries():
    client, server, theirs = pair(7_000, left_last=3_000, copies=2)
    spans = [client, server, theirs]
    assert place_across_nodes(spans) == 1
    x = spans[-1]
    a = x.attributes
    assert (x.start_ns, x.end_ns, x.parent_span_id) == (2_000, 7_000, client.span_id)
    assert a["zerotrace.net.hop_latency_ns"] == 4_000  # from the copy that got through
    assert a["zerotrace.net.retransmissions"] == 1 and a["zerotrace.net.lost"] == 1
    assert x.operation == "request ta egress -> tb ingress"
    # the server node's own hop moves under the client; the server under the last hop
    assert theirs.parent_span_id == client.span_id
    assert server.parent_span_id == theirs.span_id
    assert place_across_nodes(spans) == 0  # done once


def test_clocks_that_disagree_build_no_hop():
    client, server, theirs = pair(1_500)  # arrival before departure
    spans = [client, server, theirs]
    assert place_across_nodes(spans) == 0
    assert "node clocks differ" in server.attributes["zerotrace.net.crossing"]
    assert server.parent_span_id == theirs.span_id  # the server node's hop still counts


def test_only_pairs_the_join_linked():
    client, server, theirs = pair(7_000)
    del server.attributes["zerotrace.join"]  # stitched on one node: not ours to redo
    spans = [client, server, theirs]
    assert place_across_nodes(spans) == 0
    assert server.parent_span_id == client.span_id and theirs.parent_span_id == server.span_id


def test_crossing_hop_names_the_pods_each_node_found():
    # agent/net/hops.boundary puts the hook's pod (agent/net/pods.py) on the boundary
    client, server, theirs = pair(7_000)
    server.attributes["zerotrace.net.request.arrived"].update(
        {"pod": "db-0", "pod.namespace": "shop", "pod.side": "pod", "workload": "db"})
    spans = [client, server, theirs]
    assert place_across_nodes(spans) == 1
    a = spans[-1].attributes
    assert (a["zerotrace.net.pod"], a["zerotrace.net.pod.namespace"],
            a["zerotrace.net.pod.side"], a["zerotrace.net.workload"]) == (
        "db-0", "shop", "pod", "db")
    assert not any(k.startswith("zerotrace.net.from.pod") for k in a)  # none known there
