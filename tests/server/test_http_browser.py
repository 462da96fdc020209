"""The flame graphs of `/api/flamegraph/<id>` in a real browser (headless Chromium).

- the interactive HTML page: screenshot, and the DOM after its script ran: one bar per
  span, coloured (S warm, N blue), the title;
- the speedscope JSON in the speedscope app itself (npm package `speedscope`, served
  from 127.0.0.1 with the profile beside it, loaded by `#profileURL=`): the app shows
  the profile's name and draws coloured frames, no error.

Chromium comes from Debian (scripts/setup.sh); speedscope is installed with npm into
`.venv/share/speedscope` on first use (or set $ZEROTRACE_SPEEDSCOPE_DIR to a
`dist/release` directory).
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from factory import MS, server_span

from agent.export import BatchExporter, GrpcSpanExporter
from proto.span import Span, new_trace_id
from server.http import HttpApi

REPO = Path(__file__).resolve().parents[2]
SPEEDSCOPE_VERSION = "1.25.0"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(scripts/setup.sh installs Debian's)")


# -- a PNG reader (no imaging library in the venv) --------------------------------


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rgb = bytes(line) if bpp == 3 else bytes(
            v for j in range(0, stride, 4) for v in line[j:j + 3])
        rows.append(rgb)
    return width, height, rows


def colour_counts(png: bytes) -> dict[str, int]:
    """Pixels that are clearly warm (red/orange), blue, or any saturated colour."""
    _w, _h, rows = read_png(png)
    warm = blue = coloured = 0
    for row in rows:
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if max(r, g, b) - min(r, g, b) > 60:
                coloured += 1
                if r > 150 and r > g + 30 and r > b + 60:
                    warm += 1
                elif b > 120 and b > r + 40:
                    blue += 1
    return {"warm": warm, "blue": blue, "coloured": coloured}


# -- fixtures ----------------------------------------------------------------------


def chromium(url: str, tmp: Path, *, screenshot: Path | None = None) -> str:
    """Load `url` headless; the DOM after scripts ran (and a screenshot if asked)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp / ('chrome-' + uuid.uuid4().hex[:8])}",
            "--window-size=1280,800", "--virtual-time-budget=10000"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    else:
        args.append("--dump-dom")
    r = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if screenshot is not None:
        assert screenshot.exists() and screenshot.stat().st_size > 1000, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def speedscope_dir() -> Path:
    env = os.environ.get("ZEROTRACE_SPEEDSCOPE_DIR")
    if env:
        return Path(env)
    prefix = REPO / ".venv" / "share" / "speedscope"
    dist = prefix / "node_modules" / "speedscope" / "dist" / "release"
    if not (dist / "index.html").exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install the speedscope app (apt-get install npm)"
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix",
                            str(prefix), f"speedscope@{SPEEDSCOPE_VERSION}"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    return dist


@pytest.fixture
def http_trace(zt_server):
    """(HTTP API base URL, trace id) of a stored 4-span trace with S and N spans."""
    t0 = time.time_ns() - 1_000_000_000
    tid = new_trace_id()
    root = server_span(tid, service="shop", operation="GET /cart", start_ns=t0,
                       end_ns=t0 + 40 * MS)
    db = Span(trace_id=tid, parent_span_id=root.span_id, kind="client", source="S",
              protocol="postgresql", operation="SELECT carts", status="ok", service="shop",
              start_ns=t0 + 5 * MS, end_ns=t0 + 25 * MS)
    net = Span(trace_id=tid, parent_span_id=db.span_id, kind="client", source="N",
               protocol="postgresql", operation="SELECT carts", status="ok", service="shop",
               start_ns=t0 + 6 * MS, end_ns=t0 + 22 * MS)
    pg = server_span(tid, parent_span_id=net.span_id, service="postgres", protocol="postgresql",
                     operation="SELECT carts", start_ns=t0 + 7 * MS, end_ns=t0 + 20 * MS)
    b = BatchExporter(GrpcSpanExporter(zt_server.addr, agent="node-1"), schedule_delay_s=0.05)
    b.submit([root, db, net, pg])
    assert b.force_flush(10)
    b.shutdown()
    api = HttpApi(zt_server.store, "127.0.0.1:0")
    port = api.start()
    yield f"http://127.0.0.1:{port}", tid
    api.stop()


def test_flame_graph_html_renders_in_chromium(http_trace, tmp_path):
    base, tid = http_trace
    url = f"{base}/api/flamegraph/{tid}?format=html"
    dom = chromium(url, tmp_path)
    assert dom.count('<rect class="bar"') == 4, dom[:2000]  # one per span
    assert f"trace {tid}" in dom and "[S] shop: GET /cart" in dom
    shot = tmp_path / "flamegraph.png"
    chromium(url, tmp_path, screenshot=shot)
    counts = colour_counts(shot.read_bytes())
    assert counts["warm"] > 2000, counts  # S bars: warm colours
    assert counts["blue"] > 200, counts  # the N bar: blue


def test_speedscope_app_loads_the_json(http_trace, speedscope_dir, tmp_path):
    base, tid = http_trace
    site = tmp_path / "site"
    shutil.copytree(speedscope_dir, site)
    # Same origin as the app: the profile file is fetched by `#profileURL=`.
    with urllib.request.urlopen(f"{base}/api/flamegraph/{tid}", timeout=30) as r:
        (site / "trace.json").write_bytes(r.read())
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{httpd.server_address[1]}"
        url = f"{origin}/index.html#profileURL={urllib.parse.quote(origin + '/trace.json')}"
        dom = chromium(url, tmp_path)
        assert f"trace {tid}" in dom, dom[-3000:]  # the profile's name in the toolbar
        assert "Something went wrong" not in dom and "failed" not in dom.lower()
        shot = tmp_path / "speedscope.png"
        chromium(url, tmp_path, screenshot=shot)
        counts = colour_counts(shot.read_bytes())
        assert counts["coloured"] > 5000, counts  # frames drawn on the canvas
    finally:
        httpd.shutdown()
        httpd.server_close()
