"""Removal of demo topologies left behind by a process that died without tearing down
(SIGKILL, a test runner's hard timeout).

A topology writes `owner` (pid and process start time) into its temp dir
`/tmp/zt-demo-<tag>-*`; its namespaces are `ztd-<tag>-<pod>` and its bridge
`ztdbr<tag>`.  A topology is stale when that owner process no longer exists; only
stale ones are touched, so concurrent topologies of other users stay up.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import time

from . import netns

_NS = re.compile(r"^ztd-([0-9a-f]{6})-[a-z]+$")


def start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_record() -> str:
    return f"{os.getpid()} {start_time(os.getpid())}\n"


def _alive(tag: str) -> bool:
    for d in glob.glob(f"/tmp/zt-demo-{tag}-*"):
        try:
            pid, st = open(f"{d}/owner").read().split()
        except (OSError, ValueError):
            return True  # being created: leave it
        if start_time(int(pid)) == st:
            return True
    return False


def remove_stale() -> list[str]:
    """Tear down topologies whose owner is gone; returns the tags removed."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    by_tag: dict[str, list[str]] = {}
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS.match(name)
        if m:
            by_tag.setdefault(m.group(1), []).append(name)
    removed = []
    for tag, names in by_tag.items():
        if _alive(tag):
            continue
        pids = []
        for ns in names:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids += [int(p) for p in r.stdout.split()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}")
                                                      for p in pids):
                time.sleep(0.05)
        for ns in names:
            netns.remove_namespace(ns)
        netns.remove_link(f"ztdbr{tag}")
        for d in glob.glob(f"/tmp/zt-demo-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)
        removed.append(tag)
    if removed:
        netns.remove_etc_netns_if_empty()
    return removed
