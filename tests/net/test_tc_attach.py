"""TcTracer attaches where the regex says, in the host and in namespaces, through tcx
links or clsact filters, and leaves every interface as it found it (a clsact qdisc
that was there stays, with its filters; a tcx link goes even with a killed agent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.probes import tcx
from agent.probes.tc import TcConfig, TcTracer
from tests.helpers.netns import network, sh

ROOT = Path(__file__).resolve().parents[2]


def tc_show(netns: str | None, *args: str) -> str:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["tc", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _ours_on(ours: set[int], netns: str | None, dev: str, ifindex: int, d: str) -> bool:
    """Our program runs at that hook: a tcx link of one of ours (program ids), or a
    clsact filter of ours."""
    if tcx.attached(ifindex, d == "ingress", netns):
        return bool(ours & set(tcx.attached(ifindex, d == "ingress", netns)))
    return "zt_tc_" in tc_show(netns, "filter", "show", "dev", dev, d)


@pytest.mark.parametrize("attach", ["tcx", "clsact"])
def test_attach_and_leave_as_found(attach):
    with network(2, subnet=237) as net:
        tag = net.bridge[4:]
        own, peer0 = f"zt{tag}v0", f"zt{tag}p0"
        other = f"zt{tag}v1"
        # a clsact somebody else put there, with a filter of theirs
        sh("tc", "qdisc", "add", "dev", own, "clsact")
        sh("tc", "filter", "add", "dev", own, "ingress", "prio", "7", "protocol", "all",
           "u32", "match", "u32", "0", "0", "classid", "1:1")
        h0 = net.hosts[0]
        with TcTracer(TcConfig(interfaces=rf"^zt{tag}[vp]0$", netns=[h0.name],
                               attach=attach)) as tc:
            assert tc.attach_mode == attach
            ours = {tcx.prog_id(fd) for fd in tc._fns.values()}
            names = sorted(h.ifname for h in tc.hooks.values())
            assert names == sorted([own, peer0])
            where = {h.ifname: (None if h.netns == "host" else h.netns, h.ifindex)
                     for h in tc.hooks.values()}
            for dev, (ns, idx) in where.items():
                for d in ("ingress", "egress"):
                    assert _ours_on(ours, ns, dev, idx, d), (dev, d)
            assert "clsact" not in tc_show(None, "qdisc", "show", "dev", other)
        for dev, (ns, idx) in where.items():
            for d in ("ingress", "egress"):
                assert not _ours_on(ours, ns, dev, idx, d), (dev, d)
        assert "clsact" in tc_show(None, "qdisc", "show", "dev", own)
        kept = tc_show(None, "filter", "show", "dev", own, "ingress")
        assert "u32" in kept and "zt_tc_" not in kept
        assert "zt_tc_" not in tc_show(None, "filter", "show", "dev", own, "egress")
        assert "clsact" not in tc_show(h0.name, "qdisc", "show", "dev", peer0)


KILLED = """
import sys, time
from agent.probes.tc import TcConfig, TcTracer
tc = TcTracer(TcConfig(interfaces=sys.argv[1], host=True, attach="tcx"))
print(" ".join(f"{h.ifindex}" for h in tc.hooks.values()), flush=True)
time.sleep(600)
"""


def test_tcx_links_go_with_a_killed_agent():
    # no exit handler runs on SIGKILL: the links die with the process's fds
    with network(1, subnet=235) as net:
        dev = f"zt{net.bridge[4:]}v0"
        p = subprocess.Popen([sys.executable, "-c", KILLED, rf"^{dev}$"], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            idx = int(p.stdout.readline())
            assert tcx.attached(idx, True) and tcx.attached(idx, False)
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        deadline = time.monotonic() + 5  # the fds are released as the process is reaped
        while (tcx.attached(idx, True) or tcx.attached(idx, False)) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert tcx.attached(idx, True) == [] and tcx.attached(idx, False) == []


def test_check_names_how_hops_are_marked():
    # `zerotrace check` says which marking the agent's default (marks="auto") will use
    from agent.check import check_tc_marks
    from agent.probes.tc import has_sendmsg_tracepoint

    c = check_tc_marks()
    assert c.ok
    assert ("tcp_sendmsg_locked" in c.detail.split(":")[0]) == has_sendmsg_tracepoint()
    with TcTracer(TcConfig(interfaces="^zt-none-such$")) as t:
        assert t.raw_marks == has_sendmsg_tracepoint()
        assert t.lost() == 0


def test_a_device_gone_lets_its_tcx_links_go():
    # a pod's veth deleted: the kernel detaches the links; the agent closes their fds
    # at its next refresh (pods come and go all day: no fd may pile up)
    name = f"ztg{os.getpid() % 100000}"
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    try:
        with TcTracer(TcConfig(interfaces=rf"^{name}$", attach="tcx")) as tc:
            assert len(tc.hooks) == 1
            fds = len(os.listdir("/proc/self/fd"))
            sh("ip", "link", "del", name)
            tc.refresh()
            assert tc.hooks == {}
            assert len(os.listdir("/proc/self/fd")) == fds - 2
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
