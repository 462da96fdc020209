"""Run the Python stitcher (agent/stitch/stitcher.py, the reference) and the compiled one
(agent/stitch/_stitcher.pyx) on the same calls and compare what they decide.

A run is a list of calls as the pipeline makes them: ("observe", event), ("add",
SpanContext), ("tick", now), ("close",).  Each stitcher gets its own deep copy of the
spans (the stitcher writes trace ids, parent ids and refusal reasons into them), so
both see identical input.  The outcome compared: every span's parent (by span id), its
attributes (the "parent unknown" reason among them), which spans share a trace, the
trace ids taken from a traceparent, the stitcher's counters and per-process report."""

from __future__ import annotations

import copy
from collections.abc import Callable

from agent.conn.spans import SpanContext
from agent.stitch import _stitcher, stitcher


def clone_calls(calls: list[tuple]) -> list[tuple]:
    """The calls with fresh copies of every span (events are only read: shared)."""
    out = []
    for c in calls:
        if c[0] == "add":
            ctx = c[1]
            out.append(("add", SpanContext(copy.deepcopy(ctx.span), ctx.conn_id, ctx.in_tid,
                                           ctx.in_ns, ctx.out_tid, ctx.out_ns,
                                           ctx.has_response)))
        else:
            out.append(c)
    return out


def run(make: Callable, calls: list[tuple], handoffs=None, classifier=None,
        **kw) -> dict:
    """Feed calls to a stitcher made by make(emit, classifier=..., **kw); its outcome."""
    traces: list = []
    st = make(traces.append, classifier=classifier, **kw)
    if handoffs is not None:
        st.handoffs = handoffs
    spans = []
    for c in clone_calls(calls):
        if c[0] == "observe":
            st.observe(c[1])
        elif c[0] == "add":
            spans.append(c[1].span)
            st.add(c[1])
        elif c[0] == "tick":
            st.tick(c[1])
        else:
            st.close()
    trace_of = {}
    for t in traces:
        members = tuple(sorted(s.span_id for s in t.spans))
        for s in t.spans:
            trace_of[s.span_id] = members
    # a trace id is random unless it comes from a traceparent: compare those only
    w3c = {s.span_id: s.trace_id for s in spans
           if s.trace_id and "traceparent" in s.trace_headers}
    return {
        "parents": {s.span_id: s.parent_span_id for s in spans},
        "attributes": {s.span_id: dict(s.attributes) for s in spans},
        "traces": trace_of,
        "root": sorted((t.root.span_id, len(t.spans)) for t in traces),
        "w3c": w3c,
        "stats": dict(st.stats),
        "report": st.process_report(),
    }


def compare(calls: list[tuple], handoffs=None, classifier=None,
            **kw) -> tuple[dict, dict]:
    """(Python outcome, compiled outcome) of the same calls (kw: Stitcher settings)."""
    py = run(stitcher.Stitcher, calls, handoffs, classifier, **kw)
    cy = run(_stitcher.Stitcher, calls, handoffs, classifier, **kw)
    return py, cy
