"""Static SVG flame graph: one `<rect class="bar">` per bar, root row on top.

Colour: hue family by source (S syscall warm, N network blue, A application green),
shade by service (for N bars: the pod or netns the hop arrived in) so that one
service's bars look alike across the graph; errors get a red outline.

Network hops last microseconds in traces of milliseconds: drawn to scale they would be
a fraction of a pixel.  N bars are therefore drawn at least MARK px wide with a dark
blue outline (a mark at the hop's time), their true width still in `data-w` and the
tooltip; a slow hop is as wide as its time.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from html import escape

from server.flamegraph.registry import Renderer, register
from server.flamegraph.stacks import Bar, folded_bars, trace_bars

WIDTH = 1200
ROW = 18
PAD = 10
TOP = 40
_FAMILIES = {"S": (10, 40), "N": (195, 235), "A": (95, 145)}
MARK = 3.0  # px: the narrowest N bar
_NET_STROKE = ' stroke="#0a2d6e" stroke-width="0.6"'


def colour(kind: str, service: str) -> str:
    lo, hi = _FAMILIES.get(kind, (270, 300))
    h = zlib.crc32(service.encode()) if service else 0
    hue = lo + h % (hi - lo)
    light = 55 + (h >> 8) % 15
    return f"hsl({hue},70%,{light}%)"


def fmt_ns(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.3g}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.3g}ms"
    if ns >= 1_000:
        return f"{ns / 1e3:.3g}µs"
    return f"{ns}ns"


def _tooltip(b: Bar) -> str:
    status = f", {b.status}" if b.status and b.status != "unset" else ""
    return f"{b.name} ({fmt_ns(b.width)}, self {fmt_ns(b.self_ns)}{status})"


def svg_body(bars: Sequence[Bar], total: int, width: int = WIDTH) -> tuple[str, int]:
    """The `<g>` elements of `bars` and the picture height."""
    inner = width - 2 * PAD
    scale = inner / total
    depth = max((b.depth for b in bars), default=0) + 1
    parts = []
    for b in bars:
        x = PAD + b.x * scale
        w = max(b.width * scale, MARK if b.kind == "N" else 0.1)
        y = TOP + b.depth * ROW
        stroke = (' stroke="#c00" stroke-width="1"' if b.status == "error"
                  else _NET_STROKE if b.kind == "N" else "")
        # Characters fit at about 7 px each; clipped labels would overflow the bar.
        chars = int((w - 6) / 7)
        label = ""
        if chars >= 3:
            text = b.name if len(b.name) <= chars else b.name[: chars - 2] + ".."
            label = f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{escape(text)}</text>'
        parts.append(
            f'<g class="f"><title>{escape(_tooltip(b))}</title>'
            f'<rect class="bar" x="{x:.3f}" y="{y}" width="{w:.3f}" height="{ROW - 1}" '
            f'fill="{colour(b.kind, b.service)}" rx="2"{stroke} '
            f'data-x="{b.x}" data-w="{b.width}" data-d="{b.depth}" data-self="{b.self_ns}" '
            f'data-k="{escape(b.kind)}" '
            f'data-name="{escape(b.name)}"/>{label}</g>'
        )
    return "\n".join(parts), TOP + depth * ROW + PAD + 20


def render_svg(bars: Sequence[Bar], total: int, title: str) -> str:
    body, height = svg_body(bars, total)
    return (
        f'<?xml version="1.0" standalone="no"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="11">\n'
        f'<rect width="100%" height="100%" fill="#fdfdf6"/>\n'
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">'
        f"{escape(title)} — {fmt_ns(total)}</text>\n"
        f"{body}\n</svg>\n"
    )


register(Renderer(
    "svg", (".svg",), "image/svg+xml",
    stacks=lambda stacks, title: render_svg(*folded_bars(stacks), title),
    trace=lambda spans, title: render_svg(*trace_bars(spans), title)))
