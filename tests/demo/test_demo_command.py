"""`zerotrace demo`, the README's first command, run whole: agent, server, the demo pods
and their traffic under the real probes, ending in a trace and a flame graph on screen
and the flame graph files on disk."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def test_demo_prints_a_trace_and_a_flame_graph(tmp_path):
    out = tmp_path / "flames"
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--requests", "60", "--rate", "60",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    text = r.stdout
    assert re.search(r"demo: 60/60 requests answered", text), text[-3000:]
    # the demo's own summary lines first: the tail alone lost them once in CI
    summary = "\n".join(ln for ln in text.splitlines() if ln.startswith("demo:"))
    assert "stitching precision 100.00 %" in text, summary + "\n" + text[-2000:]
    # the tree of one trace: the gateway's server span and the api's calls under it
    assert re.search(r"S ser gw/nginx GET /order/", text), text[-3000:]
    m = re.search(r"flame graph of trace ([0-9a-f]{32})", text)
    assert m, text[-3000:]
    bars = [ln for ln in text[m.end():].splitlines() if "█" in ln]
    assert len(bars) >= 10, text[m.end():][:3000]
    files = sorted(p.suffix for p in out.glob(f"trace-{m.group(1)[:12]}.*"))
    assert files == [".folded", ".html", ".json", ".svg"], files
    assert all(p.stat().st_size > 0 for p in out.iterdir())
