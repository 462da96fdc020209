"""TLS plaintext from OpenSSL (bpf/tls.c: libssl.so, or linked into an executable) and
Go crypto/tls (bpf/gotls.c, agent/probes/gotls.py): finding libssl, executables with
OpenSSL linked in and Go executables, attaching their uprobes once per distinct file,
the exec hook that stops a new executable's first process until it is probed
(ExecHook), per-process counters for Prometheus (TlsCollector), and turning the
probes' records into what the pipeline expects.

Uprobes live on a file (its inode), not on a process: once a libssl.so file has its
probes, every process mapping that file, now or later, is traced.  So the agent
attaches the system's libssl at start and, for libraries of other files (containers
bring their own, an upgrade on disk makes a new inode), rescans processes it has not
seen yet every few seconds; executables are looked at by the scan and, at exec, by
the exec hook.

In the event stream: plaintext events come on the pseudo-socket sk|1, flagged F_TLS;
the first time a socket is seen inside an SSL call a mark record (EV_CONN,
SYS_TLS_MARK) precedes its ciphertext.  `TlsStream.rewrite` drops the marks and the
ciphertext of marked sockets (counted), opens sk|1 as a connection of the role the
kernel saw (connect/accept), and closes it when sk closes.
"""

from __future__ import annotations

import ctypes as ct
import logging
import operator
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from agent.probes import abi, gotls

log = logging.getLogger(__name__)

SYS_TLS_MARK = 32  # bpf/tls.c ZT_SYS_TLS_MARK
F_TLS = abi.F_TLS  # bpf/abi.h ZT_F_TLS
# (symbol, entry program); each gets the return program zt_ssl_ret too, but writes
# (site_programs)
SSL_SYMBOLS = {
    "SSL_write": "zt_ssl_write",
    "SSL_write_ex": "zt_ssl_write_ex",
    "SSL_read": "zt_ssl_read",
    "SSL_read_ex": "zt_ssl_read_ex",
    "SSL_do_handshake": "zt_ssl_handshake",
}
RETURN_PROGRAM = "zt_ssl_ret"
# Writes get no return probe (bpf/tls.c ZT_TLS_NORET: the plaintext is emitted at the
# call's first application-data syscall, a retry or a partial write's rest recognised
# there): one trap a write instead of two.  "1" here: the return probe as before (the
# entry programs with the "_r" suffix), for comparison (bench/bench_tls.py).
WRITE_RETURN_ENV = "ZEROTRACE_TLS_WRITE_RETURN"
WRITE_PROGRAMS = {"zt_ssl_write", "zt_ssl_write_ex"}


def site_programs(entry: str, write_return: bool = False) -> tuple[str, str | None]:
    """(entry program, return program or None) of a site whose entry program is
    `entry` in the default design."""
    if entry in WRITE_PROGRAMS:
        return (entry + "_r", RETURN_PROGRAM) if write_return else (entry, None)
    return entry, RETURN_PROGRAM

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


# libssl.so, libssl.so.3, libssl.so.1.1, and the copies wheels bundle under a hashed
# name (auditwheel: psycopg-binary's libssl-6a9b88ec.so.3); not NSS's libssl3.so
_LIBSSL_NAME = re.compile(r"^libssl(-[0-9a-f]{8})?\.so(\.|$)")


def is_libssl(path: str) -> bool:
    """A libssl shared object by its file name (libssl.so, libssl.so.1.1, libssl.so.3,
    a wheel's libssl-<hash>.so.3)."""
    return _LIBSSL_NAME.match(os.path.basename(path)) is not None


def mapped_libssl(pid: int) -> list[str]:
    """Paths of the libssl files process pid maps, as seen from here (through
    /proc/PID/root, so a container's own library is the one named; the plain path when
    the process shares the agent's root: it outlives the process, and bcc opens the
    path again to detach and attach)."""
    out: list[str] = []
    try:
        root = os.stat(f"/proc/{pid}/root")
        mine = os.stat("/")
        prefix = "" if (root.st_dev, root.st_ino) == (mine.st_dev, mine.st_ino) \
            else f"/proc/{pid}/root"
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and "x" in parts[1]:
                    path = parts[5].strip()
                    if is_libssl(path) and path.startswith("/"):
                        p = f"{prefix}{path}"
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


