"""The path of issue 18, made of real namespaces and links, torn down afterwards:

    client netns --veth--> bridge (root netns) --veth--> gateway netns (MASQUERADE)
        --tun A ~~ slow link (tests/net/tun_link.py) ~~ tun B--> server netns

Every interface name starts with the returned `prefix` (the regex given to the TC
probes); addresses come from 10.<subnet>.1.0/24 (client side) and 10.<subnet>.2.0/30
(the link)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.netns import Host, kill_group, sh

HERE = Path(__file__).resolve().parent


@dataclass
class Path4:
    prefix: str
    client: Host
    gateway: Host
    server: Host
    server_addr: str
    gw_link: str = ""  # the gateway's end of the slow link: MASQUERADE's source
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, host: Host, *argv: str, **kw) -> subprocess.Popen:
        p = host.popen(*argv, **kw)
        self.procs.append(p)
        return p


@contextmanager
def nat_path(delay_ms: float, loss: float = 0.0, subnet: int = 236, seed: int = 1,
             slow: str = "ab") -> Iterator[Path4]:
    """The path, its link slowed (and lossy) towards the server (slow="ab") or towards
    the client ("ba")."""
    tag = uuid.uuid4().hex[:6]
    pre = f"zq{tag}"
    c = Host(f"zq-{tag}-client", f"10.{subnet}.1.2")
    g = Host(f"zq-{tag}-gw", f"10.{subnet}.1.1")
    s = Host(f"zq-{tag}-server", f"10.{subnet}.2.2")
    p = Path4(pre, c, g, s, s.addr)
    br = f"{pre}br"
    made: list[str] = []
    try:
        for h in (c, g, s):
            sh("ip", "netns", "add", h.name)
            made.append(h.name)
            sh(*h.cmd("ip", "link", "set", "lo", "up"))
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "link", "set", br, "up")
        for h, short in ((c, "c"), (g, "g")):
            outer, inner = f"{pre}{short}h", f"{pre}{short}"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", inner, "netns", h.name)
            sh("ip", "link", "set", outer, "master", br)
            sh("ip", "link", "set", outer, "up")
            sh(*h.cmd("ip", "addr", "add", f"{h.addr}/24", "dev", inner))
            sh(*h.cmd("ip", "link", "set", inner, "up"))
        sh(*c.cmd("ip", "route", "add", "default", "via", g.addr))
        sh(*g.cmd("sysctl", "-qw", "net.ipv4.ip_forward=1"))
        tun_a, tun_b = f"{pre}ta", f"{pre}tb"
        link = subprocess.Popen(
            [sys.executable, str(HERE / "tun_link.py"), g.name, tun_a, s.name, tun_b,
             str(delay_ms), str(loss), str(seed), slow], stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        p.procs.append(link)
        if link.stdout.readline().strip() != "ready":
            raise RuntimeError("tun_link.py did not start")
        gw_link, srv_link = f"10.{subnet}.2.1", s.addr
        p.gw_link = gw_link
        sh(*g.cmd("ip", "addr", "add", gw_link, "peer", srv_link, "dev", tun_a))
        sh(*g.cmd("ip", "link", "set", tun_a, "up"))
        sh(*s.cmd("ip", "addr", "add", srv_link, "peer", gw_link, "dev", tun_b))
        sh(*s.cmd("ip", "link", "set", tun_b, "up"))
        # the server knows no route back to the client subnet: only the gateway's
        # rewrite of the source address (MASQUERADE) lets its answers return
        sh(*g.cmd("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", tun_a,
                  "-j", "MASQUERADE"))
        yield p
    finally:
        for proc in p.procs:
            kill_group(proc)
        for name in made:  # takes the veth ends, tun devices and the nat table with it
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)
