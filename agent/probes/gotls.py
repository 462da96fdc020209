"""Go crypto/tls plaintext (bpf/gotls.c): which Go binaries can be followed, the facts
their probes need, attaching them once per distinct file and detaching them when no
process runs the file any more.

A Go program links crypto/tls statically: there is no library to find, the probes go
into each executable.  What they need, read once per file (cached by content):
- the Go version (the build info of the binary): the register ABI (Go >= 1.17 on
  amd64) puts the arguments in RAX, RBX, RCX and the current g in R14, which the probes
  read; older binaries are refused;
- the addresses of `crypto/tls.(*Conn).Write`, `Read`, `clientHandshake` and
  `serverHandshake` (the ELF symbol table) and of the itab that says an interface
  holds a *net.TCPConn;
- every RET instruction of Write and Read, found by disassembling their bytes (a
  uretprobe would corrupt goroutine stacks, which the runtime moves): capstone when it
  is installed, else binutils' objdump; both are complete x86-64 decoders, and Go puts
  no data inside function bodies, so a linear sweep from the symbol meets every
  instruction boundary;
- struct offsets from DWARF: tls.Conn.conn, .rawInput, .input and the handshake
  flag, TCPConn -> netFD -> poll.FD.Sysfd, bytes.Buffer's and bytes.Reader's fields.
A stripped binary (no DWARF) or one without crypto/tls gets no probes.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field

from agent.probes import golang
from agent.probes.btf import CACHE_DIR

log = logging.getLogger(__name__)

WRITE = "crypto/tls.(*Conn).Write"
READ = "crypto/tls.(*Conn).Read"
# where a handshake runs (c.handshakeFn): Read and Write call handshakeContext every
# time, these only when there is a handshake to do
HANDSHAKES = ("crypto/tls.(*Conn).clientHandshake", "crypto/tls.(*Conn).serverHandshake")
ITAB = "go.itab.*net.TCPConn,net.Conn"
ENTRY_PROGRAMS = {WRITE: "zt_gotls_write", READ: "zt_gotls_read"}
HANDSHAKE_PROGRAM = "zt_gotls_handshake"
RET_PROGRAM = "zt_gotls_ret"
# the same entry programs at the stack check's conditional jump (stack_check_jump)
AT_CHECK = {"zt_gotls_write": "zt_gotls_write_sc", "zt_gotls_read": "zt_gotls_read_sc",
            "zt_gotls_handshake": "zt_gotls_handshake_sc"}
MIN_VERSION = (1, 17)  # the register ABI on amd64
# a file's probes stay this long after its last process exited
DETACH_GRACE_S = float(os.environ.get("ZEROTRACE_GOTLS_DETACH_GRACE_S", "300"))
# bumped when the facts or how they are found change: older cached facts are not used
_FACTS_VERSION = 6
# (struct, member path) -> key of the offsets bpf/gotls.c's struct zt_gotls_offsets takes
_MEMBERS = {
    "conn_conn": ("crypto/tls.Conn", ("conn",)),
    "conn_rawinput": ("crypto/tls.Conn", ("rawInput",)),
    "tcpconn_fd": ("net.TCPConn", ("conn", "fd")),
    "netfd_sysfd": ("net.netFD", ("pfd", "Sysfd")),
    "buffer_buf": ("bytes.Buffer", ("buf",)),
    "buffer_off": ("bytes.Buffer", ("off",)),
    "conn_input": ("crypto/tls.Conn", ("input",)),
    "reader_s": ("bytes.Reader", ("s",)),
    "reader_i": ("bytes.Reader", ("i",)),
}
# helpers of the computation, not fields of struct zt_gotls_offsets
_NOT_FIELDS = ("buffer_buf", "conn_input", "reader_s", "reader_i")
# the handshake flag: a uint32 before Go 1.21, an atomic.Bool (its uint32 v) after
_HANDSHAKE_FLAGS = (("handshakeStatus",), ("isHandshakeComplete", "v"))
# parameters the probes read by register: (*Conn).Read/Write(c, b []byte)
_PARAMS = {WRITE: ("c", "b"), READ: ("c", "b")}


class GoTlsError(RuntimeError):
    """The binary's crypto/tls cannot be followed (why)."""


