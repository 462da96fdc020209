"""Flame-graph formats register themselves: a new one is usable by extension, by name,
for one trace and for an aggregate, and over HTTP, with no other edit (issue 12)."""

from __future__ import annotations

import uuid

import pytest

from proto.span import Span
from server.flamegraph import format_for, formats, render_stacks, render_trace
from server.flamegraph.registry import Renderer, register, unregister
from server.http.app import HttpApi, Request
from server.http.flamegraph import trace_flamegraph

TID = "ab" * 16


def spans() -> list[Span]:
    root = Span(trace_id=TID, span_id="01" * 8, service="api", operation="GET /a",
                kind="server", start_ns=0, end_ns=10_000)
    kid = Span(trace_id=TID, span_id="02" * 8, parent_span_id=root.span_id, service="db",
               operation="SELECT t", kind="client", start_ns=2_000, end_ns=6_000)
    return [root, kid]


@pytest.fixture
def lines_format():
    # a format that counts frames: stacks only, so one trace is drawn from its fold
    register(Renderer("lines", (".lines",), "text/x-lines",
                      stacks=lambda st, title: f"{title}\n" + "".join(
                          f"{len(k.split(';'))} {v}\n" for k, v in sorted(st.items()))))
    yield
    unregister("lines")


def test_the_builtin_formats_are_registered():
    assert set(formats()) == {"svg", "html", "speedscope", "folded"}
    assert [format_for(p) for p in ("a.SVG", "b.htm", "c.json", "d.folded", "e.txt")] == [
        "svg", "html", "speedscope", "folded", "folded"]
    with pytest.raises(ValueError, match=r"\.svg"):
        format_for("x.png")


def test_a_new_format_is_one_registration(lines_format):
    assert format_for("trace.lines") == "lines"
    out = render_trace(spans(), "lines", "t")
    # the root's self time (10 us minus the 4 us child) and the child's 4 us
    assert out == "t\n1 6000\n2 4000\n"
    assert render_stacks({"a;b;c": 5}, "lines", "agg") == "agg\n3 5\n"


def test_a_new_format_over_http(lines_format, chdb_root):
    store = chdb_root.for_database(f"fg_{uuid.uuid4().hex[:12]}")
    try:
        store.write_spans(spans())
        api = HttpApi.__new__(HttpApi)  # the route handler needs only the store
        api.store = store
        resp = trace_flamegraph(api, Request(f"/api/flamegraph/{TID}", {"format": ["lines"]},
                                             {}, {"trace_id": TID}))
    finally:
        store.drop()
    assert resp.status == 200 and resp.content_type == "text/x-lines"
    assert resp.body.decode().endswith("1 6000\n2 4000\n")


def test_names_and_extensions_are_unique():
    with pytest.raises(ValueError, match="registered twice"):
        register(Renderer("svg", (".svg2",), "image/svg+xml", stacks=lambda s, t: ""))
    with pytest.raises(ValueError, match="registered twice"):
        register(Renderer("svg2", (".svg",), "image/svg+xml", stacks=lambda s, t: ""))
    assert "svg2" not in formats()
