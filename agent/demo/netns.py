"""Network namespaces standing for pods: creation, removal, and running code inside.

Same scheme as `tests/helpers/netns.py` (a veth per namespace into a bridge in the root
namespace, no address on the bridge, so namespaces reach each other and nothing else),
plus: the namespace's end of the veth is named `eth0`, `/etc/netns/<ns>/resolv.conf`
points the pod at the demo's DNS server, and `run_in` executes a Python callable on a
thread that has joined the namespace (sockets made there stay in it).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


class CommandError(RuntimeError):
    pass


def sh(*cmd: str) -> str:
    """Run a command; raise `CommandError` with its stderr when it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CommandError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def add_bridge(name: str) -> None:
    sh("ip", "link", "add", name, "type", "bridge")
    sh("ip", "link", "set", name, "up")


def add_namespace(ns: str, bridge: str, veth: str, addr: str, prefix: int = 24) -> None:
    """Namespace `ns` with `eth0` (peer `veth` on `bridge`) at `addr`, and `lo` up."""
    sh("ip", "netns", "add", ns)
    peer = veth[:-1] + "p"
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", ns)
    sh("ip", "link", "set", veth, "master", bridge)
    sh("ip", "link", "set", veth, "up")
    sh("ip", "-n", ns, "link", "set", peer, "name", "eth0")
    sh("ip", "-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")


def write_resolv_conf(ns: str, nameserver: str) -> str:
    """`/etc/netns/<ns>/resolv.conf` (bind-mounted over /etc/resolv.conf by `ip netns exec`)."""
    d = f"/etc/netns/{ns}"
    os.makedirs(d, exist_ok=True)  # /etc/netns itself: see `remove_etc_netns_if_empty`
    path = f"{d}/resolv.conf"
    with open(path, "w") as f:
        f.write(f"nameserver {nameserver}\noptions timeout:1 attempts:3\n")
    return path


def remove_namespace(ns: str) -> list[str]:
    """Delete the namespace (its veth goes with it) and its /etc/netns dir; errors as text."""
    errors = []
    if os.path.exists(f"/run/netns/{ns}"):
        r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"ip netns del {ns}: {r.stderr.strip()}")
    shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    return errors


def remove_etc_netns_if_empty() -> None:
    """Remove /etc/netns when nothing is left in it (someone else's entries stay)."""
    try:
        os.rmdir("/etc/netns")
    except OSError:
        pass


def remove_link(name: str) -> list[str]:
    if not os.path.exists(f"/sys/class/net/{name}"):
        return []
    r = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True)
    return [] if r.returncode == 0 else [f"ip link del {name}: {r.stderr.strip()}"]


def inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def run_in(ns: str, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """Call `fn(*args)` on a fresh thread that joined network namespace `ns`."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {ns} still running after {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["value"]
