"""Compile, configure, attach and detach the socket tracer (bpf/socket_trace.c)."""

from __future__ import annotations

import ctypes as ct
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import check
from agent.clock import wall_offset
from agent.conn.listeners import listening_ports
from agent.probes import abi, btf, golang, tls
from agent.probes.csource import inline_includes
from agent.probes.events import EventBatch, SocketEvent, WakeEvent
from agent.probes.ringbuf import RingBuffer

log = logging.getLogger(__name__)

# ZEROTRACE_BPF_DIR: probe sources from another directory, for benchmarks that compare
# two versions of the probes side by side in one run (bench_live --compare)
BPF_DIR = Path(os.environ.get("ZEROTRACE_BPF_DIR") or
               Path(__file__).resolve().parents[2] / "bpf")
SOCKET_TRACE_C = BPF_DIR / "socket_trace.c"


# Records a poll() hands over at most.  Each batch's records and events are alive at once
# (~1 KB a record with its event): 16 384 made the allocator keep a larger heap under load
# (bench_live --smaps, load ~10: [heap] 23-24 MB, 16.6-16.8 with 4 096; no CPU change seen)
MAX_BATCH = 4096


class ProbeError(RuntimeError):
    """The probes could not be loaded; the message says what is missing and what to do."""


def ring_pages_from_env(default_mb: int = 16) -> int:
    """Ring buffer pages from ZEROTRACE_RING_MB (rounded down to a power of two, >= 1)."""
    try:
        mb = max(1, int(os.environ.get("ZEROTRACE_RING_MB", default_mb)))
    except ValueError:
        mb = default_mb
    pages = mb * (1 << 20) // os.sysconf("SC_PAGESIZE")
    return 1 << (pages.bit_length() - 1)


@dataclass
class ProbeConfig:
    """What to capture.  Empty filter sets mean "everything"."""

    payload_bytes: int = 1024
    # 16 MiB with 4 KiB pages; ZEROTRACE_RING_MB sets it (a power of two)
    ring_pages: int = field(default_factory=lambda: ring_pages_from_env())
    wakeup_events: int = 64
    pids: set[int] = field(default_factory=set)
    cgroups: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    netns: set[int] = field(default_factory=set)
    trace_self: bool = False
    # Go: record who hands work to which goroutine (uprobes on runtime.send/ready/chanrecv/
    # selectgo, bpf/gowake.c), so a pooled http.Client's call joins the request behind it.
    # On unless ZEROTRACE_GO_HANDOFFS=0: each probe hit is a uprobe trap (docs/stitching.md).
    go_handoffs: bool = field(
        default_factory=lambda: os.environ.get("ZEROTRACE_GO_HANDOFFS", "1") != "0")

    # TLS plaintext of dynamically linked OpenSSL (bpf/tls.c, docs/tls.md): uprobes on
    # libssl's SSL_read/SSL_write.  On unless ZEROTRACE_TLS=0.
    tls: bool = field(default_factory=lambda: os.environ.get("ZEROTRACE_TLS", "1") != "0")

    def payload_max(self) -> int:
        """Payload capture size rounded up to a power of two (the probe masks with it)."""
        n = max(16, min(self.payload_bytes, 16384))
        return 1 << (n - 1).bit_length()


_TP_PROBE = re.compile(r"^TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", re.M)
_TP_ALSO = re.compile(r"^ZT_ATTACH_ALSO\((\w+),\s*(\w+),\s*(\w+)\)", re.M)


def tracepoint_fields(category: str, event: str) -> list[str]:
    """The record layout of a tracepoint (its tracefs format's field lines)."""
    path = f"{check.TRACEFS}/events/{category}/{event}/format"
    with open(path) as f:
        return [line.strip() for line in f if line.strip().startswith("field:")]


