"""Flame graphs: spans -> collapsed stacks / bars -> SVG, HTML, speedscope, folded."""

from __future__ import annotations

from collections.abc import Sequence

from proto.span import Span
from server.flamegraph.html import render_html
from server.flamegraph.speedscope import render_speedscope
from server.flamegraph.stacks import fold, folded_bars, format_folded, trace_bars
from server.flamegraph.svg import render_svg

FORMATS = {
    ".svg": "svg",
    ".html": "html",
    ".htm": "html",
    ".json": "speedscope",
    ".folded": "folded",
    ".txt": "folded",
}


def format_for(path: str) -> str:
    """Renderer name for an output file name, by extension."""
    for ext, name in FORMATS.items():
        if path.lower().endswith(ext):
            return name
    raise ValueError(f"unknown flame graph format for {path!r}: use .svg .html .json .folded")


def render_trace(spans: Sequence[Span], fmt: str, title: str) -> str:
    """A time-ordered flame graph of one trace (x = time, one bar per span)."""
    if fmt in ("svg", "html"):
        bars, total = trace_bars(spans)
        return (render_svg if fmt == "svg" else render_html)(bars, total, title)
    return render_stacks(fold(spans), fmt, title)


def render_stacks(stacks: dict[str, int], fmt: str, title: str) -> str:
    """An aggregate flame graph of collapsed stacks (x = share of self time)."""
    if fmt == "folded":
        return format_folded(stacks)
    if fmt == "speedscope":
        return render_speedscope(stacks, title)
    bars, total = folded_bars(stacks)
    return (render_svg if fmt == "svg" else render_html)(bars, total, title)


__all__ = ["FORMATS", "fold", "format_for", "render_stacks", "render_trace"]
