"""One-line text forms of what the agent sees, for `zerotrace agent --print ...`."""

from __future__ import annotations

import time

from agent.probes import abi
from agent.probes.events import SocketEvent

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
