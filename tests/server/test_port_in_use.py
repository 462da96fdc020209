"""A second `zerotrace server` on a port already served refuses to start (gRPC's
default SO_REUSEPORT would let it start silently, and queries would alternate)."""

from __future__ import annotations

import subprocess
import sys


def test_second_server_on_the_same_port_refuses(zt_server, tmp_path):
    r = subprocess.run([sys.executable, "-m", "agent.cli", "server", "--listen", zt_server.addr,
                        "--data", str(tmp_path / "second")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("zerotrace: ")]
    assert said and said[0].startswith(f"zerotrace: cannot listen on {zt_server.addr}"), \
        r.stderr
    assert "Traceback" not in r.stderr
