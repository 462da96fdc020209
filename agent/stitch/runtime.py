"""What kind of runtime a process is, as far as thread identity goes.

Thread-based parent links are only sound where a request's work stays on the thread
that read it.  Go schedules goroutines M:N over threads, so "same thread" there can
link a downstream call to the wrong request (design.md measured 23 % wrong).  A Go
binary is recognised by the .go.buildinfo section the Go linker always writes."""

from __future__ import annotations

import os

MODE_THREADS = "threads"
MODE_GO = "go (M:N goroutines)"
MODE_GO_GOID = "go (goroutine ids)"
# Goroutine-keyed "thread" ids start here, above any Linux tid (PID_MAX_LIMIT = 2^22).
GOROUTINE_BASE = 1 << 32


class RuntimeClassifier:
    """pid -> runtime mode, cached per executable (path, inode, mtime)."""

    def __init__(self) -> None:
        self._by_exe: dict[tuple, str] = {}
        self._by_pid: dict[int, str] = {}

    def following_goroutines(self, pid: int) -> None:
        """pid's events now carry goroutine ids in place of thread ids."""
        self._by_pid[pid] = MODE_GO_GOID

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


def is_go_binary(path: str) -> bool:
    """True when the ELF file has a section the Go linker always writes (headers only)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return False
            f.seek(0)
            try:
                elf = ELFFile(f)
                return (elf.get_section_by_name(".go.buildinfo") is not None
                        or elf.get_section_by_name(".gopclntab") is not None)
            except ELFError:
                return False
    except OSError:
        return False