def tracepoint_attachments(src: str) -> list[tuple[bytes, bytes]]:
    """(category:event, program) for every TRACEPOINT_PROBE of src and every
    ZT_ATTACH_ALSO (bpf/maps.h) that lends one of those programs to another tracepoint.

    A program reads its arguments at the offsets of its own tracepoint's record, so a
    loan is refused (ProbeError) unless the other record's layout is the same."""
    out = [(f"{c}:{e}".encode(), f"tracepoint__{c}__{e}".encode())
           for c, e in _TP_PROBE.findall(src)]
    own = {tp for tp, _fn in out}
    for c, e, other in _TP_ALSO.findall(src):
        if f"{c}:{e}".encode() not in own:
            raise ProbeError(f"ZT_ATTACH_ALSO({c}, {e}, {other}): no TRACEPOINT_PROBE({c}, {e})")
        try:
            same = tracepoint_fields(c, e) == tracepoint_fields(c, other)
        except OSError as err:
            raise ProbeError(f"tracepoint {c}:{other}: {err.strerror}; see `zerotrace check`"
                             ) from err
        if not same:
            raise ProbeError(f"tracepoints {c}:{e} and {c}:{other} differ in layout on this "
                             "kernel; the program of one cannot serve the other")
        out.append((f"{c}:{other}".encode(), f"tracepoint__{c}__{e}".encode()))
    return out


def netns_inode(path: str) -> int:
    """Inode number of a network namespace file (/proc/PID/ns/net, /run/netns/NAME)."""
    return os.stat(path).st_ino


