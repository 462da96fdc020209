"""One-line text forms of what the agent sees, for `zerotrace agent --print ...`."""

from __future__ import annotations

import time

from agent.probes import abi
from agent.probes.events import SocketEvent
from proto.span import Span

_DIR = {abi.DIR_EGRESS: ">", abi.DIR_INGRESS: "<"}


def clock(ts_ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts_ns / 1e9)) + f".{ts_ns % 10**9 // 1000:06d}"


def preview(data: bytes, n: int = 48) -> str:
    """Printable ASCII kept, everything else as '.', like hexdump's right column."""
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data[:n])


def event_line(e: SocketEvent) -> str:
    who = f"{e.pid}/{e.comm}"
    tup = f"{e.laddr}:{e.lport} {'->' if e.role != abi.ROLE_SERVER else '<-'} {e.raddr}:{e.rport}"
    if e.type == abi.EV_CONN:
        return (f"{clock(e.ts_exit)} {who:<22} {e.tid:>7} {e.syscall_name:<9} "
                f"{e.transport_name} {tup} role={abi.ROLE_NAMES[e.role]}")
    seq = f"seq={e.seq}" if e.has_seq else "seq=-"
    mid = " midstream" if e.flags & abi.F_MIDSTREAM else ""
    return (f"{clock(e.ts_exit)} {who:<22} {e.tid:>7} {e.syscall_name:<9} "
            f"{_DIR[e.direction]} {e.transport_name} {tup} {e.ret}B {seq} off={e.offset}{mid} "
            f"|{preview(e.payload)}|")


def span_line(s: Span) -> str:
    """One line per span: when, who, what, how it went, how long."""
    arrow = "->" if s.kind == "client" else "<-"
    dur = s.duration_ns / 1e6
    status = s.status_code or s.status
    inc = f" incomplete({s.incomplete})" if s.incomplete else ""
    return (f"{clock(s.start_ns)} {s.kind:<6} {s.pid}/{s.process:<15} {s.protocol:<10} "
            f"{s.operation[:60]:<60} {status:<6} {dur:9.3f}ms "
            f"{s.local.addr}:{s.local.port} {arrow} {s.remote.addr}:{s.remote.port}{inc}")
