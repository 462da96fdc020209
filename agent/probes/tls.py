"""TLS plaintext from dynamically linked OpenSSL (bpf/tls.c) and Go crypto/tls
(bpf/gotls.c, agent/probes/gotls.py): finding libssl and Go executables, attaching
their uprobes once per distinct file, and turning the probes' records into what the
pipeline expects.

Uprobes live on a file (its inode), not on a process: once a libssl.so file has its
probes, every process mapping that file, now or later, is traced.  So the agent
attaches the system's libssl at start and, for libraries of other files (containers
bring their own, an upgrade on disk makes a new inode), rescans processes it has not
seen yet every few seconds.

In the event stream: plaintext events come on the pseudo-socket sk|1, flagged F_TLS;
the first time a socket is seen inside an SSL call a mark record (EV_CONN,
SYS_TLS_MARK) precedes its ciphertext.  `TlsStream.rewrite` drops the marks and the
ciphertext of marked sockets (counted), opens sk|1 as a connection of the role the
kernel saw (connect/accept), and closes it when sk closes.
"""

from __future__ import annotations

import logging
import operator
import os
import struct
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from agent.probes import abi, gotls

log = logging.getLogger(__name__)

SYS_TLS_MARK = 32  # bpf/tls.c ZT_SYS_TLS_MARK
F_TLS = abi.F_TLS  # bpf/abi.h ZT_F_TLS
# (symbol, entry program); every one also gets the return program zt_ssl_ret
SSL_SYMBOLS = {
    "SSL_write": "zt_ssl_write",
    "SSL_write_ex": "zt_ssl_write_ex",
    "SSL_read": "zt_ssl_read",
    "SSL_read_ex": "zt_ssl_read_ex",
    "SSL_do_handshake": "zt_ssl_handshake",
}
RETURN_PROGRAM = "zt_ssl_ret"
# the data syscalls OpenSSL's socket BIO uses (and a few more): zt_tls_sys_enter runs
# after data.c's program on their enter tracepoints
SYSCALL_TRACEPOINTS = [f"syscalls:sys_enter_{n}" for n in (
    "write", "read", "sendto", "recvfrom", "writev", "readv", "sendmsg", "recvmsg")]
RESCAN_S = 2.0
_SOCK_ID = struct.Struct("<Q")
_OFF_SOCK_ID = abi.ZtEvent.sock_id.offset
_OFF_SYSCALL = abi.ZtEvent.syscall.offset
_OFF_FLAGS = abi.ZtEvent.flags.offset
_OFF_TYPE = abi.ZtEvent.type.offset
_OFF_ROLE = abi.ZtEvent.role.offset
_sock_key = operator.itemgetter(slice(_OFF_SOCK_ID, _OFF_SOCK_ID + 8))
_OPENS = (abi.SYS_CONNECT, abi.SYS_ACCEPT, abi.SYS_ACCEPT4)
_OPEN_BY_ROLE = {abi.ROLE_CLIENT: abi.SYS_CONNECT, abi.ROLE_SERVER: abi.SYS_ACCEPT}


def is_libssl(path: str) -> bool:
    """A libssl shared object by its file name (libssl.so, libssl.so.1.1, libssl.so.3)."""
    base = os.path.basename(path)
    return base.startswith("libssl.so")


def mapped_libssl(pid: int) -> list[str]:
    """Paths of the libssl files process pid maps, as seen from here (through
    /proc/PID/root, so a container's own library is the one named)."""
    out: list[str] = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and "x" in parts[1]:
                    path = parts[5].strip()
                    if is_libssl(path) and path.startswith("/"):
                        p = f"/proc/{pid}/root{path}"
                        if p not in out:
                            out.append(p)
    except OSError:
        pass
    return out


def system_libssl() -> list[str]:
    """The host's libssl files (ldconfig's cache), so processes started later that load
    the system library are covered before they do."""
    out: list[str] = []
    try:
        text = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        if "=>" in line and line.strip().startswith("libssl.so") and "x86-64" in line:
            path = line.split("=>", 1)[1].strip()
            real = os.path.realpath(path)
            if real not in out and os.path.exists(real):
                out.append(real)
    return out


