"""What kind of runtime a process is, as far as thread identity goes.

Thread-based parent links are only sound where a request's work stays on the thread
that read it.  Go schedules goroutines M:N over threads, so "same thread" there can
link a downstream call to the wrong request (design.md measured 23 % wrong).  A Go
binary is recognised by the build-info blob the Go linker always writes."""

from __future__ import annotations

import os

GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
MODE_THREADS = "threads"
MODE_GO = "go (M:N goroutines)"


class RuntimeClassifier:
    """pid -> runtime mode, cached per executable (path, inode, mtime)."""

    def __init__(self) -> None:
        self._by_exe: dict[tuple, str] = {}
        self._by_pid: dict[int, str] = {}

    def mode(self, pid: int) -> str:
        m = self._by_pid.get(pid)
        if m is not None:
            return m
        try:
            path = f"/proc/{pid}/exe"
            st = os.stat(path)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns)
            m = self._by_exe.get(key)
            if m is None:
                m = self._by_exe[key] = MODE_GO if is_go_binary(path) else MODE_THREADS
        except OSError:
            m = MODE_THREADS  # gone: its spans were decided by their own evidence already
        self._by_pid[pid] = m
        return m

    def forget(self, pid: int) -> None:
        self._by_pid.pop(pid, None)


def is_go_binary(path: str, limit: int = 64 << 20) -> bool:
    """True when the ELF file carries Go build info (searched in its first 64 MiB)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return False
            f.seek(0)
            tail = b""
            read = 0
            while read < limit:
                block = f.read(1 << 20)
                if not block:
                    return False
                if GO_BUILDINFO_MAGIC in tail + block:
                    return True
                tail = block[-len(GO_BUILDINFO_MAGIC):]
                read += len(block)
    except OSError:
        return False
    return False
