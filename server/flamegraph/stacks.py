"""Spans -> bars and collapsed stacks, the contract between producers and renderers.

A collapsed stack is `frame;frame;frame value`: the frames from root to a span,
and that span's self time in nanoseconds (duration minus the union of its
children's intervals, so concurrent children are not subtracted twice).  Frame
names are `[K] service: operation` with K the source letter (S syscall, N network,
A application), which renderers read back for colour.

Network (N) spans sit between a client span and its server span: children of the
client, and the request's last hop is the server span's parent (agent/net/live.py).
A hop lasts microseconds and ends where the server span begins, so the server span
lies outside its parent's interval; self time therefore subtracts every descendant's
interval, not only the children's, or the client span would count the server's time
as its own.  An N frame is named by where the hop arrived (its pod, else its netns)
instead of the client's service: `[N] pod-or-netns: request eth0 egress -> ...`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proto.span import SOURCE_NETWORK, Span
from server.flamegraph.registry import Renderer, register

_UNSAFE = re.compile(r"[;\n\r\t]")


@dataclass(slots=True)
class Bar:
    """One rectangle: x and width in the graph's unit (ns of time, or ns of self time)."""

    name: str
    kind: str
    service: str
    depth: int
    x: int
    width: int
    self_ns: int
    status: str = ""
    span_id: str = ""


def where(s: Span) -> str:
    """What a frame is shaded and grouped by: a hop's pod or netns, else the service."""
    if s.source == SOURCE_NETWORK:
        a = s.attributes
        w = a.get("zerotrace.net.pod") or a.get("zerotrace.net.netns")
        if w:
            return str(w)
    return s.service or s.process or "?"


def frame_name(s: Span) -> str:
    op = s.operation or s.protocol or s.kind
    return _UNSAFE.sub(",", f"[{s.source or 'S'}] {where(s)}: {op}")


def parse_frame(name: str) -> tuple[str, str]:
    """(source letter, service) of a frame name made by `frame_name`."""
    if len(name) > 4 and name[0] == "[" and name[2] == "]":
        rest = name[4:]
        return name[1], rest.split(":", 1)[0]
    return "", name


def _union_len(intervals: list[tuple[int, int]]) -> int:
    total = 0
    end = None
    start = 0
    for a, b in sorted(intervals):
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        elif b > end:
            end = b
    if end is not None:
        total += end - start
    return total


def _order(s: Span) -> tuple[int, str]:
    return s.start_ns, s.span_id


def build_tree(
    spans: Sequence[Span],
) -> tuple[list[Span], dict[tuple[str, str], list[Span]]]:
    """(roots, children by (trace id, parent span id)); spans whose parent is absent
    are roots, and so is the earliest span of a cycle of parent ids.  Keys include
    the trace id because span ids repeat across traces."""
    ids = {(s.trace_id, s.span_id) for s in spans}
    children: dict[tuple[str, str], list[Span]] = defaultdict(list)
    roots = []
    for s in spans:
        key = (s.trace_id, s.parent_span_id)
        if s.parent_span_id and key in ids and s.parent_span_id != s.span_id:
            children[key].append(s)
        else:
            roots.append(s)
    for lst in children.values():
        lst.sort(key=_order)
    # Parent ids that form a cycle leave spans that no root reaches: cut each cycle at
    # its earliest span, which becomes a root.
    reached: set[tuple[str, str]] = set()

    def reach(starts: list[Span]) -> None:
        todo = list(starts)
        while todo:
            x = todo.pop()
            key = (x.trace_id, x.span_id)
            if key not in reached:
                reached.add(key)
                todo.extend(children.get(key, ()))

    reach(roots)
    if len(reached) < len(ids):
        for x in sorted(spans, key=_order):
            if (x.trace_id, x.span_id) not in reached:
                children[(x.trace_id, x.parent_span_id)].remove(x)
                roots.append(x)
                reach([x])
    roots.sort(key=_order)
    return roots, children


def self_time(s: Span, kids: Sequence[Span],
              escaped: Sequence[tuple[int, int]] = ()) -> int:
    """Duration minus the union of the children's intervals and of `escaped`: the
    intervals of deeper descendants that lie outside their own parent (a server span
    under a microsecond network hop), all clipped to `s`."""
    clipped = [
        (max(a, s.start_ns), min(b, s.end_ns))
        for a, b in [*((k.start_ns, k.end_ns) for k in kids), *escaped]
        if b > s.start_ns and a < s.end_ns
    ]
    return max(0, s.duration_ns - _union_len(clipped))


