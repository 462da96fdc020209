"""The probes read neighbouring kernel struct members in one helper call (bpf/sock.h
ZT_BLOCK_*), and fall back to one read per member when a block is wider than
ZT_BLOCK_MAX (another kernel's layout).  Both builds must give the same records: the
tuple, the namespace, the process name, over IPv4 and IPv6, in a thread that is not the
process's leader too (its name comes through group_leader, the leader's from the
helper)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from agent.probes import abi, btf
from agent.probes.loader import ProbeConfig, SocketTracer

pytestmark = pytest.mark.kernel


def _exchange(family: int, host: str) -> tuple[int, int]:
    """A request and a response on a fresh loopback connection; (client port, server port)."""
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen()
    c = socket.create_connection((host, ls.getsockname()[1]))
    s, _ = ls.accept()
    c.sendall(b"PING blocks\r\n")
    assert s.recv(100) == b"PING blocks\r\n"
    s.sendall(b"PONG\r\n")
    assert c.recv(100) == b"PONG\r\n"
    ports = c.getsockname()[1], ls.getsockname()[1]
    for x in (c, s, ls):
        x.close()
    return ports


@pytest.mark.parametrize("block_max", [None, 4], ids=["blocks", "per-member reads"])
def test_block_reads_and_their_fallback_give_the_same_records(monkeypatch, block_max):
    if block_max is not None:
        orig = btf.cflags
        monkeypatch.setattr(btf, "cflags", lambda o: orig(o) + [f"-DZT_BLOCK_MAX={block_max}"])
    netns = os.stat("/proc/self/ns/net").st_ino
    comm = open("/proc/self/comm").read().strip()[:15]
    with SocketTracer(ProbeConfig(trace_self=True, tls=False)) as tracer:
        v4 = _exchange(socket.AF_INET, "127.0.0.1")
        v6_box: list[tuple[int, int]] = []
        # IPv6 from another thread: the process name read through group_leader
        th = threading.Thread(target=lambda: v6_box.append(_exchange(socket.AF_INET6, "::1")),
                              name="not-the-leader")
        th.start()
        th.join()
        time.sleep(0.2)
        events = []
        for _ in range(20):
            events += tracer.poll(0.1)
            if len(events) > 200:
                break
    cases = ((v4, abi.AF_INET, "127.0.0.1"), (v6_box[0], abi.AF_INET6, "::1"))
    for (cport, sport), family, addr in cases:
        mine = [e for e in events if {e.lport, e.rport} == {cport, sport}
                and e.type == abi.EV_DATA]
        # client write, server read, server write, client read: each with the tuple
        assert len(mine) == 4, (family, [(e.syscall, e.lport, e.rport) for e in mine])
        for e in mine:
            assert e.family == family and e.transport == abi.IPPROTO_TCP
            assert e.laddr == addr and e.raddr == addr, (e.laddr, e.raddr)
            assert e.netns == netns
            assert e.comm == comm, e.comm
            assert e.flags & abi.F_HAS_SEQ
        payloads = sorted(e.payload for e in mine)
        assert payloads == sorted([b"PING blocks\r\n"] * 2 + [b"PONG\r\n"] * 2)
        client = [e for e in mine if e.lport == cport]
        assert {e.direction for e in client} == {abi.DIR_EGRESS, abi.DIR_INGRESS}
