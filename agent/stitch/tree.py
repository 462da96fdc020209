"""A trace as an indented tree of text, for `zerotrace agent --print traces`."""

from __future__ import annotations

from collections import defaultdict

from agent.stitch.stitcher import Trace
from proto.span import PARENT_UNKNOWN, Span


def _line(s: Span, t0: int) -> str:
    status = s.status_code or s.status
    inc = f"  [incomplete: {s.incomplete}]" if s.incomplete else ""
    if s.attributes.get(PARENT_UNKNOWN):
        inc += f"  [parent unknown: {s.attributes[PARENT_UNKNOWN]}]"
    return (f"{s.source} {s.kind:<6} {s.process}({s.pid}) {s.protocol} {s.operation[:70]} "
            f"{status}  +{(s.start_ns - t0) / 1e6:.3f}ms {s.duration_ns / 1e6:.3f}ms{inc}")


def render(trace: Trace) -> str:
    spans = trace.spans
    ids = {s.span_id for s in spans}
    kids: dict[str, list[Span]] = defaultdict(list)
    roots = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in ids:
            kids[s.parent_span_id].append(s)
        else:
            roots.append(s)
    t0 = min(s.start_ns for s in spans)
    dur = (max(s.end_ns for s in spans) - t0) / 1e6
    out = [f"trace {trace.trace_id}  {len(spans)} spans  {dur:.3f}ms"]

    def walk(s: Span, prefix: str, last: bool) -> None:
        out.append(f"{prefix}{'└─ ' if last else '├─ '}{_line(s, t0)}")
        children = sorted(kids.get(s.span_id, ()), key=lambda c: c.start_ns)
        for i, c in enumerate(children):
            walk(c, prefix + ("   " if last else "│  "), i == len(children) - 1)

    roots.sort(key=lambda s: s.start_ns)
    for i, r in enumerate(roots):
        walk(r, "", i == len(roots) - 1)
    return "\n".join(out)
