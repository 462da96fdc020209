"""What a flame graph of a trace with network hops must show (server/flamegraph), checked
on traces the real network test makes (tests/net/test_hops.py) and on one recorded from
it (tests/net/fixtures/hop_trace.json, used by tests/server/test_flamegraph_network.py).

The trace: a client S span, its N spans (children of the client: the request's hops,
then the response's), and the server S span under the request's last hop.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from proto.span import Span
from server.flamegraph import render_trace
from server.flamegraph.stacks import _union_len, fold, frame_name, trace_bars, walk
from server.flamegraph.svg import MARK

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "hop_trace.json"
CLOCKS_NS = 1_000_000  # the socket and TC probes' clocks agree to well within this


def load_fixture() -> list[Span]:
    return [Span.from_dict(d) for d in json.loads(FIXTURE.read_text())]


def save_fixture(spans: list[Span]) -> None:
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps([s.to_dict() for s in spans], indent=1, sort_keys=True)
                       + "\n")


def hop_trace(traces) -> list[Span] | None:
    """The spans of the first trace whose client span has its full path of hops and a
    server span under the request's last hop."""
    for tr in traces:
        spans = tr.spans if hasattr(tr, "spans") else tr
        n = [s for s in spans if s.source == "N"]
        ids = {s.span_id for s in n}
        servers = [s for s in spans if s.kind == "server" and s.source == "S"
                   and s.parent_span_id in ids]
        if len(n) == 10 and len(servers) == 1:
            return list(spans)
    return None


def check(spans: list[Span], slow_link_ms: float | None = None) -> dict:
    """Assert the flame graph's shape; returns figures for the caller to print."""
    by_id = {s.span_id: s for s in spans}
    (srv,) = [s for s in spans if s.kind == "server" and s.source == "S"]
    hop = by_id[srv.parent_span_id]
    client = by_id[hop.parent_span_id]
    assert hop.source == "N" and client.kind == "client" and client.source == "S"
    hops = [s for s in spans if s.source == "N"]
    assert all(h.parent_span_id == client.span_id for h in hops)
    req = [h for h in hops if h.attributes["zerotrace.net.leg"] == "request"]
    resp = [h for h in hops if h.attributes["zerotrace.net.leg"] == "response"]
    assert hop is max(req, key=lambda h: h.end_ns)

    # time-ordered bars: N between the client (above) and the server (below), and in
    # time between the client's start and the server's, the server's end and the
    # client's end
    bars, total = trace_bars(spans)
    bar = {b.span_id: b for b in bars}
    d = bar[client.span_id].depth
    assert all(bar[h.span_id].depth == d + 1 for h in hops)
    assert bar[srv.span_id].depth == d + 2
    cx, cend = bar[client.span_id].x, bar[client.span_id].x + bar[client.span_id].width
    sx, send = bar[srv.span_id].x, bar[srv.span_id].x + bar[srv.span_id].width
    for h in req:
        b = bar[h.span_id]
        assert cx - CLOCKS_NS <= b.x and b.x + b.width <= sx + CLOCKS_NS, h.operation
    for h in resp:
        b = bar[h.span_id]
        assert send - CLOCKS_NS <= b.x and b.x + b.width <= cend + CLOCKS_NS, h.operation
    # in time order the hops follow the path: each starts where the previous ended
    for leg in (req, resp):
        leg = sorted(leg, key=lambda h: h.start_ns)
        for a, b in zip(leg, leg[1:], strict=False):
            assert a.attributes["zerotrace.net.interface"] == \
                b.attributes["zerotrace.net.from.interface"]

    # distinguishable: N frames are named by where the hop arrived, one name per hop
    names = {frame_name(h) for h in hops}
    assert len(names) == len(hops) and all(n.startswith("[N] ") for n in names)

    # visible: every N rect at least MARK px wide, outlined, and tagged as N
    svg = render_trace(spans, "svg", "hops")
    root = ET.fromstring(svg.split("?>", 1)[-1])
    rects = [e for e in root.iter() if e.tag.endswith("rect") and e.get("class") == "bar"]
    n_rects = [r for r in rects if r.get("data-k") == "N"]
    assert len(n_rects) == len(hops)
    assert all(float(r.get("width")) >= MARK and r.get("stroke") for r in n_rects)
    html = render_trace(spans, "html", "hops")
    assert html.count('data-k="N"') == len(hops) and "MARK = 3.0" in html
    scale = float(root.get("width")) - 20  # svg.PAD each side
    slow = max(n_rects, key=lambda r: int(r.get("data-w")))
    if slow_link_ms is not None:
        assert abs(int(slow.get("data-w")) / 1e6 - slow_link_ms) <= 1.0
        assert float(slow.get("width")) >= int(slow.get("data-w")) / total * scale - 0.01

    # self time: the server's time is not the client's; every ns of the trace's covered
    # time is counted, and at most the response's first hop (the packet leaves while
    # the server's write is still in its syscall) twice
    selfs = {s.span_id: st for s, _p, _d, st in walk(spans)}
    assert selfs[client.span_id] <= client.duration_ns - srv.duration_ns
    covered = _union_len([(s.start_ns, s.end_ns) for s in spans])
    stacks = fold(spans)
    assert covered <= sum(stacks.values()) <= covered + sum(h.duration_ns for h in resp)
    # the server's own time is folded under client -> last request hop -> server
    assert stacks[f"{frame_name(client)};{frame_name(hop)};{frame_name(srv)}"] == \
        selfs[srv.span_id]
    return {"hops": len(hops), "client_self_ns": selfs[client.span_id],
            "slow_hop_ns": int(slow.get("data-w")), "total_ns": total}
