"""`zerotrace --version` prints the installed version and exits 0 (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version


def test_version():
    r = subprocess.run([sys.executable, "-m", "agent.cli", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    assert r.stdout.strip() == f"zerotrace {version('zerotrace')}"