def exported_symbols(path: str) -> set[str]:
    """Those of SSL_SYMBOLS that path's dynamic symbol table defines (a stripped
    libssl.so keeps .dynsym: that is what dynamic linking reads)."""
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            dynsym = ELFFile(f).get_section_by_name(".dynsym")
            if dynsym is None:
                return set()
            return {s.name for s in dynsym.iter_symbols()
                    if s.name in SSL_SYMBOLS and s["st_shndx"] != "SHN_UNDEF"}
    except Exception:  # noqa: BLE001 - not an ELF file, unreadable: no symbols
        return set()


def display_path(path: str) -> str:
    """/proc/PID/root/usr/lib/... said as "/usr/lib/... (root of PID)"."""
    parts = path.split("/", 4)
    if path.startswith("/proc/") and len(parts) == 5 and parts[3] == "root":
        return f"/{parts[4]} (root of pid {parts[2]})"
    return path


@dataclass
class TlsLibrary:
    """One distinct libssl file with probes (or why not)."""

    path: str
    key: tuple[int, int]  # (st_dev, st_ino)
    symbols: list[str] = field(default_factory=list)
    error: str = ""
    pids: set[int] = field(default_factory=set)


class TlsAttacher:
    """Attaches bpf/tls.c's uprobes to each distinct libssl file once."""

    def __init__(self, bpf) -> None:
        self.bpf = bpf
        self.libraries: dict[tuple[int, int], TlsLibrary] = {}
        # Go executables (crypto/tls is linked into each): probes per file, offsets per
        # process, detached when the file's last process exits
        self.go = gotls.GoTlsAttacher(bpf)
        self._seen_pids: set[int] = set()
        self._next_scan = 0.0

    def attach_file(self, path: str, pid: int = 0) -> TlsLibrary | None:
        try:
            st = os.stat(path)
        except OSError as e:
            log.debug("libssl %s: %s", path, e)
            return None
        key = (st.st_dev, st.st_ino)
        lib = self.libraries.get(key)
        if lib is None:
            lib = self.libraries[key] = TlsLibrary(path, key)
            self._attach(lib)
        if pid:
            lib.pids.add(pid)
        return lib

    def _attach(self, lib: TlsLibrary) -> None:
        name = lib.path.encode()
        done: list[str] = []
        try:
            for sym, fn in SSL_SYMBOLS.items():
                try:
                    self.bpf.attach_uprobe(name=name, sym=sym.encode(), fn_name=fn.encode())
                except Exception:  # bcc raises bare Exception: symbol absent (1.0.x has no _ex)
                    if sym.endswith("_ex"):
                        continue
                    raise
                try:
                    self.bpf.attach_uretprobe(name=name, sym=sym.encode(),
                                              fn_name=RETURN_PROGRAM.encode())
                except Exception:
                    self.bpf.detach_uprobe(name=name, sym=sym.encode())
                    raise
                done.append(sym)
        except Exception as e:  # all or none: an entry without its return leaks state
            for sym in done:
                self.bpf.detach_uprobe(name=name, sym=sym.encode())
                self.bpf.detach_uretprobe(name=name, sym=sym.encode())
            lib.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("TLS: %s not followed: %s", lib.path, lib.error)
            return
        lib.symbols = done
        log.info("TLS: uprobes on %s (%s)", lib.path, ", ".join(done))

    def scan(self, pids: set[int] | None = None, force: bool = False) -> int:
        """Attach to the libssl of processes not scanned before (every RESCAN_S at most
        unless force); returns how many libraries have probes."""
        now = time.monotonic()
        if not force and now < self._next_scan:
            return self.attached()
        self._next_scan = now + RESCAN_S
        try:
            names = os.listdir("/proc")
        except OSError:
            names = []
        me = os.getpid()
        alive: set[int] = set()
        for n in names:
            if not n.isdigit():
                continue
            pid = int(n)
            if pid == me or (pids and pid not in pids):
                continue
            alive.add(pid)
            # every scan: a process seen before its exec runs another executable now
            try:
                self.go.consider(pid)
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception; never fatal
                log.warning("Go TLS: pid %d: %s", pid, e)
            if pid in self._seen_pids:
                continue
            self._seen_pids.add(pid)
            for path in mapped_libssl(pid):
                self.attach_file(path, pid)
        self.go.prune(alive)
        return self.attached()

    def attached(self) -> int:
        return sum(1 for lib in self.libraries.values() if lib.symbols)

    def reattach_all(self) -> None:
        """Attach again every library detach_all detached (benchmarks' traced rounds)."""
        for lib in self.libraries.values():
            if not lib.symbols and not lib.error:
                self._attach(lib)
        self.go.reattach_all()

    def detach_all(self) -> None:
        for lib in self.libraries.values():
            name = lib.path.encode()
            for sym in lib.symbols:
                for detach in (self.bpf.detach_uprobe, self.bpf.detach_uretprobe):
                    try:
                        detach(name=name, sym=sym.encode())
                    except Exception:  # noqa: BLE001 - best effort at shutdown
                        pass
            lib.symbols = []
        self.go.detach_all()


