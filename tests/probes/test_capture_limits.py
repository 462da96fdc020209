"""How much of a vectored message the probes capture: every iovec of writev/sendmsg up to
ZT_IOV_MAX (32), the first ZT_MMSG_IOV_MAX (4) of each sendmmsg message, and a message
captured in part says so (ZT_F_TRUNCATED, with the whole length in `ret`)."""

from __future__ import annotations

import ctypes as ct
import socket

import pytest

from agent.probes import abi
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.helpers.tracing import collect
from tests.probes.peer import IOVec, MMsgHdr, libc

pytestmark = pytest.mark.kernel
PARTS = [f"part{i}:".encode() + bytes([65 + i]) * (10 + i) for i in range(6)]


def iovecs(parts: list[bytes]) -> tuple[ct.Array, list]:
    bufs = [ct.create_string_buffer(p, len(p)) for p in parts]
    iov = (IOVec * len(parts))(*[IOVec(ct.cast(b, ct.c_void_p), len(b)) for b in bufs])
    return iov, bufs


@pytest.fixture(scope="module")
def udp_pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield tx, rx
    tx.close()
    rx.close()


@pytest.fixture(scope="module")
def tracer(udp_pair):
    _tx, rx = udp_pair
    # the test process itself moves the bytes, so it must not be filtered out as "self"
    with SocketTracer(ProbeConfig(ports={rx.getsockname()[1]}, trace_self=True)) as t:
        yield t


def sent(tracer: SocketTracer, name: str) -> list:
    events = collect(tracer, lambda ev: any(e.syscall_name == name for e in ev), timeout=10)
    return [e for e in events if e.syscall_name == name and e.direction == abi.DIR_EGRESS]


def test_writev_captures_every_iovec(tracer, udp_pair):
    tx, _rx = udp_pair
    iov, _keep = iovecs(PARTS)
    n = libc.writev(tx.fileno(), iov, len(PARTS))
    assert n == sum(map(len, PARTS))
    (e,) = sent(tracer, "writev")
    assert (e.ret, e.payload) == (n, b"".join(PARTS))
    assert not e.flags & abi.F_TRUNCATED


def test_sendmmsg_captures_four_iovecs_per_message_and_says_so(tracer, udp_pair):
    tx, _rx = udp_pair
    msgs = (MMsgHdr * 2)()
    keep = []
    for i, parts in enumerate((PARTS, PARTS[:2])):
        iov, bufs = iovecs(parts)
        keep += [iov, bufs]
        msgs[i].hdr.iov = ct.cast(iov, ct.POINTER(IOVec))
        msgs[i].hdr.iovlen = len(parts)
    assert libc.sendmmsg(tx.fileno(), msgs, 2, 0) == 2
    first, second = sent(tracer, "sendmmsg")
    assert first.ret == sum(map(len, PARTS))
    assert first.payload == b"".join(PARTS[:4])
    assert first.flags & abi.F_TRUNCATED
    assert (second.ret, second.payload) == (len(PARTS[0]) + len(PARTS[1]), PARTS[0] + PARTS[1])
    assert not second.flags & abi.F_TRUNCATED
