"""A real `zerotrace server` process for fault tests: start on a fixed loopback port,
kill -9, restart on the same data directory, and read what it stored afterwards
(from a separate process, as chDB allows one data directory per process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m server.cli server --listen 127.0.0.1:PORT --data DATA ...`; the same
    port and data directory on every `start()`."""

    def __init__(self, data: str | os.PathLike, *extra: str, port: int = 0) -> None:
        self.data = str(data)
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []
        self.line = ""

    def start(self, timeout_s: float = 120) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "server", "--listen", self.addr,
             "--data", self.data, "--http", "", *self.extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout_s, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.output.append(line)
                if "listening on" in line:
                    self.line = line
                    break
            else:
                raise AssertionError("server exited before it listened:\n"
                                     + "".join(self.output[-30:]))
        finally:
            timer.cancel()
        # Keep draining its output so that a full pipe never blocks it.
        out = self.proc.stdout
        threading.Thread(target=lambda: self.output.extend(out), daemon=True).start()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def vm(self, field: str = "VmHWM") -> int:
        """A field of the process's /proc status, in MB (VmHWM: peak RSS)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
        raise KeyError(field)


_READ = """
import json, sys
from server.storage.chdb_store import ChdbStore
s = ChdbStore(sys.argv[1])
rows = s._select(f"SELECT lower(hex(span_id)) AS s FROM {s.table}")
print(json.dumps([r["s"] for r in rows]))
s.close()
"""


def stored_span_ids(data: str | os.PathLike) -> list[str]:
    """Every stored span id of a stopped server's data directory, duplicates kept."""
    r = subprocess.run([sys.executable, "-c", _READ, str(data)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
