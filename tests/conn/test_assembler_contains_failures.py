"""A parser that raises on some connection costs that connection only: the assembler
stops parsing it, counts the failure, says it once, and keeps going with the rest."""

from __future__ import annotations

import logging

from agent.conn.assembler import SpanAssembler
from agent.probes import abi


class Ev:
    """The fields of a data event the assembler and the tracker read."""

    def __init__(self, sock_id: int, direction: int, payload: bytes, offset: int) -> None:
        self.type, self.syscall, self.sock_id = abi.EV_DATA, abi.SYS_WRITE, sock_id
        self.direction, self.payload, self.ret, self.offset = direction, payload, len(payload), 0
        self.seq, self.flags, self.role, self.pid, self.tid = offset, abi.F_HAS_SEQ, 0, 7, 7
        self.transport, self.lport, self.rport, self.conn_id = abi.IPPROTO_TCP, 40000, 8080, 0
        self.ts_enter = self.ts_exit = 1_000 + offset
        self.laddr, self.raddr, self.comm, self.cgroup_id, self.netns = \
            "10.0.0.1", "10.0.0.2", "client", 1, 1


def test_a_raising_parser_is_contained(caplog):
    asm = SpanAssembler(emit=lambda ctx: None)
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for sock in (1, 2):
        asm.handle(Ev(sock, abi.DIR_EGRESS, req, 0))
    broken = next(s for s in asm.sessions.values() if s.event.sock_id == 1)

    def boom(chunk):
        raise KeyError(999)

    broken.parser.feed = boom
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # said once, counted each time it could have happened
            asm.handle(Ev(1, abi.DIR_INGRESS, b"HTTP/1.1 200 OK\r\n\r\n", 0))
        asm.handle(Ev(2, abi.DIR_INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0))
    assert asm.stats["parser_errors"] == 1 and asm.stats["parser_errors_http"] == 1
    assert asm.stats["unknown_protocol_bytes"] > 0  # its later bytes: counted, not parsed
    assert broken.parser is None and broken.unknown
    assert sum("parser failed" in r.getMessage() for r in caplog.records) == 1
    assert asm.stats["spans"] == 1  # the other connection went on
    asm.close()
