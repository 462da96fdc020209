"""A zerotrace server for tests that export spans and query them back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ZT = [sys.executable, "-m", "agent.cli"]


@pytest.fixture
def zt_server(tmp_path):
    """HOST:PORT of a zerotrace server on loopback with its own data directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(ZT + ["server", "--listen", f"127.0.0.1:{port}", "--data",
                                 str(tmp_path / "data")], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if srv.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the zerotrace server did not start")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait(timeout=15)
