"""Process facts from /proc: name, command line and start time (to tell pid reuse)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

from agent.protocols import redact

# A command line is a resource attribute on every span: bound it so one process with
# a megabyte of arguments cannot bloat every span it produces.
MAX_CMDLINE = 512


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    name: str
    cmdline: str
    start_time: int  # clock ticks since boot (field 22 of /proc/PID/stat)


def start_time(pid: int, proc_root: str = "/proc") -> int | None:
    """Start time of a pid, or None when it is gone; a different value means the pid
    was reused by another process."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def read_process(pid: int, proc_root: str = "/proc") -> ProcessInfo | None:
    """Name, command line and start time of a live pid; None when it is gone."""
    st = start_time(pid, proc_root)
    if st is None:
        return None
    try:
        with open(f"{proc_root}/{pid}/comm", "rb") as f:
            name = f.read().strip().decode("utf-8", "replace")
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_CMDLINE * 4)
    except OSError:
        return None
    cmdline = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    # Masked before it goes anywhere (--password=..., postgres://app:secret@db, tokens):
    # it is a resource attribute on every span of the process.
    return ProcessInfo(name, redact.command_line(cmdline[:MAX_CMDLINE]), st)


def read_environ(pid: int, keys: Iterable[str], proc_root: str = "/proc") -> dict[str, str]:
    """The values of the given environment variables of a process (as it started).

    Only the asked-for keys are kept: an environment holds secrets, and nothing else
    of it may leave this function.  Other users' processes need CAP_SYS_PTRACE."""
    wanted = {k.encode() for k in keys}
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            raw = f.read(1 << 20)
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in wanted:
            out[key.decode()] = value[:MAX_CMDLINE].decode("utf-8", "replace")
    return out


def host_name() -> str:
    return socket.gethostname()
