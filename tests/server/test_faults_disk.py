"""Full disk with retrying agents: nothing lost, nothing twice, ingest recovers once
space is freed (issue 14, items 3 and 6).

A real `zerotrace server` process keeps its data on a small tmpfs mounted by the test
(unmounted after).  4 agents (`BatchExporter` + `GrpcSpanExporter`, as the agent
exports) push incompressible spans until the disk is full: pushes then fail with
UNAVAILABLE "storage write failed" (not "bad data"), the agents keep their batches and
retry.  The tmpfs is then grown (`mount -o remount,size=`), as an operator freeing
space would, and every span gets stored exactly once.  Before, a full disk committed
part of a batch and reported it as not stored, so the retry stored it again (114 000
rows for 112 000 ids).

Sizes (environment): ZT_DISK_SPANS spans per agent (default 2 500, each carrying 3 KB
of entropy: ~30 MB in all against a ZT_DISK_MB=20 MB tmpfs).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
from factory import now_ns, server_span
from zt_process import ServerProcess, stored_span_ids

from agent.export import BatchExporter, GrpcSpanExporter

AGENTS = 4
SPANS = int(os.environ.get("ZT_DISK_SPANS", "2500")) // 100 * 100  # whole chunks
DISK_MB = int(os.environ.get("ZT_DISK_MB", "20"))
CHUNK = 100


@pytest.fixture
def tmpfs():
    mnt = tempfile.mkdtemp(prefix="zt-full-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs to fill ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def _sum(batchers, name: str) -> int:
    return sum(b.metrics()[name] for b in batchers)


def test_full_disk_with_retrying_agents_loses_and_duplicates_nothing(tmpfs):
    data = os.path.join(tmpfs, "data")
    srv = ServerProcess(data)
    srv.start()
    batchers = [BatchExporter(GrpcSpanExporter(srv.addr, agent=f"node-{i}", timeout_s=20),
                              max_batch=200, max_queue_spans=SPANS, schedule_delay_s=0.05,
                              max_attempts=10_000, backoff_initial_s=0.1, backoff_max_s=0.5)
                for i in range(AGENTS)]
    sent_ids: set[str] = set()

    def agent(i: int) -> None:
        for _ in range(SPANS // CHUNK):
            t = now_ns()
            spans = [server_span(start_ns=t + j, end_ns=t + j + 1000, service=f"svc-{i}",
                                 operation="GET /disk", error=os.urandom(3000).hex())
                     for j in range(CHUNK)]
            sent_ids.update(s.span_id for s in spans)
            assert batchers[i].submit(spans) == CHUNK

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The disk fills: agents retry (the server said UNAVAILABLE) and make no progress.
        deadline = time.monotonic() + 180
        while _sum(batchers, "zerotrace_export_retries_total") < 10:
            assert time.monotonic() < deadline, "the tmpfs never filled"
            assert _sum(batchers, "zerotrace_export_sent_total") < AGENTS * SPANS, \
                "everything was stored: make ZT_DISK_SPANS larger than the tmpfs"
            time.sleep(0.2)
        stuck = _sum(batchers, "zerotrace_export_sent_total")
        time.sleep(3)
        assert _sum(batchers, "zerotrace_export_sent_total") - stuck < AGENTS * SPANS // 4
        errors = {b.exporter.last_error for b in batchers} - {"", None}
        assert any("storage write failed" in e for e in errors), errors
        assert not any("INVALID_ARGUMENT" in e for e in errors), errors
        assert srv.proc.poll() is None, "the server died of a full disk"
        # Space is freed: everything waiting goes in.
        subprocess.run(["mount", "-o", f"remount,size={DISK_MB * 20}m", tmpfs], check=True)
        for b in batchers:
            assert b.force_flush(300)
        metrics = [b.metrics() for b in batchers]
    finally:
        for b in batchers:
            b.shutdown(5)
        srv.stop()
    stored = stored_span_ids(data)
    counts = collections.Counter(stored)
    dupes = sum(1 for n in counts.values() if n > 1)
    print(f"\n{AGENTS} x {SPANS} spans on a {DISK_MB} MB tmpfs: "
          f"{sum(m['zerotrace_export_retries_total'] for m in metrics)} retries while full, "
          f"{len(stored)} rows stored")
    assert dupes == 0, f"{dupes} spans stored more than once"
    assert not sent_ids - counts.keys(), f"{len(sent_ids - counts.keys())} spans lost"
    assert len(stored) == AGENTS * SPANS
    for m in metrics:
        assert m["zerotrace_export_dropped_total"] == 0, m
        assert m["zerotrace_export_sent_total"] == SPANS, m
