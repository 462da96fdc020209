"""`zerotrace server` where the store's package is missing (the agent's image has no
chDB): one line naming the package and how to get it, exit 2, nothing else started."""

from __future__ import annotations

import os
import subprocess
import sys

from cli_proc import ROOT, free_port

# As in the agent image: the store packages cannot be imported (a None entry in
# sys.modules is how Python marks a module as unimportable).
HIDE = """
import sys
sys.modules["chdb"] = None
sys.modules["clickhouse_connect"] = None
"""


def run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(HIDE)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{ROOT}")
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "server", "--listen",
         f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "data"), "--http", "", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_embedded_store_without_chdb(tmp_path):
    r = run(tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "zerotrace: the server's store needs the Python package 'chdb', not installed here "
        "(pip install 'zerotrace[server]'; the server image has it)"]
    assert not (tmp_path / "data").exists()


def test_clickhouse_store_without_its_client(tmp_path):
    r = run(tmp_path, "--clickhouse", "127.0.0.1:8123")
    assert r.returncode == 2 and "'clickhouse-connect'" in r.stderr
