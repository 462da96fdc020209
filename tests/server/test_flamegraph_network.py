"""Network (N) spans in flame graphs: on a trace recorded from the real network test
(tests/net/test_hops.py: client netns -> veth -> bridge -> gateway (NAT) -> 5 ms TUN
link -> server), and on small hand-made traces for the rules one at a time."""

from __future__ import annotations

import pytest

from proto.span import Span
from server.flamegraph import render_trace
from server.flamegraph.stacks import fold, frame_name, trace_bars, walk
from tests.net import flame_check

US = 1_000


def test_recorded_real_trace():
    spans = flame_check.load_fixture()
    figures = flame_check.check(spans, slow_link_ms=5.0)
    assert figures["hops"] == 10


def _trace() -> list[Span]:
    """client 0..1000 us; request hops 10-12, 12-15; server 20-900 under the last
    request hop; response hop 905-908."""
    t = "ab" * 16

    def sp(sid, parent, src, kind, start, end, **attrs):
        return Span(trace_id=t, span_id=sid, parent_span_id=parent, source=src, kind=kind,
                    service="front" if sid in ("c", "h1", "h2", "h3") else "api",
                    operation=f"op {sid}", start_ns=start * US, end_ns=end * US,
                    attributes=attrs)

    return [
        sp("c", "", "S", "client", 0, 1000),
        sp("h1", "c", "N", "internal", 10, 12, **{"zerotrace.net.leg": "request",
                                                   "zerotrace.net.netns": "host"}),
        sp("h2", "c", "N", "internal", 12, 15, **{"zerotrace.net.leg": "request",
                                                   "zerotrace.net.pod": "db-0",
                                                   "zerotrace.net.netns": "cni-1"}),
        sp("s", "h2", "S", "server", 20, 900),
        sp("h3", "c", "N", "internal", 905, 908, **{"zerotrace.net.leg": "response"}),
    ]


def test_server_time_under_a_hop_is_not_the_clients_self_time():
    selfs = {s.span_id: st for s, _p, _d, st in walk(_trace())}
    # 1000 - hops (2 + 3 + 3) - server 880
    assert selfs["c"] == (1000 - 8 - 880) * US
    assert selfs["h2"] == 3 * US and selfs["s"] == 880 * US
    assert sum(fold(_trace()).values()) == 1000 * US


def test_without_hops_self_time_is_unchanged():
    spans = [s for s in _trace() if s.source != "N"]
    spans[1].parent_span_id = "c"
    assert {s.span_id: st for s, _p, _d, st in walk(spans)} == {"c": 120 * US, "s": 880 * US}


def test_hop_frames_are_named_where_the_hop_arrived():
    by = {s.span_id: s for s in _trace()}
    assert frame_name(by["h1"]) == "[N] host: op h1"
    assert frame_name(by["h2"]) == "[N] db-0: op h2"  # the pod before the netns
    assert frame_name(by["h3"]) == "[N] front: op h3"  # nothing known: the service
    assert frame_name(by["s"]) == "[S] api: op s"


@pytest.mark.parametrize("fmt", ["svg", "html"])
def test_microsecond_hops_stay_visible(fmt):
    spans = _trace()
    spans[0].end_ns = 100_000 * US  # a 100 ms trace: a 2 us hop is 0.02 px to scale
    out = render_trace(spans, fmt, "t")
    widths = [float(part.split('"', 1)[0])
              for part in out.split(' width="')[1:] if 'data-k="N"' in part.split(">", 1)[0]]
    assert len(widths) == 3 and min(widths) >= 3.0
    bars, _ = trace_bars(spans)
    depth = {b.span_id: b.depth for b in bars}
    assert (depth["c"], depth["h1"], depth["h2"], depth["h3"], depth["s"]) == (0, 1, 1, 1, 2)