def _with_sock_id(rec: bytes, sock_id: int, syscall: int | None = None) -> bytes:
    """A copy of the event record rec naming sock_id (and, given, another syscall, with
    no flags: the plaintext connection learns its base seqs per direction)."""
    out = bytearray(rec)
    _SOCK_ID.pack_into(out, _OFF_SOCK_ID, sock_id)
    if syscall is not None:
        out[_OFF_SYSCALL] = syscall
        out[_OFF_FLAGS] = 0
    return bytes(out)


class TlsStream:
    """Rewrites the ring's raw records for the pipeline (see the module docstring);
    works on bytes, before decoding, so it does not depend on how events decode.

    Cheap when nothing is to be done, as TLS is on by default: a batch is walked record
    by record (~0.3-0.5 us a record) only when the kernel's mark counter moved (a new
    TLS connection in it) or a record of a TLS socket is in it (a close, or ciphertext
    written outside OpenSSL); otherwise the only per-record work is one slice and set
    lookup in C loops, and none at all while no TLS connection is open."""

    def __init__(self) -> None:
        self.tls_socks: set[bytes] = set()  # sock_id fields (real sk) of TLS connections
        self.stats: Counter = Counter()
        self._marks = 0

    def rewrite(self, records: list[bytes], marks: int | None = None) -> list[bytes]:
        """records with marks consumed, ciphertext of TLS sockets dropped, sk|1 opened
        and closed; `marks` is the kernel's mark counter (None: walk every record)."""
        if marks is not None and marks == self._marks:
            socks = self.tls_socks
            if not socks:
                return records
            # the kernel emits no ciphertext made inside SSL calls: a hit here is a close
            # (or a write outside OpenSSL), and rare
            if socks.isdisjoint(map(_sock_key, records)):  # C loops: ~50-100 ns a record
                return records
        if marks is not None:
            self._marks = marks
        return self._walk(records)

    def _walk(self, records: list[bytes]) -> list[bytes]:
        socks = self.tls_socks
        out: list[bytes] = []
        add = out.append
        stats = self.stats
        size = abi.EVENT_SIZE
        lo, hi = _OFF_SOCK_ID, _OFF_SOCK_ID + 8
        for r in records:
            if len(r) < size:  # a Go wake record
                add(r)
                continue
            key = r[lo:hi]
            typ = r[_OFF_TYPE]
            if typ == abi.EV_CONN:
                sys_ = r[_OFF_SYSCALL]
                if sys_ == SYS_TLS_MARK:
                    socks.add(key)
                    stats["tls_connections"] += 1
                    op = _OPEN_BY_ROLE.get(r[_OFF_ROLE])
                    if op is None:  # started before the agent: its handshake missed
                        stats["tls_connections_midstream"] += 1
                    else:
                        add(_with_sock_id(r, _SOCK_ID.unpack(key)[0] | 1, op))
                    continue
                add(r)
                if key in socks:
                    if sys_ in (abi.SYS_CLOSE, abi.SYS_STATE_CLOSE):
                        add(_with_sock_id(r, _SOCK_ID.unpack(key)[0] | 1))
                        socks.discard(key)
                    elif sys_ in _OPENS:
                        # a new connection at the address of one whose close was lost:
                        # clear text until a mark says otherwise
                        socks.discard(key)
            elif r[_OFF_FLAGS] & F_TLS:
                add(r)
            elif key in socks:
                # ciphertext of a TLS connection: its plaintext comes on sk|1
                stats["tls_ciphertext_events_dropped"] += 1
            else:
                add(r)
        return out
