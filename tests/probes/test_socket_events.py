"""Real probes, real processes in two network namespaces: every hooked syscall kind
yields the right events, with tuple, sizes, payload prefix, sequence numbers, offsets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from agent.conn.tracker import ConnTracker
from agent.probes import abi
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.helpers.netns import network
from tests.helpers.tracing import collect

pytestmark = pytest.mark.kernel
PEER = os.path.join(os.path.dirname(__file__), "peer.py")
PY = sys.executable


@pytest.fixture(scope="module")
def net():
    with network(3) as n:
        yield n


@pytest.fixture(scope="module")
def tracer(net):
    # Scoped to the first two namespaces only: the third stands for "not ours".
    cfg = ProbeConfig(netns={net.hosts[0].inode, net.hosts[1].inode})
    with SocketTracer(cfg) as t:
        yield t


def run_pair(net, kind: str, port: int, client_host: int = 0) -> tuple[dict, dict]:
    server_host = net.hosts[1]
    srv = net.spawn(server_host, PY, PEER, f"{kind}-server", server_host.addr, str(port),
                    stdout=subprocess.PIPE, text=True)
    srv_info = json.loads(srv.stdout.readline())
    time.sleep(0.05)
    cli = net.spawn(net.hosts[client_host], PY, PEER, f"{kind}-client", server_host.addr,
                    str(port), stdout=subprocess.PIPE, text=True)
    cli_info = json.loads(cli.stdout.readline())
    assert cli.wait(timeout=20) == 0
    assert srv.wait(timeout=20) == 0
    return srv_info, cli_info


@pytest.fixture(scope="module")
def tcp_run(net, tracer):
    srv, cli = run_pair(net, "tcp", 7000)
    events = collect(tracer, lambda ev: sum(
        1 for e in ev if e.pid == srv["pid"] and e.syscall == abi.SYS_CLOSE) >= 1, timeout=10)
    tracker = ConnTracker()  # offsets and roles of data events are the agent's to fill
    for e in events:
        tracker.update(e)
    return srv, cli, events


def data(events, pid, direction):
    return [e for e in events if e.pid == pid and e.type == abi.EV_DATA
            and e.direction == direction]


def test_tcp_client_egress_kinds_and_payloads(net, tcp_run):
    srv, cli, events = tcp_run
    out = data(events, cli["pid"], abi.DIR_EGRESS)
    kinds = [(e.syscall_name, e.ret, e.payload) for e in out]
    assert kinds[:5] == [
        ("write", 11, b"write:hello"),
        ("writev", 12, b"writev:part2"),
        ("sendto", 11, b"sendto:data"),
        ("sendmsg", 9, b"sendmsg:x"),
        ("sendmmsg", 8, b"mm1:aaaa"),
    ]
    assert kinds[5] == ("sendmmsg", 8, b"mm2:bbbb")
    big = out[6]
    assert (big.syscall_name, big.ret, len(big.payload)) == ("write", 5000, 1024)
    assert big.payload == b"B" * 1024 and big.flags & abi.F_TRUNCATED
    for e in out:
        assert (e.laddr, e.lport, e.raddr, e.rport) == (net.hosts[0].addr, cli["lport"],
                                                        net.hosts[1].addr, 7000)
        assert e.role == abi.ROLE_CLIENT and e.transport == abi.IPPROTO_TCP
        assert e.comm.startswith("python") and e.netns == net.hosts[0].inode
        assert e.ts_enter <= e.ts_exit and abs(e.ts_exit / 1e9 - time.time()) < 60
    # offsets, from seq and the connect event's base seq, run contiguously from 0
    offs = [e.offset for e in out]
    assert offs == [sum(e.ret for e in out[:i]) for i in range(len(out))]
    assert not any(e.flags & abi.F_MIDSTREAM for e in out)


def test_tcp_server_ingress_kinds(net, tcp_run):
    srv, cli, events = tcp_run
    got = data(events, srv["pid"], abi.DIR_INGRESS)
    names = [e.syscall_name for e in got]
    assert names[:4] == ["read", "readv", "recvfrom", "recvmsg"]
    assert b"".join(e.payload for e in got[:4]) == b"write:hellowritev:part2sendto:datasendmsg:x"
    for e in got:
        assert (e.laddr, e.lport, e.raddr, e.rport) == (net.hosts[1].addr, 7000,
                                                        net.hosts[0].addr, cli["lport"])
        assert e.role == abi.ROLE_SERVER


def test_same_bytes_same_seq_and_offset_on_both_sides(tcp_run):
    srv, cli, events = tcp_run
    sent = data(events, cli["pid"], abi.DIR_EGRESS)
    recv = data(events, srv["pid"], abi.DIR_INGRESS)
    by_offset = {e.offset: e for e in recv}
    matched = 0
    for w in sent:
        r = by_offset.get(w.offset)
        if r is not None:
            assert r.seq == w.seq, (w, r)
            assert r.payload[: len(w.payload)] == w.payload[: len(r.payload)]
            matched += 1
    assert matched >= 5
    # and the server's acks, read back by the client
    acks_w = data(events, srv["pid"], abi.DIR_EGRESS)
    acks_r = {e.offset: e.seq for e in data(events, cli["pid"], abi.DIR_INGRESS)}
    assert acks_w and all(acks_r[a.offset] == a.seq for a in acks_w if a.offset in acks_r)
    assert all(e.has_seq for e in sent + recv)


def test_connection_life_events(tcp_run):
    srv, cli, events = tcp_run
    conn = [(e.pid, e.syscall_name) for e in events if e.type == abi.EV_CONN]
    assert (cli["pid"], "connect") in conn
    assert (srv["pid"], "accept") in conn  # the plain accept syscall, via libc
    assert (cli["pid"], "close") in conn and (srv["pid"], "close") in conn
    acc = next(e for e in events if e.syscall_name == "accept")
    assert acc.role == abi.ROLE_SERVER and acc.rport == cli["lport"]


def test_udp_peers_from_sockaddr(net, tracer):
    srv, cli = run_pair(net, "udp", 7001)
    events = collect(tracer, lambda ev: sum(
        1 for e in ev if e.pid == srv["pid"] and e.syscall_name == "recvmmsg") >= 2, timeout=10)
    c_out = data(events, cli["pid"], abi.DIR_EGRESS)
    assert [(e.syscall_name, e.payload) for e in c_out] == [
        ("sendto", b"udp:sendto"), ("sendmsg", b"udp:sendmsg"),
        ("sendmmsg", b"udp:mm1"), ("sendmmsg", b"udp:mm2")]
    for e in c_out:
        assert (e.raddr, e.rport) == (net.hosts[1].addr, 7001)
        assert e.transport == abi.IPPROTO_UDP and e.flags & abi.F_PEER_FROM_MSG
        assert not e.has_seq
    s_in = data(events, srv["pid"], abi.DIR_INGRESS)
    assert [e.syscall_name for e in s_in] == ["recvfrom", "recvmsg", "recvmmsg", "recvmmsg"]
    for e in s_in[:2]:
        assert (e.raddr, e.rport) == (net.hosts[0].addr, cli["lport"])
    # recvmmsg without msg_name: the application never asked who sent it, so neither
    # can we (the socket is unconnected); the peer stays unknown rather than guessed.
    assert [(e.raddr, e.rport) for e in s_in[2:]] == [("0.0.0.0", 0)] * 2
    replies = data(events, cli["pid"], abi.DIR_INGRESS)
    assert [(e.syscall_name, e.payload) for e in replies] == [
        ("recvfrom", b"re:udp:sendto"), ("recvmsg", b"re:udp:sendmsg")]


def test_process_outside_scope_produces_nothing(net, tracer):
    # Client and server both in the third namespace, which the tracer is not scoped to.
    outsider = net.hosts[2]
    srv = net.spawn(outsider, PY, "-c", "import socket;s=socket.socket();"
                    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                    "s.bind(('127.0.0.1',7002));s.listen();print(1,flush=True);"
                    "c,_=s.accept();c.recv(10);c.send(b'x')", stdout=subprocess.PIPE)
    srv.stdout.readline()
    cli = net.spawn(outsider, PY, "-c", "import socket;s=socket.create_connection("
                    "('127.0.0.1',7002));s.send(b'outsider');s.recv(1)")
    assert cli.wait(timeout=10) == 0
    srv.wait(timeout=10)
    events = collect(tracer, lambda ev: False, timeout=1.0)
    assert not [e for e in events if e.pid in (srv.pid, cli.pid) or e.lport == 7002
                or e.rport == 7002]
    assert tracer.drops()["ringbuf_full"] == 0


def test_pid_and_port_filters_in_kernel(net):
    host = net.hosts[1]
    srv = net.spawn(host, PY, "-c", "import socket,os\n"
                    "ls=[socket.create_server(('127.0.0.1',p)) for p in (7003,7004)]\n"
                    "print(os.getpid(),flush=True)\n"
                    "for l in ls:\n c,_=l.accept();c.send(c.recv(10))", stdout=subprocess.PIPE,
                    text=True)
    srv_pid = int(srv.stdout.readline())
    with SocketTracer(ProbeConfig(ports={7003}, pids={srv_pid})) as t:
        cli = net.spawn(host, PY, "-c", "import socket\nfor p in (7003,7004):\n"
                        " s=socket.create_connection(('127.0.0.1',p));s.send(b'ping');s.recv(4)")
        assert cli.wait(timeout=10) == 0
        srv.wait(timeout=10)
        events = collect(t, lambda ev: any(e.syscall_name == "close" for e in ev), timeout=5)
    assert events, "the server's own traffic on port 7003 must be seen"
    assert {e.pid for e in events if e.type == abi.EV_DATA} == {srv_pid}
    assert {e.lport for e in events if e.type == abi.EV_DATA} == {7003}
    assert [e.payload for e in events if e.type == abi.EV_DATA] == [b"ping", b"ping"]
