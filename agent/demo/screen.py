"""A time-ordered flame graph drawn in the terminal, from a trace's span dicts.

x = time, one row per span in tree order (depth as indent), the bar spanning the
span's start to end; S/N/A marks where the span was observed.  The files (SVG,
interactive HTML, speedscope, folded) come from `zerotrace flamegraph`."""

from __future__ import annotations

from collections import defaultdict


def text_flamegraph(spans: list[dict], width: int = 60) -> str:
    if not spans:
        return "(no spans)"
    # `zerotrace trace -o json` writes nanoseconds as strings (as OTLP JSON does)
    spans = [{**s, "start_ns": int(s["start_ns"]), "end_ns": int(s["end_ns"])} for s in spans]
    ids = {s["span_id"] for s in spans}
    kids: dict[str, list[dict]] = defaultdict(list)
    roots = []
    for s in spans:
        (kids[s["parent_span_id"]] if s["parent_span_id"] in ids else roots).append(s)
    t0 = min(s["start_ns"] for s in spans)
    total = max(max(s["end_ns"] for s in spans) - t0, 1)
    lines = [f"{'':<44} |{'0':<{width // 2}}{total / 1e6:>{width - width // 2}.2f}ms|"]

    def row(s: dict, depth: int) -> None:
        a = int((s["start_ns"] - t0) / total * width)
        b = max(a + 1, int((s["end_ns"] - t0) / total * width))
        bar = " " * a + "█" * (b - a) + " " * (width - b)
        label = f"{'  ' * depth}{s['source']} {s['service'] or s['process']}: {s['operation']}"
        lines.append(f"{label[:44]:<44} |{bar}| {(s['end_ns'] - s['start_ns']) / 1e6:.2f}ms")
        for c in sorted(kids.get(s["span_id"], ()), key=lambda c: c["start_ns"]):
            row(c, depth + 1)

    for r in sorted(roots, key=lambda r: r["start_ns"]):
        row(r, 0)
    return "\n".join(lines)
