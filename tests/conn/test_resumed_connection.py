"""A connection the probes resume after sampling it out (close + connect flagged
RESUMED, bpf/data.c) drops what its parser still held: a request whose answer was
sampled out is counted, not made an incomplete span; a real close still flushes."""

from __future__ import annotations

from agent.conn.assembler import SpanAssembler
from agent.probes import abi
from tests.conn.test_assembler_contains_failures import Ev

REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


class Close:
    def __init__(self, sock_id: int, flags: int) -> None:
        self.type, self.syscall, self.sock_id, self.flags = abi.EV_CONN, abi.SYS_CLOSE, \
            sock_id, flags
        self.direction, self.payload, self.ret, self.offset, self.seq = 0, b"", 0, 0, 0
        self.role, self.pid, self.tid = 0, 7, 7
        self.transport, self.lport, self.rport, self.conn_id = abi.IPPROTO_TCP, 40000, 8080, 0
        self.ts_enter = self.ts_exit = 9_000
        self.laddr, self.raddr, self.comm, self.cgroup_id, self.netns = \
            "10.0.0.1", "10.0.0.2", "client", 1, 1


def run(flags: int) -> tuple[list, SpanAssembler]:
    spans: list = []
    asm = SpanAssembler(emit=spans.append)
    asm.handle(Ev(1, abi.DIR_EGRESS, REQ, 0))  # a request, its answer never seen
    asm.handle(Close(1, flags))
    return spans, asm


def test_resumed_close_drops_the_pending_request_and_counts_it():
    spans, asm = run(abi.F_RESUMED)
    assert spans == [] and asm.stats["resumed_dropped_records"] == 1
    assert not asm.sessions


def test_a_real_close_still_flushes_an_incomplete_span():
    spans, asm = run(0)
    assert len(spans) == 1 and spans[0].span.incomplete
    assert asm.stats["resumed_dropped_records"] == 0