class SocketTracer:
    """The loaded socket probes; use as a context manager so they always detach."""

    def __init__(self, config: ProbeConfig | None = None) -> None:
        self.config = config or ProbeConfig()
        self._bpf = None
        self._ring: RingBuffer | None = None
        self.wall_offset = wall_offset()
        self.events_read = 0
        self._go_pids: dict[int, str] = {}
        self._go_binaries: set[tuple[int, int]] = set()
        self._go_tracking = False
        self._wake_binaries: set[tuple[int, int]] = set()
        self._wakes = False  # some wake probe attached: ring records need sorting
        self._attachments: list[tuple[bytes, bytes]] = []
        self.timings: dict[str, float] = {}  # start-up phases, seconds (bench_startup)
        self.tls: tls.TlsAttacher | None = None  # TLS: libraries with probes
        self._tls_stream: tls.TlsStream | None = None
        self._tls_s = 0.0
        self._skip_hints = False
        self._config_lock = threading.Lock()
        self._listening_seeded = False  # map `listening` written (seed_listening)
        self._load()

    def _load(self) -> None:
        if os.geteuid() != 0:
            raise ProbeError("loading eBPF probes needs root (or CAP_BPF+CAP_PERFMON); "
                             "run as root")
        try:
            from bcc import BPF
        except ImportError as e:
            raise ProbeError("python module bcc is missing: run scripts/setup.sh "
                             "(Debian package python3-bpfcc)") from e
        try:
            offsets = btf.kernel_offsets()
        except btf.BTFError as e:
            raise ProbeError(str(e)) from e
        cfg = self.config
        cflags = btf.cflags(offsets) + [
            f"-I{BPF_DIR}",
            f"-DZT_PAYLOAD_MAX={cfg.payload_max()}",
            f"-DZT_RINGBUF_PAGES={cfg.ring_pages}",
            "-Wno-macro-redefined", "-Wno-pass-failed",
        ]
        t0 = time.monotonic()

        class _Manual(BPF):
            # bcc attaches every TRACEPOINT_PROBE inside its constructor and, when one
            # fails, raises with the earlier ones still attached and nothing to clean
            # them up with.  We attach ourselves, after the filters are written.
            def _trace_autoload(self) -> None:
                pass

        src = inline_includes(SOCKET_TRACE_C)
        if cfg.tls:
            src += "\n" + inline_includes(BPF_DIR / "tls.c")
            cflags.append("-DZT_TLS")
        attachments = tracepoint_attachments(src)
        try:
            self._bpf = _Manual(text=src.encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile errors
            raise ProbeError(f"the kernel or bcc refused the socket probes: {e}; "
                             "see `zerotrace check`") from e
        t1 = time.monotonic()
        try:
            self._configure()
            self._attachments = attachments
            programs = sorted({fn for _tp, fn in attachments})
            for fn in programs:  # the kernel verifies each program here, once
                self._bpf.load_func(fn, BPF.TRACEPOINT)
            if cfg.tls:
                fn = self._bpf.load_func(b"zt_tls_sys_call", BPF.TRACEPOINT)
                self._bpf[b"tls_sys_call"][ct.c_int(0)] = ct.c_int(fn.fd)
            t2 = time.monotonic()
            for tp, fn in attachments:
                self._bpf.attach_tracepoint(tp=tp, fn_name=fn)
            if cfg.tls:
                self._attach_tls()
            events = self._bpf[b"events"]
            self._ring = RingBuffer(events.map_fd, cfg.ring_pages * os.sysconf("SC_PAGESIZE"))
        except Exception as e:  # load or attach refused: detach what was attached
            self.close()
            raise ProbeError(f"the kernel refused the socket probes: {e}; "
                             "see `zerotrace check`") from e
        t3 = time.monotonic()
        self.timings = {"compile": t1 - t0, "verify": t2 - t1, "attach": t3 - t2}
        if self.tls is not None:
            self.timings["tls"] = self._tls_s  # part of "attach"
        log.info("socket probes attached in %.1fs (compiled in %.1fs, %d programs verified "
                 "in %.1fs, attached to %d tracepoints in %.1fs)", t3 - t0, t1 - t0,
                 len(programs), t2 - t1, len(attachments), t3 - t2)

    # -- TLS (bpf/tls.c, agent/probes/tls.py) -----------------------------------------
    def _attach_tls(self) -> None:
        """The uprobes of the system's libssl and of running processes' (tls.c's part of
        the data syscalls' enter is compiled into data.c's programs, -DZT_TLS, and jumps
        to zt_tls_sys_call inside SSL calls: that program is in its slot before any
        tracepoint is attached)."""
        t0 = time.monotonic()
        self.tls = tls.TlsAttacher(self._bpf)
        self._tls_stream = tls.TlsStream()
        for path in tls.system_libssl():
            self.tls.attach_file(path)
        self.tls.scan(self.config.pids or None, force=True)
        self._tls_s = time.monotonic() - t0
        log.info("TLS: %d libssl file(s) with uprobes in %.2fs", self.tls.attached(),
                 self._tls_s)

    def tls_stats(self) -> dict[str, int]:
        """TLS counters: libraries with probes, connections, plaintext/ciphertext events."""
        if self.tls is None:
            return {}
        out = dict(self._tls_stream.stats)
        out["tls_libraries"] = self.tls.attached()
        for key, table in (("tls_ciphertext_syscalls_skipped", b"tls_cipher_skipped"),
                           ("tls_plaintext_events", b"tls_plain_emitted")):
            out[key] = sum(self._bpf[table][ct.c_int(0)])
        return out

    def _tls_records(self, records: list[bytes]) -> list[bytes]:
        self.tls.scan(self.config.pids or None)  # new processes' own libssl files
        marks = self._bpf[b"tls_marks"][ct.c_int(0)].value
        return self._tls_stream.rewrite(records, marks)

    def _configure(self) -> None:
        b, cfg = self._bpf, self.config
        for name, values, ctype in (
            ("filter_pids", cfg.pids, ct.c_uint32),
            ("filter_cgroups", cfg.cgroups, ct.c_uint64),
            ("filter_ports", cfg.ports, ct.c_uint16),
            ("filter_netns", cfg.netns, ct.c_uint32),
        ):
            table = b[name.encode()]
            for v in values:
                table[ctype(v)] = ct.c_uint8(1)
        c = abi.ZtConfig(
            self_pid=0 if cfg.trace_self else os.getpid(),
            enabled=1,
            filter_pid=1 if cfg.pids else 0,
            filter_cgroup=1 if cfg.cgroups else 0,
            filter_port=1 if cfg.ports else 0,
            filter_netns=1 if cfg.netns else 0,
            wakeup_events=cfg.wakeup_events,
            keep=abi.KEEP_ALL,
        )
        # Written before attaching, in one update ('enabled' guards against any path
        # that attaches first).
        b[b"config"][ct.c_int(0)] = c

    def tracepoints(self) -> list[tuple[bytes, bytes]]:
        """(category:event, program) of every tracepoint attachment; a program may
        serve several tracepoints."""
        return list(self._attachments)

    def pause(self) -> None:
        """Detach every tracepoint, keeping programs and maps (benchmarks' baseline)."""
        for tp, _fn in self.tracepoints():
            self._bpf.detach_tracepoint(tp)
        if self.tls is not None:  # TLS: its uprobes too
            self.tls.detach_all()

    def resume(self) -> None:
        for tp, fn in self.tracepoints():
            self._bpf.attach_tracepoint(tp=tp, fn_name=fn)
        if self.tls is not None:
            self.tls.reattach_all()

    def follow_go(self, pid: int) -> str:
        """Track goroutine ids of Go process pid; returns how (or why not)."""
        if pid in self._go_pids:
            return self._go_pids[pid]
        try:
            path = golang.exe_path(pid)
            st = os.stat(path)
            off = golang.goid_offset(path)
            key = (st.st_dev, st.st_ino)
            if key not in self._go_binaries:
                self._bpf.attach_uprobe(name=path.encode(), sym=golang.EXECUTE_SYMBOL.encode(),
                                        fn_name=b"zt_go_execute")
                self._go_binaries.add(key)
            self._bpf[b"go_goid_offset"][ct.c_uint32(pid)] = ct.c_uint32(off)
            if self.config.go_handoffs:
                self._follow_handoffs(pid, path, key)
            if not self._go_tracking:
                self._go_tracking = True
                with self._config_lock:  # the shedder's thread writes it too
                    c = self._bpf[b"config"][ct.c_int(0)]
                    c.track_goid = 1
                    self._bpf[b"config"][ct.c_int(0)] = c
            how = f"goroutine ids (goid at +{off})"
        except (OSError, golang.GoBinaryError, Exception) as e:  # bcc raises bare Exception
            how = f"thread ids only: {e}"
            log.warning("Go process %d: %s", pid, how)
        self._go_pids[pid] = how
        return how

    def go_processes(self) -> int:
        """How many Go processes follow_go was asked about (followed or not)."""
        return len(self._go_pids)

    def _follow_handoffs(self, pid: int, path: str, key: tuple[int, int]) -> None:
        """Wake records for pid (bpf/gowake.c); a binary that cannot say how only logs:
        its goroutines are still followed, its hand-offs stay refused."""
        try:
            offs = golang.runtime_offsets(path)
            if key not in self._wake_binaries:
                present = golang.symbols_present(path, golang.WAKE_SYMBOLS)
                if "runtime.ready" not in present:
                    raise golang.GoBinaryError(f"{path}: no runtime.ready")
                # a symbol the linker left out is code that never runs (no select
                # statement: no selectgo), so nothing to record there
                done: list[str] = []
                try:
                    for sym in present:
                        self._bpf.attach_uprobe(name=path.encode(), sym=sym.encode(),
                                                fn_name=golang.WAKE_SYMBOLS[sym].encode())
                        done.append(sym)
                except Exception:  # all or none: a probe alone costs traps, records nothing
                    for sym in done:
                        self._bpf.detach_uprobe(name=path.encode(), sym=sym.encode())
                    raise
                self._wake_binaries.add(key)
            self._bpf[b"go_runtime"][ct.c_uint32(pid)] = abi.ZtGoRuntime(**offs)
            self._wakes = True
        except (OSError, golang.GoBinaryError, Exception) as e:  # bcc raises bare Exception
            log.warning("Go process %d: hand-offs not followed: %s", pid, e)

    def poll(self, timeout_s: float = 0.05) -> EventBatch:
        """Wait up to timeout_s for events, then return every event waiting: a list of
        SocketEvents, with the Go wake records of the same drain in `.wakes`."""
        ring = self._ring
        if not ring.pending_bytes():
            ring.wait(timeout_s)
        # bounded: the loop's periodic work (expiry, stitching, skip hints) runs between
        # batches even when the agent is far behind
        records = ring.drain(MAX_BATCH)
        if self.tls is not None:
            records = self._tls_records(records)
        off = self.wall_offset
        if not self._wakes:
            out = EventBatch([SocketEvent(r, off) for r in records])
        else:
            out, size = EventBatch(), abi.EVENT_SIZE
            add, wakes = out.append, out.wakes
            for r in records:
                if len(r) < size:
                    wakes.append(WakeEvent(r, off))
                else:
                    add(SocketEvent(r, off))
        self.events_read += len(out)
        return out

    def poll_raw(self, timeout_s: float = 0.05, wakes: bool = False) -> list[bytes]:
        """Like poll() but without decoding (benchmarks, recorders): the socket event
        records, and with wakes=True the Go wake records too (events.decode tells them
        apart)."""
        ring = self._ring
        if not ring.pending_bytes():
            ring.wait(timeout_s)
        records = ring.drain()
        if self._wakes and not wakes:
            size = abi.EVENT_SIZE
            records = [r for r in records if len(r) >= size]
        return records

    def drops(self) -> dict[str, int]:
        """Events lost in the kernel, by reason (summed over CPUs)."""
        table = self._bpf[b"drops"]
        out = {}
        for slot, reason in abi.DROP_SLOTS.items():
            out[reason] = sum(table[ct.c_int(slot)])
        return out

    def stats(self) -> dict[str, int]:
        """What went into the ring (records, bytes) and what was left out on purpose
        (sampling, skip hints), summed over CPUs (bpf/abi.h ZT_STAT_*)."""
        table = self._bpf[b"stats"]
        return {name: sum(table[ct.c_int(slot)]) for slot, name in abi.STAT_SLOTS.items()}

    def ring_fill(self) -> float:
        """Share of the ring buffer written and not yet read (0..1)."""
        ring = self._ring
        return ring.pending_bytes() / ring.size if ring is not None else 0.0

    @property
    def keep(self) -> int:
        """Sampling: exchanges kept per abi.KEEP_ALL (all of them when not sampling)."""
        return self._bpf[b"config"][ct.c_int(0)].keep

    def set_keep(self, keep: int) -> None:
        """Keep `keep` of every abi.KEEP_ALL request/response exchanges (bpf/data.c
        zt_sample): whole exchanges of connections whose start was seen, whole
        connections otherwise.  The first call below KEEP_ALL turns the per-socket
        sampling state on for good; before it no data syscall looks at it."""
        keep = max(0, min(int(keep), abi.KEEP_ALL))
        table = self._bpf[b"config"]
        with self._config_lock:
            c = table[ct.c_int(0)]
            if keep == c.keep:
                return
            if keep < abi.KEEP_ALL and not c.shed_mode:
                if not self._listening_seeded:
                    self.seed_listening()
                c.shed_mode = 1
                c.shed_gen += 1  # direction state from before is not trusted (data.c)
            c.keep = keep
            table[ct.c_int(0)] = c

    def ready_to_shed(self) -> None:
        """The agent sheds from now: the listeners written (seed_listening: the first
        cut must be quick), and the probes let cut the keep rate themselves when a
        record finds the ring full (bpf/maps.h zt_ring_full_cut; the shedder adopts
        their rate).  Before this, a full ring only loses records."""
        if not self._listening_seeded:
            self.seed_listening()
        table = self._bpf[b"config"]
        with self._config_lock:
            c = table[ct.c_int(0)]
            c.ring_cut = 1
            table[ct.c_int(0)] = c

    def seed_listening(self) -> int:
        """Write the TCP listeners of every network namespace in scope into map
        `listening` (maps.h): those from before the probes were enabled, which
        sock:inet_sock_set_state never saw.  Only sampling reads the map: done by the
        first set_keep() below all unless done before (the agent does it when ready:
        a scan of /proc, tens of ms on a busy node, while the ring fills at full rate
        is too late a cut).  Returns the number of (netns, port) entries written."""
        self._listening_seeded = True
        table = self._bpf[b"listening"]
        seen: set[int] = set()
        n = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                ino = os.stat(f"/proc/{name}/ns/net").st_ino
            except OSError:
                continue
            if ino in seen or (self.config.netns and ino not in self.config.netns):
                continue
            seen.add(ino)
            for port in listening_ports(int(name)) or ():
                key = table.Key()
                key.netns, key.port = ino & 0xFFFFFFFF, port
                table[key] = ct.c_uint8(1)
                n += 1
        return n

    def set_skip_hint(self, sock_id: int, direction: int, until_seq: int | None) -> None:
        """Tell the probes that direction `direction` of socket `sock_id` carries, up
        to TCP seq `until_seq`, a body the parser skips by length (None: forget it).
        Syscalls wholly inside it, each too long to be captured whole anyway, are then
        not emitted; the last one is emitted without payload (bpf/data.c zt_skip_hint)."""
        table = self._bpf[b"skips"]
        key = ct.c_uint64(sock_id | direction)
        if until_seq is None:
            try:
                del table[key]
            except KeyError:
                pass
            return
        if not self._skip_hints:
            self._skip_hints = True
            with self._config_lock:
                c = self._bpf[b"config"][ct.c_int(0)]
                c.skip_hints = 1
                self._bpf[b"config"][ct.c_int(0)] = c
        table[key] = ct.c_uint32(until_seq & 0xFFFFFFFF)

    def close(self) -> None:
        """Detach every probe and free every map (idempotent)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self.tls is not None:  # the exec hook's thread, the fds held on executables
            self.tls.close()  # idempotent; counters keep their last totals for a scrape
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> SocketTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
