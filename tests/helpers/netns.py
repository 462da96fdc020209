"""Network namespaces standing for hosts or pods, made and removed by tests.

Each namespace gets a veth into a test-owned bridge in the root namespace, with an
address from 10.231.0.0/24, so namespaces reach each other (and nothing else).

A test process that dies hard (SIGKILL, an abort inside LLVM while compiling probes)
runs no cleanup: each network is recorded under STATE_DIR with its owner's pid and the
process groups it started, and the next network() removes what a dead owner left."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

STATE_DIR = "/run/zt-test-net"  # <tag>: the owner's pid, then a pgid a line


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Host:
    name: str
    addr: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        """Start a process in this namespace, in its own process group."""
        return subprocess.Popen(self.cmd(*argv), start_new_session=True, **kw)


@dataclass
class Network:
    bridge: str
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, host: Host, *argv: str, **kw) -> subprocess.Popen:
        p = host.popen(*argv, **kw)
        self.procs.append(p)
        with open(_record(self.bridge), "a") as f:  # its own group (start_new_session)
            f.write(f"{p.pid}\n")
        return p


def _record(bridge: str) -> str:
    return os.path.join(STATE_DIR, bridge.removeprefix("ztbr"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove(tag: str, pgids: list[int]) -> None:
    """Kill a network's process groups, delete its namespaces and bridge."""
    for g in pgids:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for path in glob.glob(f"/run/netns/zt-{tag}-*"):
        subprocess.run(["ip", "netns", "del", os.path.basename(path)], capture_output=True)
    subprocess.run(["ip", "link", "del", f"ztbr{tag}"], capture_output=True)


def sweep_orphans() -> list[str]:
    """Remove the networks whose owner died without cleaning up; their tags."""
    swept = []
    for path in glob.glob(os.path.join(STATE_DIR, "*")):
        try:
            with open(path) as f:
                pids = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
        if pids and _alive(pids[0]):
            continue
        _remove(os.path.basename(path), pids[1:])
        os.unlink(path)
        swept.append(os.path.basename(path))
    return swept


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=10)


@contextmanager
def network(n_hosts: int, subnet: int = 231) -> Iterator[Network]:
    """`n_hosts` namespaces on one bridge; all torn down afterwards, processes included."""
    sweep_orphans()
    tag = uuid.uuid4().hex[:6]
    net = Network(bridge=f"ztbr{tag}")
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(_record(net.bridge), "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        sh("ip", "link", "add", net.bridge, "type", "bridge")
        sh("ip", "link", "set", net.bridge, "up")
        for i in range(n_hosts):
            h = Host(name=f"zt-{tag}-{i}", addr=f"10.{subnet}.0.{i + 1}")
            sh("ip", "netns", "add", h.name)
            net.hosts.append(h)
            veth, peer = f"zt{tag}v{i}", f"zt{tag}p{i}"
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", h.name)
            sh("ip", "link", "set", veth, "master", net.bridge)
            sh("ip", "link", "set", veth, "up")
            sh(*h.cmd("ip", "addr", "add", f"{h.addr}/24", "dev", peer))
            sh(*h.cmd("ip", "link", "set", peer, "up"))
            sh(*h.cmd("ip", "link", "set", "lo", "up"))
        yield net
    finally:
        for p in net.procs:
            kill_group(p)
        _remove(tag, [])
        os.unlink(_record(net.bridge))