def go_version(path: str) -> str:
    """The Go version a binary was built with ("go1.19.8"), from its build info
    (.go.buildinfo); "" for a binary that is not Go."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".go.buildinfo")
        if sec is None:
            return ""
        data = sec.data()
        if len(data) < 32 or not data.startswith(b"\xff Go buildinf:"):
            return ""
        ptr_size, flags = data[14], data[15]
        if flags & 2:  # Go >= 1.18: the strings inline, each a varint length then bytes
            n, shift, i = 0, 0, 32
            while i < len(data):
                b = data[i]
                n |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            return data[i:i + n].decode("ascii", "replace")
        if ptr_size != 8:
            return ""
        # Go 1.13-1.17: a pointer to a Go string header (data pointer, length)
        hdr_addr = int.from_bytes(data[16:24], "little")
        hdr = _read_vaddr(elf, f, hdr_addr, 16)
        if len(hdr) < 16:
            return ""
        sptr, slen = int.from_bytes(hdr[:8], "little"), int.from_bytes(hdr[8:], "little")
        return _read_vaddr(elf, f, sptr, min(slen, 64)).decode("ascii", "replace")


# build settings that can change a standard library struct's layout
_LAYOUT_SETTINGS = ("-compiler", "-tags", "CGO_ENABLED", "GOARCH", "GOAMD64", "GOEXPERIMENT",
                    "GOOS")


def build_settings(path: str) -> str | None:
    """The build settings of a Go >= 1.18 binary that can change struct layouts
    ("GOARCH=amd64;GOEXPERIMENT=..."), from its build info; None when it has none
    (older Go, or unreadable)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".go.buildinfo")
        data = sec.data() if sec is not None else b""
    if len(data) < 32 or not data.startswith(b"\xff Go buildinf:") or not data[15] & 2:
        return None
    pos, strings = 32, []
    for _ in range(2):  # the version, then the module info
        n, shift = 0, 0
        while pos < len(data):
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        strings.append(data[pos:pos + n].decode("utf-8", "replace"))
        pos += n
    got = {}
    for line in strings[1].splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] == "build" and "=" in parts[1]:
            k, v = parts[1].split("=", 1)
            if k in _LAYOUT_SETTINGS:
                got[k] = v
    if "GOARCH" not in got:  # not the shape expected: no version-wide cache
        return None
    return ";".join(f"{k}={v}" for k, v in sorted(got.items()))


def _read_vaddr(elf, f, addr: int, size: int) -> bytes:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
            f.seek(seg["p_offset"] + addr - seg["p_vaddr"])
            return f.read(size)
    return b""


def parse_version(v: str) -> tuple[int, int]:
    """(major, minor) of "go1.19.8" / "go1.21rc2"; (0, 0) when not a release name."""
    m = re.match(r"go(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def ret_offsets(code: bytes, addr: int) -> list[int]:
    """Offsets of the RET instructions in a function's machine code (x86-64), by a
    linear sweep with a real decoder: capstone when installed, else objdump."""
    return [at - addr for at, mnemonic, _ops in decode(code, addr)
            if mnemonic in ("ret", "retq")]


def decode(code: bytes, addr: int) -> list[tuple[int, str, str]]:
    """(address, mnemonic, operands) of every instruction of `code` (x86-64) linked at
    `addr`, by a linear sweep: capstone when installed, else binutils' objdump (direct
    branch targets come as "0x..." in the operands with either).  Raises GoTlsError
    when neither decoder is there or the sweep does not reach the end cleanly."""
    try:
        import capstone  # type: ignore[import-not-found]
    except ImportError:
        capstone = None
    if capstone is not None:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        out, end = [], 0
        for insn in md.disasm(code, addr):
            out.append((insn.address, insn.mnemonic, insn.op_str))
            end = insn.address + insn.size - addr
        if end != len(code):
            raise GoTlsError(f"capstone stopped at +{end:#x} of {len(code):#x}")
        return out
    return _decode_objdump(code, addr)


_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S.*)$")


