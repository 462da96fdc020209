"""Give back what compiling the probes left in the agent's memory.

bcc compiles the probes in-process with clang/LLVM: after start-up the agent holds
~75 MB of LLVM and clang code pages it touched (file-backed, counted in its resident
memory and in a pod's memory limit) and ~25 MB of compiler heap that glibc keeps for
reuse.  Neither is needed again unless another program is compiled (a later compile
simply faults the pages back in).  `release()` asks the kernel to reclaim those code
pages (madvise MADV_PAGEOUT: clean file pages are dropped, contents stay valid) and
glibc to return free heap to the system (malloc_trim).  Measured on this VM: resident
181 -> 82 MB right after the probes attached.  `trim_heap()` alone is what the agent's
loop calls now and then afterwards (agent/factory.py): the heap the per-event path
freed after a burst goes back too.
"""

from __future__ import annotations

import ctypes
import logging
import re

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # Linux 5.4+
_COMPILER = re.compile(r"/lib(LLVM|clang)[^/]*\.so")


def resident_kb() -> int:
    """VmRSS of this process, in KiB (0 when unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def compiler_private_clean_kb() -> int:
    """Clean pages of the compiler libraries mapped by this process alone: what
    `release` can give back (pages other processes map too stay, and are theirs too)."""
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                    parts = line.split()
                    inside = len(parts) >= 6 and bool(_COMPILER.search(parts[5]))
                elif inside and line.startswith("Private_Clean:"):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


def _compiler_ranges() -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and _COMPILER.search(parts[5]):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def release() -> dict[str, int]:
    """Reclaim the compiler's code pages and free heap; returns what it did, in KiB and
    ranges.  Never raises: a kernel without MADV_PAGEOUT keeps the pages (said once)."""
    before = resident_kb()
    private_before = compiler_private_clean_kb()
    paged = failed = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for lo, hi in _compiler_ranges():
            if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
                paged += 1
            else:
                failed += 1
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:  # glibc; musl has none
            trim(0)
    except (OSError, AttributeError) as e:
        log.info("memory: could not release the compiler's pages: %s", e)
    if failed:
        log.info("memory: madvise(MADV_PAGEOUT) refused for %d mapping(s) (kernel < 5.4?)",
                 failed)
    after = resident_kb()
    log.info("memory: resident %d -> %d MiB after releasing the probe compiler's pages",
             before // 1024, after // 1024)
    return {"before_kb": before, "after_kb": after, "ranges": paged, "refused": failed,
            "compiler_private_before_kb": private_before,
            "compiler_private_after_kb": compiler_private_clean_kb()}


_libc = None


def trim_heap() -> None:
    """Return the heap's free pages to the system (glibc malloc_trim: free chunks at
    the top and whole free pages inside every arena)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


# -- diagnosis ------------------------------------------------------------------------

def malloc_arenas() -> list[str]:
    """glibc's arenas (malloc_info): for each, the memory it holds from the system and
    how much of it is free chunks; [] where malloc_info is missing (musl)."""
    import os
    import tempfile

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    info = getattr(_libc, "malloc_info", None)
    if info is None:
        return []
    _libc.fdopen.restype = ctypes.c_void_p
    _libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    _libc.fclose.argtypes = [ctypes.c_void_p]
    info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.TemporaryFile("w+") as tmp:  # malloc_info writes to a C stream
        fp = _libc.fdopen(os.dup(tmp.fileno()), b"w")
        info(0, fp)
        _libc.fclose(fp)
        tmp.seek(0)
        xml = tmp.read()
    out = []
    for nr, body in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
        free = sum(int(x) for x in re.findall(r'<total type="(?:fast|rest)" count="\d+" '
                                              r'size="(\d+)"', body))
        cur = re.search(r'<system type="current" size="(\d+)"', body)
        held = int(cur.group(1)) if cur else 0
        out.append(f"malloc arena {nr}: {held / 2**20:.1f} MB from the system, "
                   f"{free / 2**20:.1f} MB of it free chunks")
    return out


def report(top: int, when: str, pipeline=None) -> None:
    """Where the memory is, on stderr (diagnosis: ZEROTRACE_MEMORY_REPORT=N): Python's
    object allocator (arenas, used and free bytes), the collector's state and, with
    ZEROTRACE_TRACEMALLOC=1 (slows the agent several times), the top N allocation sites
    still alive."""
    import gc
    import os
    import sys
    import tempfile
    import time
    import tracemalloc

    with tempfile.TemporaryFile("w+") as tmp:  # _debugmallocstats writes to C stderr
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp:
            if line.startswith(("# arenas", "# bytes in", "Total")):
                print(f"zerotrace-mem: {when}: {' '.join(line.split())}", file=sys.stderr)
    for line in malloc_arenas():
        print(f"zerotrace-mem: {when}: {line}", file=sys.stderr)
    print(f"zerotrace-mem: {when}: gc counts {gc.get_count()}, objects tracked "
          f"{len(gc.get_objects())}, frozen {gc.get_freeze_count()}, collections "
          f"{[g['collections'] for g in gc.get_stats()]}", file=sys.stderr)
    if when != "ready":  # the containers alive, by type: what holds the arenas
        from collections import Counter

        census = Counter(type(o).__name__ for o in gc.get_objects())
        print(f"zerotrace-mem: {when}: tracked objects by type "
              f"{census.most_common(top)}", file=sys.stderr)
    if pipeline is not None:
        st = pipeline.stitcher
        print(f"zerotrace-mem: {when}: held: {len(st.items)} spans being stitched, "
              f"{len(st.emitted)} emitted kept for late joiners, "
              f"{len(pipeline.assembler.sessions)} sessions", file=sys.stderr)
        held = getattr(st, "held", None)  # the compiled stitcher's indexes and histories
        if held is not None:
            print(f"zerotrace-mem: {when}: stitcher holds {held()}", file=sys.stderr)
    if when == "asked":
        # cyclic garbage waiting for a full collection (the agent's GC runs gen 2 rarely)
        t0 = time.perf_counter()
        found = gc.collect()
        print(f"zerotrace-mem: {when}: full collection found {found} unreachable objects "
              f"in {1e3 * (time.perf_counter() - t0):.1f} ms", file=sys.stderr)
    if not tracemalloc.is_tracing():
        return
    snap = tracemalloc.take_snapshot()
    cur, peak = tracemalloc.get_traced_memory()
    print(f"zerotrace-mem: python heap traced {cur / 2**20:.1f} MB (peak {peak / 2**20:.1f})",
          file=sys.stderr)
    for st in snap.statistics("lineno")[:top]:
        f = st.traceback[0]
        print(f"zerotrace-mem: {st.size / 2**20:7.2f} MB {st.count:8d} blocks "
              f"{'/'.join(f.filename.rsplit('/', 2)[-2:])}:{f.lineno}", file=sys.stderr)
