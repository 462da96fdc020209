"""A test process killed hard leaves its namespaces, bridge and servers behind; the next
network() removes them (tests/helpers/netns.py sweep_orphans)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.netns import STATE_DIR, sweep_orphans

pytestmark = pytest.mark.kernel  # root: namespaces, bridges

DIES = """
import os, signal, subprocess
from tests.helpers.netns import network
with network(2, subnet=249) as net:
    p = net.spawn(net.hosts[0], "sleep", "300", stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    print(net.bridge.removeprefix("ztbr"), p.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: as an abort in LLVM
"""


def test_a_network_whose_owner_was_killed_is_removed_by_the_next():
    out = subprocess.run([sys.executable, "-c", DIES], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    tag, pid = out.stdout.split()
    assert os.path.exists(f"/run/netns/zt-{tag}-0")  # left behind
    assert os.path.exists(os.path.join(STATE_DIR, tag))
    assert tag in sweep_orphans()
    assert not os.path.exists(f"/run/netns/zt-{tag}-0")
    assert not os.path.exists(f"/run/netns/zt-{tag}-1")
    assert subprocess.run(["ip", "link", "show", f"ztbr{tag}"],
                          capture_output=True).returncode != 0
    assert not os.path.exists(f"/proc/{pid}") or \
        open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert not os.path.exists(os.path.join(STATE_DIR, tag))
