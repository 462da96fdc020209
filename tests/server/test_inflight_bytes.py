"""Admission by bytes: large pushes at once cannot take the server's memory (issue 14 item 4).

16 agents push a 30 MB batch each at the same moment to a real `zerotrace server`
process.  Admission used to count requests only, and such a burst took the server to
4.57 GB.  Now request bytes in flight are capped (`--max-inflight-bytes`, 256 MiB by
default, 64 MiB here), checked before a request is decoded: the pushes beyond it are refused with
RESOURCE_EXHAUSTED, which the exporter retries, so every batch is stored in the end
and the server's peak RSS (VmHWM) stays under the bound below.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from factory import now_ns, server_span

from agent.export import BatchExporter, GrpcSpanExporter

ROOT = Path(__file__).resolve().parents[2]
AGENTS = 16
SPANS = 1900  # x ~16 KiB of attributes: ~31 MB of Arrow a batch, as in the issue
# 64 MiB (two of these pushes at once) rather than the 256 MiB default, so that the
# bound tells capped from uncapped clearly: measured 1.9 GB here, 2.3 GB at 128 MiB,
# 3.1 GB at 256 MiB, 3.7 GB with no cap (docs/server.md, "Admission by bytes").
CAP = "64MiB"
RSS_BOUND_MB = 2600


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vm(pid: int, field: str) -> int:
    """A field of /proc/PID/status in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(field)


def _big_spans() -> list:
    t = now_ns()
    # Random hex: LZ4 inside the Arrow stream cannot shrink it, so the bytes on the
    # wire are what a batch of large attribute values would weigh.
    blob = os.urandom(8 * 1024 * SPANS).hex()
    return [server_span(start_ns=t + i, end_ns=t + i + 1000, service="api",
                        operation="GET /big",
                        attributes={"blob": blob[i * 16384:(i + 1) * 16384]})
            for i in range(SPANS)]


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.fixture
def server_process(tmp_path):
    port, mport = _port(), _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "server", "--listen", f"127.0.0.1:{port}",
         "--data", str(tmp_path / "data"), "--http", "",
         "--max-inflight-bytes", CAP, "--metrics", f"127.0.0.1:{mport}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # log lines may come first
            if "listening" in line:
                break
        else:
            pytest.fail("the server exited before it listened")
        # Keep reading its output so that the pipe never fills and blocks it.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield proc, f"127.0.0.1:{port}", mport
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_large_pushes_at_once_stay_under_the_memory_bound(server_process):
    proc, addr, mport = server_process
    spans = _big_spans()
    batchers = [
        BatchExporter(GrpcSpanExporter(addr, agent=f"node-{i}", timeout_s=60),
                      max_batch=SPANS, max_queue_spans=SPANS, schedule_delay_s=3600,
                      max_attempts=40, backoff_initial_s=0.2, backoff_max_s=2.0)
        for i in range(AGENTS)]
    for b in batchers:
        b.submit(spans)
    # Flush all at once: 16 batches of ~31 MB reach the server together.
    done = []
    threads = [threading.Thread(target=lambda b=b: done.append(b.force_flush(600)))
               for b in batchers]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    peak = _vm(proc.pid, "VmHWM")
    metrics = [b.metrics() for b in batchers]
    for b in batchers:
        b.shutdown(5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    refused = _metric(text, "zerotrace_server_requests_over_inflight_bytes_total")
    print(f"\n{AGENTS} x {SPANS} spans in {took:.1f} s, peak RSS {peak} MB, "
          f"{refused:.0f} pushes refused over the byte cap, "
          f"{sum(m['zerotrace_export_retries_total'] for m in metrics)} retries")
    assert all(done)
    assert [m["zerotrace_export_sent_total"] for m in metrics] == [SPANS] * AGENTS
    assert sum(m["zerotrace_export_dropped_total"] for m in metrics) == 0
    assert _metric(text, "zerotrace_server_spans_accepted_total") == AGENTS * SPANS
    assert refused > 0  # the burst did go over the cap
    assert peak < RSS_BOUND_MB, f"server peak RSS {peak} MB"
