"""The compiled per-event code: built by `pip install` from the current sources, and
clean under AddressSanitizer (scripts/asan-tests.sh: parser tests plus a fuzz run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# (module, source) of every compiled module, as setup.py declares them.
MODULES = sorted((str(p.relative_to(ROOT).with_suffix("")).replace(os.sep, "."),
                  str(p.relative_to(ROOT))) for p in (ROOT / "agent").rglob("*.pyx"))


def test_compiled_modules_are_extensions_built_from_the_current_source():
    import importlib

    assert MODULES, "no .pyx under agent/"
    for name, src in MODULES:
        mod = importlib.import_module(name)
        so = Path(mod.__file__)
        assert so.suffix == ".so", f"{name} is not compiled: {so}"
        # scripts/setup.sh reinstalls (so recompiles) when a .pyx changes; a stale
        # build means it did not run: `make setup`.
        assert so.stat().st_mtime >= (ROOT / src).stat().st_mtime, f"{so} older than {src}"


# Every compiled module built with ASan, then the protocol tests under it: minutes.
# 40 examples a property (the fuzz run and the stitcher's random timelines): the
# slowest test of the suite at 100 (255 s of a 20-minute CI on a slow day); the
# script's own default (300) is for a run by hand.
@pytest.mark.timeout(900)
def test_parsers_and_fuzz_run_clean_under_address_sanitizer():
    env = dict(os.environ, PYTHON=sys.executable, ZT_FUZZ_EXAMPLES="40")
    r = subprocess.run(["bash", str(ROOT / "scripts/asan-tests.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=880)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    assert " passed" in r.stdout and "AddressSanitizer" not in r.stderr