def static_ssl_symbols(path: str) -> set[str]:
    """Those of SSL_SYMBOLS that the executable at path defines itself (OpenSSL or
    BoringSSL linked statically), from .symtab or .dynsym; empty for a program that
    imports them from libssl.so, or is stripped of both."""
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.elfclass != 64 or not elf.little_endian:
                return set()
            found: set[str] = set()
            for name in (".symtab", ".dynsym"):
                tab = elf.get_section_by_name(name)
                if tab is None:
                    continue
                strtab = elf.get_section(tab["sh_link"]).data()
                # the names' offsets in the string table (C-speed searches), then the
                # 24-byte Elf64_Sym entries naming them (pyelftools' per-symbol objects
                # take ~1 s for a program with OpenSSL linked in)
                names = {}
                for sym in SSL_SYMBOLS:
                    at = strtab.find(b"\0" + sym.encode() + b"\0")
                    if at >= 0:
                        names[at + 1] = sym
                if "SSL_read" not in names.values():
                    continue
                for st_name, info, _o, shndx, value, _sz in _ELF64_SYM.iter_unpack(
                        tab.data()[:len(tab.data()) // 24 * 24]):
                    # defined (st_shndx != SHN_UNDEF), a function (STT_FUNC = 2)
                    if st_name in names and shndx and info & 0xF == 2 and value:
                        found.add(names[st_name])
            return found
    except Exception:  # noqa: BLE001 - not an ELF file, unreadable: no symbols
        return set()


_ELF64_SYM = struct.Struct("<IBBHQQ")


# OpenSSL >= 1.1.1: SSL_read and SSL_read_ex are thin wrappers over one internal
# function, ssl_read_internal(s, buf, num, size_t *readbytes) (>0: success, the bytes in
# *readbytes), and SSL_write/SSL_write_ex over ssl_write_internal, same shape.  Their
# probes go there when the code says so (inner_functions): one pair of probes instead
# of two, and, what matters most, on an instruction the kernel emulates.  A uprobe on
# an instruction it cannot emulate (SSL_read's first, `sub $0x18,%rsp`) single-steps
# it out of line: a debug trap, which a hypervisor intercepts (KVM always does, #DB):
# ~12 us a hit on the development VM against ~1-2 us for an emulated `push` (the
# internal functions' first instruction), docs/tls.md "Cost".
INNER = {"read": ("SSL_read_ex", "SSL_read"), "write": ("SSL_write_ex", "SSL_write")}
INNER_PROGRAM = {"read": "zt_ssl_read_ex", "write": "zt_ssl_write_ex"}
_EM_X86_64 = 62


def _wrapped_target(code: bytes, addr: int) -> int | None:
    """The direct target of a wrapper that passes its four argument registers on
    untouched: from the entry only endbr64, push reg and sub $imm,%rsp (none writes
    rdi, rsi, rdx or rcx), then a direct call or jmp.  None for any other code (a
    decoder is not needed: anything not in this short list refuses)."""
    i = 0
    for _ in range(8):
        b = code[i:i + 7]
        if len(b) < 5:
            return None
        if b[:4] == b"\xf3\x0f\x1e\xfa":               # endbr64
            i += 4
        elif b[:3] == b"\x48\x83\xec":                  # sub $imm8,%rsp
            i += 4
        elif b[:3] == b"\x48\x81\xec":                  # sub $imm32,%rsp
            i += 7
        elif 0x50 <= b[0] <= 0x57:                       # push %rax..%rdi
            i += 1
        elif b[0] == 0x41 and 0x50 <= b[1] <= 0x57:      # push %r8..%r15
            i += 2
        elif b[0] in (0xE8, 0xE9):                       # call/jmp rel32
            return addr + i + 5 + int.from_bytes(b[1:5], "little", signed=True)
        else:
            return None
    return None


def _elf_functions(path: str, names: set[str]) -> tuple[dict[str, tuple[int, int]], list]:
    """({name: (address, size)} of the defined functions among names, from .symtab
    then .dynsym; the executable sections as (start, end, name)).  Empty for an ELF
    file that is not x86-64."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.elfclass != 64 or not elf.little_endian or elf["e_machine"] != "EM_X86_64":
            return {}, []
        found: dict[str, tuple[int, int]] = {}
        for tab_name in (".symtab", ".dynsym"):
            tab = elf.get_section_by_name(tab_name)
            if tab is None:
                continue
            strtab = elf.get_section(tab["sh_link"]).data()
            where = {}
            for name in names - found.keys():
                at = strtab.find(b"\0" + name.encode() + b"\0")
                if at >= 0:
                    where[at + 1] = name
            data = tab.data()
            for st_name, info, _o, shndx, value, size in _ELF64_SYM.iter_unpack(
                    data[:len(data) // 24 * 24]):
                if st_name in where and shndx and info & 0xF == 2 and value:
                    found.setdefault(where[st_name], (value, size))
        execs = [(sec["sh_addr"], sec["sh_addr"] + sec["sh_size"], sec.name)
                 for sec in elf.iter_sections() if sec["sh_flags"] & 0x4]  # SHF_EXECINSTR
        return found, execs


def inner_functions(path: str) -> dict[str, int]:
    """{"read": address, "write": address} of the internal functions SSL_*_ex and
    SSL_* both go through (OpenSSL >= 1.1.1; see INNER), for those the code proves:
    SSL_read_ex hands its four arguments unchanged to a function in the file's own code
    (not a PLT stub), and SSL_read calls that same function.  A direction left out
    keeps its probes on the public symbols (OpenSSL 1.0, BoringSSL, a build where the
    wrapper does more, no decoder for the check)."""
    wanted = {n for pair in INNER.values() for n in pair}
    try:
        syms, execs = _elf_functions(path, wanted)
    except Exception:  # noqa: BLE001 - not an ELF file, unreadable: the public symbols
        return {}
    out: dict[str, int] = {}
    for kind, (ex, plain) in INNER.items():
        if ex not in syms or plain not in syms:
            continue
        try:
            ex_addr, _ = syms[ex]
            target = _wrapped_target(gotls._code(path, ex_addr, 64), ex_addr)
            if target is None or target in (syms[ex][0], syms[plain][0]):
                continue
            if not any(lo <= target < hi and not name.startswith(".plt")
                       for lo, hi, name in execs):
                continue
            addr, size = syms[plain]
            if not 0 < size <= 4096:
                continue
            calls = [ops for _a, mnemonic, ops in gotls.decode(gotls._code(path, addr, size),
                                                                addr)
                     if mnemonic.rstrip("q") in ("call", "jmp")]
            if not any(ops.split()[0] == f"{target:#x}" for ops in calls if ops):
                continue
        except Exception as e:  # noqa: BLE001 - no decoder, odd code: the public symbols
            log.debug("TLS: %s %s: public symbols (%s)", path, kind, e)
            continue
        out[kind] = target
    return out


def first_instruction(path: str, addr: int) -> bytes:
    """The first bytes at addr (for the log: whether the kernel emulates the probed
    instruction)."""
    try:
        return gotls._code(path, addr, 4)
    except Exception:  # noqa: BLE001 - for a log line only
        return b""


def kernel_dev(st_dev: int) -> int:
    """A stat() device number in the kernel's internal encoding (MAJOR << 20 | MINOR),
    the one bpf/tls.c's exec hook reads from the superblock."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


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
    static: bool = False  # an executable with OpenSSL/BoringSSL linked in
    shown_as: str = ""    # static: the executable's path as its process names it
    fd: int = -1          # static: a descriptor held on it (path is /proc/<agent>/fd/N)
    # where the probes are: (symbol, 0) or ("", address of an internal function)
    sites: list[tuple[str, int]] = field(default_factory=list)
    inner: dict[str, int] = field(default_factory=dict)  # inner_functions() probed


class TlsAttacher:
    """Attaches bpf/tls.c's uprobes to each distinct libssl file once."""

    def __init__(self, bpf) -> None:
        self.bpf = bpf
        self.libraries: dict[tuple[int, int], TlsLibrary] = {}
        # Go executables (crypto/tls is linked into each): probes per file, offsets per
        # process, detached when the file's last process exits
        self.go = gotls.GoTlsAttacher(bpf)
        self.go.on_detach = self._go_detached
        self._seen_pids: set[int] = set()
        self._next_scan = 0.0
        # executables looked at for static OpenSSL/BoringSSL, by (st_dev, st_ino)
        self._exes: set[tuple[int, int]] = set()
        # scan (poll loop) and the exec hook's thread both attach: one at a time
        self.lock = threading.RLock()
        self.exec_hook: ExecHook | None = None
        self.paused = False  # detach_all (benchmarks' untraced rounds): the hook waits
        self.closed = False  # close(): probes detached, the map's module about to go
        self._procs = _ProcessCounters()
        # probes on OpenSSL's internal read/write functions when proved (INNER); off:
        # the public symbols (benchmarks compare both)
        self.inner = os.environ.get(INNER_ENV, "1") != "0"
        self.write_return = os.environ.get(WRITE_RETURN_ENV, "0") == "1"
        if os.environ.get(EXEC_ENV, "1") != "0":
            try:
                self.exec_hook = ExecHook(self)
            except Exception as e:  # noqa: BLE001 - old kernel, bcc: the scan alone
                log.warning("TLS: no exec hook (%s): short-lived processes of Go "
                            "executables not seen before are missed", e)

    def attach_file(self, path: str, pid: int = 0) -> TlsLibrary | None:
        with self.lock:  # the exec hook's thread attaches too
            return self._attach_file(path, pid)

    def _attach_file(self, path: str, pid: int) -> TlsLibrary | None:
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
        inner = inner_functions(lib.path) if self.inner else {}
        # (symbol, address, entry program, optional): the internal function of a
        # direction when proved, else its public symbols (1.0.x has no _ex)
        plan: list[tuple[str, int, str, bool]] = []
        for kind, (ex, plain) in INNER.items():
            if kind in inner:
                plan.append(("", inner[kind], INNER_PROGRAM[kind], False))
            else:
                plan += [(plain, 0, SSL_SYMBOLS[plain], False), (ex, 0, SSL_SYMBOLS[ex], True)]
        plan.append(("SSL_do_handshake", 0, SSL_SYMBOLS["SSL_do_handshake"], False))
        done: list[tuple[str, int]] = []
        try:
            for sym, addr, fn, optional in plan:
                where = {"sym": sym.encode()} if sym else {"addr": addr}
                fn, ret_fn = site_programs(fn, self.write_return)
                try:
                    self.bpf.attach_uprobe(name=name, fn_name=fn.encode(), **where)
                except Exception:  # bcc raises bare Exception: symbol absent
                    if optional:
                        continue
                    raise
                try:
                    if ret_fn:
                        self.bpf.attach_uretprobe(name=name, fn_name=ret_fn.encode(),
                                                  **where)
                except Exception:
                    self.bpf.detach_uprobe(name=name, **where)
                    raise
                done.append((sym, addr))
        except Exception as e:  # all or none: an entry without its return leaks state
            self._detach_sites(name, done)
            lib.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("TLS: %s not followed: %s", lib.path, lib.error)
            return
        lib.sites = done
        lib.inner = inner
        # the public functions followed (SSL_read_ex through the internal function
        # only when the file has it: inner_functions checked both names)
        lib.symbols = [s for s in SSL_SYMBOLS
                       if any(s == sym for sym, _a in done)
                       or any(s in INNER[k] for k in inner)]
        kinds = {a: k for k, a in inner.items()}
        log.info("TLS: uprobes on %s%s (%s)", lib.shown_as or lib.path,
                 " (OpenSSL linked in)" if lib.static else "",
                 ", ".join(sym or f"internal {kinds[a]} at {a:#x}" for sym, a in done))

    def _detach_sites(self, name: bytes, sites: list[tuple[str, int]]) -> None:
        for sym, addr in sites:
            where = {"sym": sym.encode()} if sym else {"addr": addr}
            for detach in (self.bpf.detach_uprobe, self.bpf.detach_uretprobe):
                try:
                    detach(name=name, **where)
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    pass

    def attach_exe(self, pid: int) -> TlsLibrary | None:
        """Probe process pid's executable when it defines SSL_read/SSL_write itself
        (OpenSSL or BoringSSL linked statically); each distinct file once."""
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        lib = self.libraries.get(key)
        if lib is not None or key in self._exes:
            if lib is not None:
                lib.pids.add(pid)
            return lib
        self._exes.add(key)
        try:
            fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        # through a descriptor held on the file: the same inode after the process exits
        path = f"/proc/{os.getpid()}/fd/{fd}"
        syms = static_ssl_symbols(path)
        if not {"SSL_read", "SSL_write"} <= syms:
            os.close(fd)
            return None
        try:
            shown = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            shown = path
        lib = self.libraries[key] = TlsLibrary(path, key, static=True, shown_as=shown, fd=fd)
        self._attach(lib)
        lib.pids.add(pid)
        return lib

    def _go_detached(self, b) -> None:
        if self.exec_hook is not None:
            self.exec_hook.forget(b.key)

    def inspect_exe(self, pid: int):
        """Look at process pid's executable: Go crypto/tls or static OpenSSL probes, as
        it needs.  Returns the Go binary followed (gotls.GoTlsBinary), or None."""
        try:
            self.go.consider(pid)
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception; never fatal
            log.warning("Go TLS: pid %d: %s", pid, e)
        b = self.go.binary_of(pid)
        if b is None:
            self.attach_exe(pid)
        return b

    def scan(self, pids: set[int] | None = None, force: bool = False) -> int:
        """Attach to the libssl of processes not scanned before (every RESCAN_S at most
        unless force); returns how many libraries have probes.  Skipped (tried at the
        next poll) while the exec hook's thread is attaching."""
        now = time.monotonic()
        if not force and now < self._next_scan:
            return self.attached()
        if not self.lock.acquire(blocking=force):
            return self.attached()
        try:
            self._next_scan = now + RESCAN_S
            return self._scan(pids)
        finally:
            self.lock.release()

    def _scan(self, pids: set[int] | None) -> int:
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
            if self.go.binary_of(pid) is None:
                self.attach_exe(pid)  # OpenSSL/BoringSSL linked into the executable
            for path in mapped_libssl(pid):
                self.attach_file(path, pid)
            if self.exec_hook is not None:  # its next exec needs no hold
                self.exec_hook.learn(pid, self.go.binary_of(pid))
        self._seen_pids &= alive
        self.go.prune(alive)
        return self.attached()

    def process_counters(self) -> dict[str, dict[tuple[str, ...], int]]:
        """Per-process TLS counters for Prometheus (TlsCollector): plaintext bytes by
        (process, direction), connections and handshakes missed by (process,); and the
        exec hook's outcomes by (event,)."""
        # after close() the map's module is freed: a scrape then reads the last totals
        out = self._procs.read(None if self.closed else self.bpf)
        hook = self.exec_hook
        if hook is not None:
            out["exec_events"] = {(k,): v for k, v in hook.stats.items()
                                  if k != "held_ms_max"}
        return out

    def close(self) -> None:
        """Stop the exec hook (continuing what it holds), detach every probe, let go of
        the files held open."""
        if self.closed:
            return
        self.closed = True
        if self.exec_hook is not None:
            self.exec_hook.close()
            self.exec_hook = None
        with self.lock:
            self.detach_all()
            self.go.close()
            for lib in self.libraries.values():
                if lib.fd >= 0:
                    os.close(lib.fd)
                    lib.fd = -1

    def attached(self) -> int:
        return sum(1 for lib in self.libraries.values() if lib.symbols)

    def reattach_all(self) -> None:
        """Attach again every library detach_all detached (benchmarks' traced rounds)."""
        with self.lock:
            self.paused = False
            for lib in self.libraries.values():
                if not lib.symbols and not lib.error:
                    self._attach(lib)
            self.go.reattach_all()

    def detach_all(self) -> None:
        with self.lock:
            self._detach_all()

    def _detach_all(self) -> None:
        self.paused = True
        for lib in self.libraries.values():
            self._detach_sites(lib.path.encode(), lib.sites)
            lib.symbols, lib.sites = [], []
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


# -- the exec hook (bpf/tls.c zt_tls_exec) ---------------------------------------------
HOLD_ENV = "ZEROTRACE_TLS_HOLD"  # "1": stop a new executable until probed (default off)
EXEC_ENV = "ZEROTRACE_TLS_EXEC"  # "0": no exec hook (the 2 s scan alone)
INNER_ENV = "ZEROTRACE_TLS_INNER"  # "0": OpenSSL probes on the public symbols only
HOLD_MAX_S = 5.0  # a held process is continued after this even if the look goes on
_EXEC_EVENT = struct.Struct("<QIIBB6x")  # struct zt_exec_event: ino, dev, pid, held, go
# struct zt_exec_cfg's offsets: field -> (struct, member path) in the kernel's BTF
_EXEC_OFFSETS = {
    "bprm_file": ("linux_binprm", "file"),
    "inode_ino": ("inode", "i_ino"),
    "inode_sb": ("inode", "i_sb"),
    "sb_dev": ("super_block", "s_dev"),
    "task_mm": ("task_struct", "mm"),
    "mm_start_code": ("mm_struct", "start_code"),
    "task_nsproxy": ("task_struct", "nsproxy"),
    "nsproxy_net": ("nsproxy", "net_ns"),
}
# programs the agent runs itself (and waits for): never stopped
_OWN_TOOLS = ("objdump", "ldconfig")


def exec_offsets() -> dict[str, int]:
    """_EXEC_OFFSETS in the running kernel (cached on disk by BTF content)."""
    import hashlib
    import json

    from agent.probes import btf

    with open(btf.VMLINUX_BTF, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob + json.dumps(_EXEC_OFFSETS, sort_keys=True).encode())
    cache = os.path.join(btf.CACHE_DIR, f"tls-exec-{digest.hexdigest()[:16]}.json")
    try:
        with open(cache) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    b = btf.BTF(blob)
    out = {k: b.offset(s, path) for k, (s, path) in _EXEC_OFFSETS.items()}
    try:
        os.makedirs(btf.CACHE_DIR, exist_ok=True)
        with open(cache + f".{os.getpid()}", "w") as f:
            json.dump(out, f)
        os.replace(cache + f".{os.getpid()}", cache)
    except OSError:
        pass
    return out


class ExecHook:
    """Every exec of a file the agent has not looked at yet: look at it (Go crypto/tls,
    OpenSSL linked in), attach, and only then let the process run.

    bpf/tls.c's zt_tls_exec stops such a process (SIGSTOP, before its first user
    instruction) while this thread's heartbeat is recent, and reports it on the ring
    tls_execs; this thread looks at the file under the attacher's lock, writes what it
    learnt into tls_exec_known (later processes of the file are not stopped; a Go file's
    get their offsets in the kernel), and sends SIGCONT, at the latest after HOLD_MAX_S.
    The agent's own tools are known from the start (it waits for them: never stopped).
    A parent that waits with WUNTRACED (an interactive shell's job control) sees the
    stop: it happens once per distinct executable.  Holding is opt-in
    (ZEROTRACE_TLS_HOLD=1): a shell's job control sees it, and a process held when the
    agent is SIGKILLed stays stopped; without it new files are looked at while their
    first process runs (a client that exits within ~50 ms is then missed once)."""

    def __init__(self, attacher: TlsAttacher, hold: bool | None = None) -> None:
        from bcc import BPF, lib

        self.a, self.bpf = attacher, attacher.bpf
        self.hold = hold if hold is not None else os.environ.get(HOLD_ENV, "0") == "1"
        self.stats: Counter = Counter()
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._records: list[bytes] = []
        self._stop = threading.Event()
        self._known: set[tuple[int, int]] = set()  # kernel keys written to tls_exec_known
        self._kkeys: dict[tuple[int, int], set[tuple[int, int]]] = {}  # stat key -> those
        self._text: dict[tuple[int, int], int] = {}
        # tables looked up once: after the probes' cleanup a look-up would need the
        # freed module (the thread then stops on its next turn)
        self._t_cfg = self.bpf[b"tls_exec_cfg"]
        self._t_known = self.bpf[b"tls_exec_known"]
        self._t_goprocs = self.bpf[b"gotls_procs"]
        self._cfg = self._t_cfg.Leaf()
        for k, v in exec_offsets().items():
            setattr(self._cfg, k, v)
        self._cfg.hold = 1 if self.hold else 0
        for tool in _OWN_TOOLS:
            self._know_file(shutil.which(tool) or f"/sbin/{tool}")
        self._beat()
        fn = self.bpf.load_func(b"zt_tls_exec", BPF.RAW_TRACEPOINT)
        self._cb = _RINGBUF_CB(self._on_record)  # referenced: libbpf calls it
        self._rb = lib.bpf_new_ringbuf(lib.bpf_table_fd(self.bpf.module, b"tls_execs"),
                                       self._cb, None)
        if not self._rb:
            raise RuntimeError("cannot open the ring tls_execs")
        self._fd = lib.bpf_attach_raw_tracepoint(fn.fd, b"sched_process_exec")
        if self._fd < 0:
            lib.bpf_free_ringbuf(self._rb)
            raise RuntimeError("cannot attach to the raw tracepoint sched_process_exec")
        self._thread = threading.Thread(target=self._run, name="zt-tls-exec", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._cfg.heartbeat_ns = time.monotonic_ns()  # bpf_ktime_get_ns's clock
        self._t_cfg[ct.c_int(0)] = self._cfg

    def _on_record(self, _ctx, data, size) -> int:
        raw = ct.string_at(data, size)
        self._records.append(raw)
        if len(raw) >= _EXEC_EVENT.size and raw[16]:  # held: continued in HOLD_MAX_S
            pid = _EXEC_EVENT.unpack_from(raw)[2]
            with self._held_lock:
                self._held.add(pid)
            t = threading.Timer(HOLD_MAX_S, self._cont, (pid, True))
            t.daemon = True
            t.start()
        return 0

    def _cont(self, pid: int, late: bool = False) -> None:
        with self._held_lock:
            if pid not in self._held:
                return
            self._held.discard(pid)
        if late:
            self.stats["held_timeout"] += 1
            log.warning("TLS exec hook: pid %d continued after %.0f s, its executable "
                        "still being looked at", pid, HOLD_MAX_S)
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass

    def _run(self) -> None:
        from bcc import lib

        try:
            while not self._stop.is_set():
                if self.bpf.module is None:  # the probes were cleaned up under us
                    break
                self._beat()
                lib.bpf_poll_ringbuf(self._rb, 200)
                records, self._records = self._records, []
                for raw in records:
                    self._handle(raw)
        except Exception as e:  # noqa: BLE001 - the thread must end cleanly
            log.warning("TLS exec hook stopped: %s", e)
        finally:
            self._shutdown()

    def _handle(self, raw: bytes) -> None:
        ino, dev, pid, held, go = _EXEC_EVENT.unpack_from(raw)
        self.stats["execs_held" if held else ("execs_go" if go else "execs_seen")] += 1
        t0 = time.monotonic()
        try:
            with self.a.lock:
                if self.a.paused:
                    return
                if go:  # a followed Go file: offsets written by the kernel already
                    self.a.go.consider(pid)
                    if self.a.go.binary_of(pid) is None:  # gone before we looked
                        try:
                            del self._t_goprocs[ct.c_uint32(pid)]
                        except KeyError:
                            pass
                    return
                try:
                    st = os.stat(f"/proc/{pid}/exe")
                except OSError:
                    return  # exited before we looked: nothing learnt
                b = self.a.inspect_exe(pid)
                self._write_known((dev, ino), (st.st_dev, st.st_ino), b)
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception; never fatal
            log.warning("TLS exec hook: pid %d: %s", pid, e)
        finally:
            if held:
                self._cont(pid)
                ms = (time.monotonic() - t0) * 1000
                self.stats["held_ms_max"] = max(self.stats["held_ms_max"], round(ms))
                log.debug("TLS exec hook: pid %d held %.1f ms (%s)", pid, ms,
                          _exe_name(pid))

    def _write_known(self, kkey: tuple[int, int], skey: tuple[int, int], b) -> None:
        """Tell the kernel what the file at kkey needs at its next exec."""
        table = self._t_known
        k, v = table.Key(), table.Leaf()
        k.dev, k.ino = kkey
        if b is not None:
            leaf = self.a.go.leaf(b, 0)
            for name, _t in leaf._fields_:
                setattr(v.o, name, getattr(leaf, name))
            if b.key not in self._text:
                self._text[b.key] = gotls.text_vaddr(b.path)
            v.text_vaddr = self._text[b.key]
            v.go, v.pie = 1, 1 if b.facts.get("pie") else 0
        table[k] = v
        self._known.add(kkey)
        self._kkeys.setdefault(skey, set()).add(kkey)

    def _know_file(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        self._write_known((kernel_dev(st.st_dev), st.st_ino), (st.st_dev, st.st_ino), None)

    def learn(self, pid: int, b) -> None:
        """A running process's executable was looked at (by the scan): its next exec
        needs no hold (keyed as stat says; a file system whose kernel key differs costs
        one hold)."""
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return
        kkey = (kernel_dev(st.st_dev), st.st_ino)
        if kkey in self._known and b is None:
            return
        try:
            self._write_known(kkey, (st.st_dev, st.st_ino), b)
        except Exception as e:  # noqa: BLE001 - a full map, bcc's bare Exception
            log.debug("TLS exec hook: %s", e)

    def forget(self, skey: tuple[int, int]) -> None:
        """A file's probes were detached: its next process is held again."""
        table = self._t_known
        for kkey in self._kkeys.pop(skey, ()):
            self._known.discard(kkey)
            k = table.Key()
            k.dev, k.ino = kkey
            try:
                del table[k]
            except KeyError:
                pass

    def _shutdown(self) -> None:
        from bcc import lib

        if self._fd >= 0:
            os.close(self._fd)  # no more holds
            self._fd = -1
        with self._held_lock:
            held, self._held = list(self._held), set()
        for pid in held:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        if self._rb:
            lib.bpf_free_ringbuf(self._rb)
            self._rb = None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def _exe_name(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


_RINGBUF_CB = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_int)


# -- per-process counters for Prometheus -----------------------------------------------
MAX_PROCESS_LABELS = 32  # distinct process names; the rest count as "other"
_DIRECTIONS = ("egress", "ingress")  # bpf/abi.h ZT_DIR_*


class _ProcessCounters:
    """Monotonic per-process-name totals from bpf/tls.c's tls_procs (per tgid): each
    read adds what every live entry moved since the last read, and removes the entries
    of processes that exited (their totals stay)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int, int, int]] = {}
        self._names: set[str] = set()
        self._bytes: Counter = Counter()
        self._conns: Counter = Counter()
        self._midstream: Counter = Counter()
        self._lock = threading.Lock()

    def _label(self, comm: bytes) -> str:
        name = comm.split(b"\0", 1)[0].decode("utf-8", "replace") or "?"
        if name not in self._names:
            if len(self._names) >= MAX_PROCESS_LABELS:
                return "other"
            self._names.add(name)
        return name

    def read(self, bpf) -> dict[str, dict[tuple[str, ...], int]]:
        """The totals, brought up to date from the kernel's map (bpf None: the probes
        are gone, the totals as last read)."""
        with self._lock:
            if bpf is None:
                return self._totals()
            table = bpf[b"tls_procs"]
            gone = []
            for k, v in list(table.items()):
                pid = k.value
                cur = (v.bytes[0], v.bytes[1], v.conns, v.midstream)
                prev = self._last.get(pid, (0, 0, 0, 0))
                if any(c < p for c, p in zip(cur, prev, strict=True)):  # pid reused
                    prev = (0, 0, 0, 0)
                name = self._label(bytes(v.comm))
                for d in (0, 1):
                    self._bytes[(name, _DIRECTIONS[d])] += cur[d] - prev[d]
                self._conns[(name,)] += cur[2] - prev[2]
                self._midstream[(name,)] += cur[3] - prev[3]
                self._last[pid] = cur
                if not os.path.exists(f"/proc/{pid}"):
                    gone.append(k)
            for k in gone:
                self._last.pop(k.value, None)
                try:
                    del table[k]
                except KeyError:
                    pass
            return self._totals()

    def _totals(self) -> dict[str, dict[tuple[str, ...], int]]:
        return {"plaintext_bytes": dict(self._bytes), "connections": dict(self._conns),
                "connections_midstream": dict(self._midstream)}


class TlsCollector:
    """Prometheus collector over TlsAttacher.process_counters (registered by
    AgentMetrics.add_tls): zerotrace_tls_plaintext_bytes_total{process,direction},
    zerotrace_tls_connections_total{process} and
    zerotrace_tls_connections_midstream_total{process} (handshake missed: opened before
    the agent).  `process` is the process name (comm), at most MAX_PROCESS_LABELS
    distinct, the rest "other"."""

    _FAMILIES = {
        "plaintext_bytes": ("zerotrace_tls_plaintext_bytes",
                            "TLS plaintext bytes seen, per process and direction",
                            ["process", "direction"]),
        "connections": ("zerotrace_tls_connections",
                        "TLS connections seen, per process", ["process"]),
        "connections_midstream": ("zerotrace_tls_connections_midstream",
                                  "TLS connections whose handshake was missed (opened "
                                  "before the agent), per process", ["process"]),
        "exec_events": ("zerotrace_tls_exec_events",
                        "Execs the TLS exec hook handled: execs_held (stopped until "
                        "probed), held_timeout (continued before the look ended), "
                        "execs_go (Go offsets given in the kernel), execs_seen", ["event"]),
    }

    def __init__(self, counters) -> None:
        self.counters = counters

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        try:
            got = self.counters()
        except Exception:  # noqa: BLE001 - probes closing: never break the scrape
            return
        for key, (name, text, labels) in self._FAMILIES.items():
            fam = CounterMetricFamily(name, text, labels=labels)
            for lv, value in sorted(got.get(key, {}).items()):
                fam.add_metric(list(lv), value)
            yield fam