def _decode_objdump(code: bytes, addr: int) -> list[tuple[int, str, str]]:
    objdump = shutil.which("objdump")
    if objdump is None:
        raise GoTlsError("no x86-64 decoder: install capstone (Python) or binutils")
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".bin") as tmp:
        tmp.write(code)
        tmp.flush()
        r = subprocess.run([objdump, "-D", "-b", "binary", "-m", "i386:x86-64",
                            "--no-show-raw-insn", f"--adjust-vma={addr:#x}", tmp.name],
                           capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise GoTlsError(f"objdump failed: {r.stderr.strip()[:200]}")
    out = []
    for line in r.stdout.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if not m:
            continue
        at = int(m.group(1), 16)
        mnemonic, _, ops = m.group(2).partition(" ")
        if mnemonic == "(bad)":
            raise GoTlsError(f"objdump could not decode +{at - addr:#x}")
        out.append((at, mnemonic, ops.strip()))
    if not out:
        raise GoTlsError("objdump decoded nothing")
    return out


_ELF64_SYM = struct.Struct("<IBBHQQ")


def _symbols(path: str, names: set[str]) -> dict[str, tuple[int, int]]:
    """{name: (address, size)} of those of names the symbol table defines.  The names'
    offsets are found in the string table first (C-speed searches), then the 24-byte
    entries naming them: pyelftools' per-symbol objects cost ~0.6 s for a net/http
    binary, this ~30 ms."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise GoTlsError("no symbol table (stripped)")
        if elf.elfclass != 64 or not elf.little_endian:
            raise GoTlsError("not a 64-bit little-endian ELF file")
        strtab = elf.get_section(symtab["sh_link"]).data()
        where: dict[int, str] = {}
        for name in names:
            pat = b"\0" + name.encode() + b"\0"
            at = strtab.find(pat)
            while at >= 0:
                where[at + 1] = name
                at = strtab.find(pat, at + 1)
        data = symtab.data()
        out = {}
        for st_name, _i, _o, _sh, value, size in _ELF64_SYM.iter_unpack(
                data[:len(data) // 24 * 24]):
            if st_name in where and value:
                out[where[st_name]] = (value, size)
        return out


def _code(path: str, addr: int, size: int) -> bytes:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return _read_vaddr(ELFFile(f), f, addr, size)


def _dwarf_offsets(path: str) -> dict[str, int]:
    """The offsets of _MEMBERS (and conn_hs) from the runtime unit's type DIEs (the Go
    linker puts every type there)."""
    from elftools.elf.elffile import ELFFile

    wanted = {s for s, _p in _MEMBERS.values()} | {"internal/poll.FD", "net.conn"}
    structs: dict[str, dict[str, tuple[int, object]]] = {}
    params: dict[str, list[str]] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            raise GoTlsError("no DWARF (stripped?)")
        for cu in elf.get_dwarf_info().iter_CUs():
            top = cu.get_top_DIE()
            unit = top.attributes.get("DW_AT_name")
            unit = unit.value.decode() if unit else ""
            for die in top.iter_children():
                dn = die.attributes.get("DW_AT_name")
                if dn is None:
                    continue
                name = dn.value.decode(errors="replace")
                if die.tag == "DW_TAG_subprogram" and name in _PARAMS:
                    params[name] = [c.attributes["DW_AT_name"].value.decode()
                                    for c in die.iter_children()
                                    if c.tag == "DW_TAG_formal_parameter"
                                    and "DW_AT_name" in c.attributes
                                    and not (c.attributes.get("DW_AT_variable_parameter")
                                             and c.attributes["DW_AT_variable_parameter"].value)]
                elif die.tag == "DW_TAG_structure_type" and name in wanted \
                        and name not in structs:
                    members = {}
                    for m in die.iter_children():
                        mn, loc = m.attributes.get("DW_AT_name"), \
                            m.attributes.get("DW_AT_data_member_location")
                        if mn is None or loc is None:
                            continue
                        tref = m.get_DIE_from_attribute("DW_AT_type") \
                            if "DW_AT_type" in m.attributes else None
                        members[mn.value.decode()] = (int(loc.value), tref)
                    structs[name] = members
            if unit == "runtime" and len(structs) == len(wanted):
                break
    missing = wanted - set(structs)
    if missing:
        raise GoTlsError(f"DWARF lacks {sorted(missing)}")
    for fn, names in _PARAMS.items():
        if fn in params and tuple(params[fn][:len(names)]) != names:
            raise GoTlsError(f"{fn} has parameters {params[fn]}")

    def walk(struct: str, chain: tuple[str, ...]) -> int:
        members, off = structs[struct], 0
        for i, name in enumerate(chain):
            if name not in members:
                raise GoTlsError(f"{struct} has no {'.'.join(chain[:i + 1])}")
            o, tref = members[name]
            off += o
            if i + 1 < len(chain):
                members = _members_of(tref)
        return off

    out = {key: walk(s, chain) for key, (s, chain) in _MEMBERS.items()}
    for chain in _HANDSHAKE_FLAGS:
        try:
            out["conn_hs"] = walk("crypto/tls.Conn", chain)
            break
        except GoTlsError:
            continue
    else:
        raise GoTlsError("crypto/tls.Conn has no handshake flag")
    # a slice is (data, len, cap); an interface (itab, data); int and pointers 8 bytes:
    # checked, as the probe reads them so
    if _members_of(structs["bytes.Buffer"]["buf"][1]).keys() >= {"array", "len"}:
        sl = _members_of(structs["bytes.Buffer"]["buf"][1])
        out["buffer_ptr"] = out["buffer_buf"] + sl["array"][0]
        out["buffer_len"] = out["buffer_buf"] + sl["len"][0]
    else:
        raise GoTlsError("bytes.Buffer.buf is not a slice")
    s_len = _members_of(structs["bytes.Reader"]["s"][1]).get("len")
    if s_len is None:
        raise GoTlsError("bytes.Reader.s is not a slice")
    out["input_len"] = out["conn_input"] + out["reader_s"] + s_len[0]
    out["input_i"] = out["conn_input"] + out["reader_i"]
    return out


def _offsets(path: str, version: str) -> dict[str, int]:
    """_dwarf_offsets, cached by Go version and layout-relevant build settings: the
    standard library's structs are laid out alike in every binary one toolchain builds
    with the same settings, so a new binary of a known toolchain skips its DWARF (~3 s
    for a net/http client on this VM, that an exec hook's held process would wait)."""
    settings = build_settings(path)
    if settings is None:
        return _dwarf_offsets(path)
    import hashlib

    tag = hashlib.sha256(f"{version}|{settings}".encode()).hexdigest()[:16]
    cache = os.path.join(CACHE_DIR, f"gotls-offsets-{_FACTS_VERSION}-{tag}.json")
    got = golang.load_cache(cache)
    if isinstance(got, dict) and got and all(isinstance(v, int) for v in got.values()):
        return got
    got = _dwarf_offsets(path)
    golang.save_cache(cache, got)
    return got


def _members_of(tref) -> dict[str, tuple[int, object]]:
    """Members of the struct a DWARF type reference names (through typedefs)."""
    die = tref
    for _ in range(8):
        if die is None:
            return {}
        if die.tag == "DW_TAG_structure_type":
            out = {}
            for m in die.iter_children():
                mn, loc = m.attributes.get("DW_AT_name"), m.attributes.get(
                    "DW_AT_data_member_location")
                if mn is not None and loc is not None:
                    t = m.get_DIE_from_attribute("DW_AT_type") \
                        if "DW_AT_type" in m.attributes else None
                    out[mn.value.decode()] = (int(loc.value), t)
            return out
        if "DW_AT_type" not in die.attributes:
            return {}
        die = die.get_DIE_from_attribute("DW_AT_type")
    return {}


def facts(path: str, use_cache: bool = True) -> dict:
    """What the probes need of the Go binary at path (see the module docstring);
    GoTlsError when it cannot be followed.  Cached by file content."""
    cache = os.path.join(CACHE_DIR, f"gotls-{_FACTS_VERSION}-{golang._digest(path)}.json")
    got = golang.load_cache(cache) if use_cache else None
    if isinstance(got, dict):
        if got.get("error"):
            raise GoTlsError(got["error"])
        return got
    try:
        got = _facts(path)
    except GoTlsError as e:
        got = {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - a malformed ELF/DWARF: not followed
        got = {"error": f"{type(e).__name__}: {e}"}
    if use_cache:
        golang.save_cache(cache, got)
    if got.get("error"):
        raise GoTlsError(got["error"])
    return got


def _facts(path: str) -> dict:
    version = go_version(path)
    if not version:
        raise GoTlsError("not a Go binary")
    if parse_version(version) < MIN_VERSION:
        raise GoTlsError(f"{version}: before the register ABI (Go 1.17)")
    syms = _symbols(path, {WRITE, READ, ITAB, *HANDSHAKES})
    if WRITE not in syms or READ not in syms:
        raise GoTlsError("no crypto/tls")
    if ITAB not in syms:
        raise GoTlsError(f"no {ITAB}: its TLS connections are not TCP")
    rets = {}
    for fn in (WRITE, READ):
        addr, size = syms[fn]
        code = _code(path, addr, size)
        if len(code) != size or not size:
            raise GoTlsError(f"{fn}: code not readable")
        rets[fn] = ret_offsets(code, addr)
        if not rets[fn]:
            raise GoTlsError(f"{fn}: no RET found")
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        pie = elf["e_type"] == "ET_DYN"
        # where the file's first page is linked (Go links PIE at 0x400000, not 0)
        base = min((seg["p_vaddr"] & ~0xFFF for seg in elf.iter_segments()
                    if seg["p_type"] == "PT_LOAD" and seg["p_offset"] == 0), default=0)
    handshakes = [h for h in HANDSHAKES if h in syms]
    return {"version": version, "offsets": _offsets(path, version), "rets": rets,
            "syms": {k: v[0] for k, v in syms.items()},
            "itab": syms[ITAB][0], "pie": pie, "base_vaddr": base,
            "handshakes": handshakes}


def text_vaddr(path: str) -> int:
    """Where the lowest executable segment of the ELF file at path is linked: the kernel's
    mm->start_code minus this is a PIE process's load bias (bpf/tls.c's exec hook)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return min((seg["p_vaddr"] for seg in ELFFile(f).iter_segments()
                    if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1), default=0)


def quick_check(path: str) -> tuple[bool, str]:
    """Whether the agent would follow the executable at path's crypto/tls, said in a
    few words, without the DWARF look (`zerotrace check`): (True, "go1.19.8, crypto/tls")
    or (False, why); "not a Go binary" and "no crypto/tls" for what has nothing to
    follow.  OSError when the file cannot be read."""
    try:
        version = go_version(path)
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - not an ELF file
        return False, "not a Go binary"
    if not version:
        return False, "not a Go binary"
    try:
        syms = _symbols(path, {WRITE, READ, ITAB})
    except GoTlsError as e:  # stripped
        return False, f"{version}: {e}"
    if WRITE not in syms or READ not in syms:
        return False, "no crypto/tls"
    if parse_version(version) < MIN_VERSION:
        return False, f"{version}: before the register ABI (Go 1.17)"
    if ITAB not in syms:
        return False, f"{version}: no {ITAB}"
    return True, f"{version}, crypto/tls"


def load_bias(pid: int, path: str, base_vaddr: int) -> int:
    """How far process pid moved a PIE executable: where it mapped the file's first page
    minus the address that page is linked at."""
    target = os.path.realpath(f"/proc/{pid}/exe")
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip() == target and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16) - base_vaddr
    raise GoTlsError(f"pid {pid}: {path} not mapped")


@dataclass
class GoTlsBinary:
    """One distinct Go executable (by device and inode) and its probes.  `path` is
    /proc/<agent>/fd/<fd> of a descriptor the agent holds on the file: it names the same
    inode after the process that showed it exits, or the file is replaced or deleted on
    disk (bcc opens the path again to detach)."""

    path: str
    key: tuple[int, int]
    shown_as: str = ""  # the executable's path as its process names it
    version: str = ""
    error: str = ""
    probes: list[tuple[str, int]] = field(default_factory=list)  # (symbol, offset)
    entries: dict[str, int] = field(default_factory=dict)  # entry probes: symbol -> offset
    pids: set[int] = field(default_factory=set)
    facts: dict = field(default_factory=dict)
    fd: int = -1
    idle_since: float = 0.0  # monotonic time its last process exited (0: one runs)


class GoTlsAttacher:
    """Follows Go processes' crypto/tls: probes per executable file, offsets per
    process (map gotls_procs); detaches a file's probes when its last process exits."""

    def __init__(self, bpf) -> None:
        self.bpf = bpf
        self.binaries: dict[tuple[int, int], GoTlsBinary] = {}
        self._pids: dict[int, tuple[int, int]] = {}  # pid -> its executable's key
        # called with a file's GoTlsBinary when its probes are detached (the exec hook
        # then forgets the file: its next process is held until the probes are back)
        self.on_detach = None
        self.detach_grace_s = DETACH_GRACE_S

    def consider(self, pid: int) -> None:
        """Look at process pid's executable (again if it changed: an exec)."""
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if self._pids.get(pid) == key:
            return
        self._forget(pid)
        b = self.binaries.get(key)
        if b is None:
            try:
                fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            b = self.binaries.get(key)
            if b is not None:  # exec'd in between: the file is known after all
                os.close(fd)
            else:
                b = self.binaries[key] = GoTlsBinary(f"/proc/{os.getpid()}/fd/{fd}", key,
                                                     os.readlink(f"/proc/{pid}/exe"), fd=fd)
                self._inspect(b)
                if b.error:  # no descriptor held for what is not followed
                    os.close(fd)
                    b.fd = -1
        self._pids[pid] = key
        if b.error:
            return
        if not b.probes:
            self._attach(b)
            if b.error:
                return
        self._add_process(b, pid)

    def _inspect(self, b: GoTlsBinary) -> None:
        try:
            # a quick look first: most executables are not Go, or have no crypto/tls
            if not go_version(b.path):
                b.error = "not a Go binary"
                return
            b.facts = facts(b.path)
            b.version = b.facts["version"]
        except OSError as e:  # gone, or no file (memfd): nothing to probe
            b.error = f"unreadable: {e.strerror}"
            return
        except GoTlsError as e:
            b.error = str(e)
        except Exception as e:  # noqa: BLE001 - not an ELF file
            b.error = f"{type(e).__name__}: {e}"
        if b.error and b.error not in ("not a Go binary", "no crypto/tls"):
            log.warning("Go TLS: %s not followed: %s", b.shown_as, b.error)

    def _attach(self, b: GoTlsBinary) -> None:
        f, name = b.facts, b.path.encode()
        done: list[tuple[str, int]] = []
        try:
            plan = probe_plan(b.path, f)
            for sym, off, fn in plan:
                self.bpf.attach_uprobe(name=name, sym=sym.encode(), fn_name=fn.encode(),
                                       sym_off=off)
                done.append((sym, off))
        except Exception as e:  # all or none: an entry without its RETs leaks state
            for sym, off in done:
                self._detach_one(name, sym, off)
            b.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("Go TLS: %s not followed: %s", b.shown_as, b.error)
            return
        b.probes = done
        b.entries = {sym: off for sym, off, fn in plan if fn != RET_PROGRAM}
        self._write_addrs(b)
        self.bpf[b"gotls_on"][ct.c_int(0)] = ct.c_uint32(1)
        log.info("Go TLS: %d uprobes on %s (%s)", len(done), b.shown_as, b.version)

    def _write_addrs(self, b: GoTlsBinary) -> None:
        """Offsets by probed address, for processes the scan has not seen yet (non-PIE)."""
        f = b.facts
        if f["pie"]:
            return
        leaf = self._leaf(f, 0)
        table = self.bpf[b"gotls_addrs"]
        for sym, off in b.entries.items():  # the instruction pointer at the probe
            table[ct.c_uint64(f["syms"][sym] + off)] = leaf

    def _detach_one(self, name: bytes, sym: str, off: int) -> None:
        try:
            self.bpf.detach_uprobe(name=name, sym=sym.encode(), sym_off=off)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def _add_process(self, b: GoTlsBinary, pid: int) -> None:
        f = b.facts
        try:
            bias = load_bias(pid, b.path, f["base_vaddr"]) if f["pie"] else 0
        except (OSError, GoTlsError) as e:
            log.warning("Go TLS: pid %d: %s", pid, e)
            return
        self.bpf[b"gotls_procs"][ct.c_uint32(pid)] = self._leaf(f, bias)
        b.pids.add(pid)

    def _leaf(self, f: dict, bias: int):
        leaf = self.bpf[b"gotls_procs"].Leaf()
        leaf.itab = f["itab"] + bias
        for k, v in f["offsets"].items():
            if k not in _NOT_FIELDS:
                setattr(leaf, k, v)
        return leaf

    def _forget(self, pid: int) -> None:
        key = self._pids.pop(pid, None)
        b = self.binaries.get(key) if key else None
        if b is None or pid not in b.pids:
            return
        b.pids.discard(pid)
        try:
            del self.bpf[b"gotls_procs"][ct.c_uint32(pid)]
        except KeyError:
            pass

    def prune(self, alive: set[int]) -> None:
        """Forget exited processes; detach the probes of files no process has run for
        detach_grace_s (a command-line client run again and again keeps its probes, and
        is not stopped at each exec by the exec hook)."""
        for pid in [p for p in self._pids if p not in alive]:
            self._forget(pid)
        now = time.monotonic()
        for b in self.binaries.values():
            if b.probes and not b.pids:
                if not b.idle_since:
                    b.idle_since = now
                if now - b.idle_since >= self.detach_grace_s:
                    self.detach(b)
            else:
                b.idle_since = 0.0
        # a file no process runs is looked at again if one starts it (a new process)
        for key in [k for k, b in self.binaries.items() if not b.pids and not b.probes
                    and not b.error]:
            self._close(self.binaries.pop(key))

    @staticmethod
    def _close(b: GoTlsBinary) -> None:
        if b.fd >= 0:
            os.close(b.fd)
            b.fd = -1

    def close(self) -> None:
        """Detach everything and let go of the files."""
        self.detach_all()
        for b in self.binaries.values():
            self._close(b)
        self.binaries.clear()

    def detach(self, b: GoTlsBinary) -> None:
        name = b.path.encode()
        for sym, off in b.probes:
            self._detach_one(name, sym, off)
        b.probes = []
        if b.facts and not b.facts["pie"]:
            table = self.bpf[b"gotls_addrs"]
            for sym, off in b.entries.items():
                try:
                    del table[ct.c_uint64(b.facts["syms"][sym] + off)]
                except KeyError:
                    pass
            # another file with probes may have its functions at the same addresses (a
            # copy, or the same program built twice): its entries are written again
            for other in self.attached():
                self._write_addrs(other)
        if self.on_detach is not None:
            self.on_detach(b)
        log.info("Go TLS: uprobes of %s detached", b.shown_as)

    def detach_all(self) -> None:
        for b in list(self.binaries.values()):
            if b.probes:
                self.detach(b)

    def reattach_all(self) -> None:
        for b in self.binaries.values():
            if b.pids and not b.probes and not b.error:
                self._attach(b)

    def binary_of(self, pid: int) -> GoTlsBinary | None:
        """The followed executable process pid runs (after consider(pid)), or None."""
        b = self.binaries.get(self._pids.get(pid))
        return b if b is not None and b.probes else None

    def leaf(self, b: GoTlsBinary, bias: int = 0):
        """gotls_procs' value for a process of b moved by bias (0: as linked)."""
        return self._leaf(b.facts, bias)

    def attached(self) -> list[GoTlsBinary]:
        return [b for b in self.binaries.values() if b.probes]


def stack_check_jump(code: bytes) -> int:
    """Offset of the conditional jump of a Go function's stack check (its prologue:
    [lea -X(%rsp),%r12;] cmp 0x10(%r14),%rsp|%r12; jbe morestack), 0 when the code
    starts otherwise.  A uprobe there costs a fraction of one on the first instruction
    on a VM: the kernel emulates a jump but single-steps a cmp out of line (a debug
    trap, intercepted by the hypervisor: ~12 us on the development VM).  Nothing before
    it writes an argument register (RAX, RBX, RCX...) or g (R14)."""
    i = 0
    if code[:4] == b"\x4c\x8d\x64\x24":       # lea disp8(%rsp),%r12
        i = 5
    elif code[:4] == b"\x4c\x8d\xa4\x24":     # lea disp32(%rsp),%r12
        i = 8
    # cmp 0x10(%r14),%rsp without the lea, cmp 0x10(%r14),%r12 after it
    if code[i:i + 4] != (b"\x4d\x3b\x66\x10" if i else b"\x49\x3b\x66\x10"):
        return 0
    j = i + 4
    if code[j:j + 1] == b"\x76" or code[j:j + 2] == b"\x0f\x86":  # jbe rel8 / rel32
        return j
    return 0


def probe_plan(path: str, f: dict) -> list[tuple[str, int, str]]:
    """(symbol, offset, program) of every probe for the binary at path: the entries at
    their stack check's jump when the prologue has one (there the jump's flags tell the
    pass that grows the stack from the one that runs: bpf/gotls.c zt_gotls_*_sc), else at
    offset 0; the RETs of Read, and of Write when its entry is at offset 0 (its RET then
    ends a call the entry recorded, see bpf/gotls.c)."""
    from elftools.elf.elffile import ELFFile

    plan, at_check = [], {}
    entries = golang_entry_programs(f)
    with open(path, "rb") as fh:  # one parse of the file for every prologue
        elf = ELFFile(fh)
        heads = {sym: _read_vaddr(elf, fh, f["syms"][sym], 16) for sym, _fn in entries}
    for sym, fn in entries:
        off = stack_check_jump(heads[sym])
        at_check[sym] = off
        plan.append((sym, off, AT_CHECK[fn] if off else fn))
    plan += [(sym, off, RET_PROGRAM) for sym in (WRITE, READ)
             if sym == READ or not at_check[WRITE] for off in f["rets"][sym]]
    return plan


def golang_entry_programs(f: dict) -> list[tuple[str, str]]:
    """(symbol, program) of the entry probes for a binary's facts."""
    out = [(WRITE, ENTRY_PROGRAMS[WRITE]), (READ, ENTRY_PROGRAMS[READ])]
    out += [(h, HANDSHAKE_PROGRAM) for h in f.get("handshakes", ())]
    return out
