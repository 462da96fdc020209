"""Helpers of the CLI tests: run the `zerotrace` command as a process (so that "stdout
is a pipe" and "stdout is a terminal" are real), push spans through the agent's real
exporter (BatchExporter + GrpcSpanExporter), start a real `zerotrace server`.

A module of its own, not conftest.py: `from conftest import ...` resolves to whichever
conftest.py pytest put on sys.path first."""

from __future__ import annotations

import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.export import BatchExporter, GrpcSpanExporter
from proto.span import Span

ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    rc: int
    out: str
    err: str


def zt(*argv: str, columns: int | None = None, timeout: float = 120) -> Result:
    """`zerotrace ARGV` as a process, stdout a pipe; COLUMNS set when `columns`."""
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = str(columns)
    r = subprocess.run([sys.executable, "-m", "agent.cli", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return Result(r.returncode, r.stdout, r.stderr)


def zt_tty(*argv: str, columns: int = 80, timeout: float = 120) -> Result:
    """`zerotrace ARGV` with stdout on a pseudo-terminal `columns` wide."""
    master, slave = pty.openpty()
    fcntl_winsize = struct.pack("HHHH", 50, columns, 0, 0)
    import fcntl

    fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl_winsize)
    env = dict(os.environ, TERM="xterm")
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    p = subprocess.Popen([sys.executable, "-m", "agent.cli", *argv], cwd=ROOT, env=env,
                         stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO once the child closed the terminal
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    _, err = p.communicate(timeout=timeout)
    t.join(10)
    os.close(master)
    return Result(p.returncode, b"".join(chunks).decode("utf-8", "replace"), err)


def push(addr: str, spans: list[Span], agent: str = "node-cli") -> None:
    """Spans through the agent's real exporter to the server; all must be acked."""
    b = BatchExporter(GrpcSpanExporter(addr, agent=agent), schedule_delay_s=0.05)
    assert b.submit(spans) == len(spans)
    assert b.force_flush(20)
    m = b.metrics()
    b.shutdown()
    assert m["zerotrace_export_sent_total"] == len(spans), m


class ServerProc:
    """A started `zerotrace server` process (its own session: stopped as a group)."""

    def __init__(self, proc: subprocess.Popen, lines: list[str]) -> None:
        self.proc, self.lines = proc, lines

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_server(data: Path, *extra: str) -> tuple[ServerProc, str]:
    """`zerotrace server --listen 127.0.0.1:PORT --data DATA EXTRA...`; (it, HOST:PORT)."""
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "server", "--listen", addr, "--data", str(data),
         "--http", "", "--otlp-http", "", *extra], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    timer = threading.Timer(180, proc.kill)
    timer.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        else:
            raise AssertionError("server exited before it listened:\n" + "".join(lines[-20:]))
    finally:
        timer.cancel()
    out = proc.stdout
    threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
    return ServerProc(proc, lines), addr
