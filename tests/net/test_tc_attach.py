"""TcTracer attaches where the regex says, in the host and in namespaces, and leaves
every interface as it found it (a clsact qdisc that was there stays, with its filters)."""

from __future__ import annotations

import subprocess

from agent.probes.tc import TcConfig, TcTracer
from tests.helpers.netns import network, sh


def tc_show(netns: str | None, *args: str) -> str:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["tc", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_attach_and_leave_as_found():
    with network(2, subnet=237) as net:
        tag = net.bridge[4:]
        own, peer0 = f"zt{tag}v0", f"zt{tag}p0"
        other = f"zt{tag}v1"
        # a clsact somebody else put there, with a filter of theirs
        sh("tc", "qdisc", "add", "dev", own, "clsact")
        sh("tc", "filter", "add", "dev", own, "ingress", "prio", "7", "protocol", "all",
           "u32", "match", "u32", "0", "0", "classid", "1:1")
        h0 = net.hosts[0]
        with TcTracer(TcConfig(interfaces=rf"^zt{tag}[vp]0$", netns=[h0.name])) as tc:
            names = sorted(h.ifname for h in tc.hooks.values())
            assert names == sorted([own, peer0])
            for ns, dev in ((None, own), (h0.name, peer0)):
                for d in ("ingress", "egress"):
                    assert "zt_tc_" in tc_show(ns, "filter", "show", "dev", dev, d)
            assert "clsact" not in tc_show(None, "qdisc", "show", "dev", other)
        assert "clsact" in tc_show(None, "qdisc", "show", "dev", own)
        kept = tc_show(None, "filter", "show", "dev", own, "ingress")
        assert "u32" in kept and "zt_tc_" not in kept
        assert "zt_tc_" not in tc_show(None, "filter", "show", "dev", own, "egress")
        assert "clsact" not in tc_show(h0.name, "qdisc", "show", "dev", peer0)


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