def _escapes(roots: list[Span], children: dict) -> dict[tuple[str, str], list]:
    """Per span, the intervals of its descendants that do not lie within it (empty for
    properly nested spans), computed bottom-up."""
    order: list[Span] = []
    todo = list(roots)
    seen: set[tuple[str, str]] = set()
    while todo:
        x = todo.pop()
        key = (x.trace_id, x.span_id)
        if key in seen:
            continue
        seen.add(key)
        order.append(x)
        todo.extend(children.get(key, ()))
    out: dict[tuple[str, str], list] = {}
    for x in reversed(order):  # children before parents
        key = (x.trace_id, x.span_id)
        esc = []
        for k in children.get(key, ()):
            for a, b in [(k.start_ns, k.end_ns), *out.get((k.trace_id, k.span_id), ())]:
                if a < x.start_ns or b > x.end_ns:
                    esc.append((a, b))
        if esc:
            out[key] = esc
    return out


def walk(spans: Sequence[Span]) -> Iterable[tuple[Span, list[str], int, int]]:
    """Depth-first (span, path of frame names, depth, self ns); cycles are cut."""
    roots, children = build_tree(spans)
    escapes = _escapes(roots, children)
    seen: set[tuple[str, str]] = set()
    stack: list[tuple[Span, list[str], int]] = [(r, [], 0) for r in reversed(roots)]
    while stack:
        s, path, depth = stack.pop()
        key = (s.trace_id, s.span_id)
        if key in seen:
            continue
        seen.add(key)
        kids = children.get(key, [])
        p = [*path, frame_name(s)]
        esc = [iv for k in kids for iv in escapes.get((k.trace_id, k.span_id), ())]
        yield s, p, depth, self_time(s, kids, esc)
        for k in reversed(kids):
            stack.append((k, p, depth + 1))


def trace_bars(spans: Sequence[Span]) -> tuple[list[Bar], int]:
    """Time-ordered bars of one trace (x = offset from trace start) and total ns."""
    if not spans:
        return [], 0
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    bars = [
        Bar(
            name=p[-1],
            kind=s.source or "S",
            service=where(s) if s.source == SOURCE_NETWORK else (s.service or s.process),
            depth=d,
            x=s.start_ns - t0,
            width=s.duration_ns,
            self_ns=st,
            status=s.status,
            span_id=s.span_id,
        )
        for s, p, d, st in walk(spans)
    ]
    return bars, max(1, t1 - t0)


def fold(spans: Sequence[Span]) -> dict[str, int]:
    """Collapsed stacks of spans (one or many traces), values = self ns, summed."""
    out: dict[str, int] = defaultdict(int)
    for _s, path, _d, st in walk(spans):
        if st > 0:
            out[";".join(path)] += st
    return dict(out)


def format_folded(stacks: dict[str, int]) -> str:
    """The folded text: one `stack value` line per stack, sorted by stack."""
    return "".join(f"{k} {v}\n" for k, v in sorted(stacks.items()))


def parse_folded(text: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, value = line.rpartition(" ")
        out[stack] += int(value)
    return dict(out)


def folded_bars(stacks: dict[str, int]) -> tuple[list[Bar], int]:
    """Bars of merged stacks (aggregate view): frames sorted by name, x = cumulative."""
    root: dict = {}
    for stack, value in stacks.items():
        node = root
        for frame in stack.split(";"):
            node = node.setdefault(frame, [0, 0, {}])  # [total, self, children]
            node[0] += value
            node = node[2]
        # self time belongs to the last frame
    for stack, value in stacks.items():
        node = root
        frames = stack.split(";")
        for i, frame in enumerate(frames):
            entry = node[frame]
            if i == len(frames) - 1:
                entry[1] += value
            node = entry[2]
    bars: list[Bar] = []
    todo = [(root, 0, 0)]
    while todo:
        node, depth, x = todo.pop()
        for name in sorted(node):
            total, own, kids = node[name]
            kind, svc = parse_frame(name)
            bars.append(Bar(name, kind, svc, depth, x, total, own))
            todo.append((kids, depth + 1, x))
            x += total
    total = sum(v for v in stacks.values())
    return bars, max(1, total)


register(Renderer("folded", (".folded", ".txt"), "text/plain; charset=utf-8",
                  stacks=lambda stacks, _title: format_folded(stacks)))
