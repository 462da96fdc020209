"""Interactive HTML flame graph, self-contained (inline SVG + script, no CDN).

Hover shows the frame, duration and self time; click zooms to a bar (its
ancestors stretch to full width, bars outside its range hide); the search box
highlights matching frames and reports their share; Escape or "reset" unzooms.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from server.flamegraph.registry import Renderer, register
from server.flamegraph.stacks import Bar, folded_bars, trace_bars
from server.flamegraph.svg import MARK, PAD, WIDTH, fmt_ns, svg_body

_SCRIPT = r"""
(function () {
  var W = @WIDTH@, PAD = @PAD@, TOTAL = @TOTAL@, MARK = @MARK@;
  var svg = document.getElementById('fg');
  var bars = Array.prototype.slice.call(svg.querySelectorAll('rect.bar'));
  var info = document.getElementById('info');
  var status = document.getElementById('status');
  function fmt(ns) {
    if (ns >= 1e9) return (ns / 1e9).toPrecision(3) + 's';
    if (ns >= 1e6) return (ns / 1e6).toPrecision(3) + 'ms';
    if (ns >= 1e3) return (ns / 1e3).toPrecision(3) + 'µs';
    return ns + 'ns';
  }
  function num(r, k) { return parseFloat(r.getAttribute('data-' + k)); }
  function zoom(x0, w0, d0) {
    var scale = (W - 2 * PAD) / w0;
    bars.forEach(function (r) {
      var x = num(r, 'x'), w = num(r, 'w'), d = num(r, 'd');
      var g = r.parentNode, t = g.querySelector('text');
      var inside = x + w > x0 && x < x0 + w0;
      if (!inside) { g.style.display = 'none'; return; }
      g.style.display = '';
      var nx = Math.max(x, x0), nw = Math.min(x + w, x0 + w0) - nx;
      if (d < d0) { nx = x0; nw = w0; }
      var min = r.getAttribute('data-k') === 'N' ? MARK : 0.1;  // hops stay visible
      var px = PAD + (nx - x0) * scale, pw = Math.max(nw * scale, min);
      r.setAttribute('x', px.toFixed(3)); r.setAttribute('width', pw.toFixed(3));
      if (t) {
        var n = r.getAttribute('data-name'), c = Math.floor((pw - 6) / 7);
        t.setAttribute('x', (px + 3).toFixed(2));
        t.textContent = c < 3 ? '' : (n.length <= c ? n : n.slice(0, c - 2) + '..');
      }
    });
  }
  function reset() { zoom(0, TOTAL, 0); status.textContent = ''; }
  bars.forEach(function (r) {
    var g = r.parentNode;
    g.addEventListener('mouseover', function () {
      info.textContent = r.getAttribute('data-name') + '  duration ' + fmt(num(r, 'w')) +
        '  self ' + fmt(num(r, 'self'));
    });
    g.addEventListener('mouseout', function () { info.textContent = ''; });
    g.addEventListener('click', function () {
      zoom(num(r, 'x'), Math.max(num(r, 'w'), 1), num(r, 'd'));
      status.textContent = 'zoomed: ' + r.getAttribute('data-name');
    });
  });
  document.getElementById('reset').addEventListener('click', reset);
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') reset(); });
  document.getElementById('search').addEventListener('input', function (e) {
    var q = e.target.value.toLowerCase(), hit = 0;
    bars.forEach(function (r) {
      var m = q && r.getAttribute('data-name').toLowerCase().indexOf(q) >= 0;
      if (!r.hasAttribute('data-fill')) r.setAttribute('data-fill', r.getAttribute('fill'));
      r.setAttribute('fill', m ? 'rgb(230,0,230)' : r.getAttribute('data-fill'));
      if (m) hit += num(r, 'self');
    });
    status.textContent = q ? ('matched ' + (100 * hit / TOTAL).toFixed(1) + '% self time') : '';
  });
  document.body.setAttribute('data-ready', String(bars.length));
})();
"""


def render_html(bars: Sequence[Bar], total: int, title: str) -> str:
    body, height = svg_body(bars, total)
    script = (
        _SCRIPT.replace("@WIDTH@", str(WIDTH))
        .replace("@PAD@", str(PAD))
        .replace("@TOTAL@", str(int(total)))
        .replace("@MARK@", str(MARK))
    )
    t = escape(title)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{t}</title>
<style>
body {{ font-family: monospace; margin: 8px; background: #fdfdf6; }}
#bar {{ display: flex; gap: 8px; align-items: center; margin-bottom: 4px; }}
#info {{ min-height: 1.2em; }}
g.f {{ cursor: pointer; }} g.f:hover rect {{ stroke: #000; stroke-width: 0.5; }}
text {{ pointer-events: none; font-size: 11px; }}
</style></head>
<body>
<div id="bar"><b>{t} — {fmt_ns(total)}</b>
<input id="search" placeholder="search"> <button id="reset">reset zoom</button>
<span id="status"></span></div>
<div id="info"></div>
<svg id="fg" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}"
 font-family="monospace" font-size="11">
{body}
</svg>
<script>{script}</script>
</body></html>
"""


register(Renderer(
    "html", (".html", ".htm"), "text/html; charset=utf-8",
    stacks=lambda stacks, title: render_html(*folded_bars(stacks), title),
    trace=lambda spans, title: render_html(*trace_bars(spans), title)))
