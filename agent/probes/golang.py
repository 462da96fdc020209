"""Go binaries: where the goroutine id lives, so probes can follow goroutines.

The offset of `goid` in `runtime.g` changes between Go releases; it is read from the
binary's DWARF (pyelftools: the maintained pure-Python ELF/DWARF reader; about 2 s
for a net/http binary, cached per file content).  Stripped binaries have no DWARF:
their processes keep thread ids, and the stitcher refuses thread links there."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable

from agent.probes.btf import CACHE_DIR

log = logging.getLogger(__name__)

EXECUTE_SYMBOL = "runtime.execute"
# Hand-offs (bpf/gowake.c): symbol -> probe function.
WAKE_SYMBOLS = {
    "runtime.send": "zt_go_send",
    "runtime.ready": "zt_go_ready",
    "runtime.chanrecv": "zt_go_chanrecv",
    "runtime.selectgo": "zt_go_select",
    # values that wait in a channel's buffer (a new connection's first request)
    "runtime.chansend": "zt_go_chansend",
    "runtime.recv": "zt_go_recvfrom",
    "runtime.typedmemmove": "zt_go_copy",
    # a prologue that grows the stack runs its function's entry again: not a new receive
    "runtime.newstack": "zt_go_newstack",
}
# The probes that follow channel operations' frames (buffer copies, entries run twice):
# attached all together or not at all (a buffer copy gone unrecorded could name a wrong
# sender), only where buffer_check passes, and not with ZEROTRACE_GO_BUFFERS=0
# (typedmemmove is called by maps too: each call is a trap).
BUFFER_SYMBOLS = ("runtime.chansend", "runtime.recv", "runtime.typedmemmove",
                  "runtime.newstack")
# (struct, member) -> key of runtime_offsets()
_RUNTIME_MEMBERS = {
    (b"runtime.g", b"goid"): "goid",
    (b"runtime.g", b"m"): "g_m",
    (b"runtime.m", b"g0"): "m_g0",
    (b"runtime.m", b"curg"): "m_curg",
    (b"runtime.sudog", b"g"): "sudog_g",
    (b"runtime.hchan", b"elemsize"): "hchan_elemsize",
}
# Offsets bpf/gowake.c's buffer probes take as given (ZT_G_STACK_HI ...): checked here
_FIXED_MEMBERS = {
    (b"runtime.g", b"stack"): 0,
    (b"runtime.stack", b"hi"): 8,
    (b"runtime.hchan", b"dataqsiz"): 8,
    (b"runtime.hchan", b"buf"): 16,
    (b"runtime.hchan", b"recvx"): 48,
    (b"runtime._type", b"size"): 0,
    (b"runtime.g", b"sched"): 56,
    (b"runtime.gobuf", b"sp"): 0,
}
# Register arguments the probes read, by position (RAX, RBX, RCX, RDI, RSI): the
# leading parameter names each function must have
_PARAMS = {
    b"runtime.chansend": (b"c", b"ep"),
    b"runtime.chanrecv": (b"c", b"ep"),
    b"runtime.selectgo": (b"cas0", b"order0", b"pc0", b"nsends", b"nrecvs"),
    b"runtime.recv": (b"c", b"sg"),
    b"runtime.typedmemmove": (b"typ", b"dst", b"src"),
}
# Direct calls of typedmemmove in each channel function (Go 1.19's chan.go, select.go):
# chansend's buffered send, chanrecv's buffered receive, selectgo's bufrecv and bufsend,
# recv's two.  Another count means the code differs (an inlined copy would be one the
# probes misread): the buffer probes stay off.
# bumped when the checks' code changes: their cached verdicts are then not used
_CHECKS_VERSION = 2
_COPY_CALLS = {"runtime.chansend": 1, "runtime.chanrecv": 1, "runtime.selectgo": 2,
               "runtime.recv": 2}


class GoBinaryError(RuntimeError):
    """The binary cannot be followed (no DWARF, no symbol, not Go)."""


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def load_cache(cache: str):
    """A JSON file of facts about a binary (keyed by its content), or None."""
    try:
        with open(cache) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_cache(cache: str, facts: dict) -> None:
    """Keep `facts` for the next start; a cache that cannot be written costs only time."""
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        with open(cache, "w") as f:
            json.dump(facts, f)
    except OSError:
        pass


def goid_offset(path: str, use_cache: bool = True) -> int:
    """Byte offset of goid in runtime.g for the Go binary at path."""
    digest = _digest(path)
    cache = os.path.join(CACHE_DIR, f"go-{digest}.json")
    if use_cache:
        try:
            return int(load_cache(cache)["goid_offset"])
        except (TypeError, ValueError, KeyError):
            pass
    off = _goid_offset_from_dwarf(path)
    if use_cache:
        save_cache(cache, {"goid_offset": off})
    return off


def _goid_offset_from_dwarf(path: str) -> int:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            raise GoBinaryError(f"{path}: no DWARF (stripped?)")
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            name = top.attributes.get("DW_AT_name")
            if name is None or name.value != b"runtime":
                continue
            for die in top.iter_children():
                if die.tag != "DW_TAG_structure_type":
                    continue
                dn = die.attributes.get("DW_AT_name")
                if dn is None or dn.value != b"runtime.g":
                    continue
                for m in die.iter_children():
                    mn = m.attributes.get("DW_AT_name")
                    if mn is not None and mn.value == b"goid":
                        return int(m.attributes["DW_AT_data_member_location"].value)
    raise GoBinaryError(f"{path}: runtime.g.goid not found in DWARF")


def runtime_offsets(path: str, use_cache: bool = True) -> dict[str, int]:
    """Offsets the hand-off probes need (keys of _RUNTIME_MEMBERS' values), from DWARF."""
    return _runtime_facts(path, use_cache)["offsets"]


def buffer_check(path: str, use_cache: bool = True) -> str:
    """Why the buffer probes cannot be used on the Go binary at path ("" when they can):
    the offsets and arguments bpf/gowake.c assumes, checked against DWARF, and the
    channel functions' calls of typedmemmove counted in the machine code."""
    return _runtime_facts(path, use_cache)["buffers"]


def _runtime_facts(path: str, use_cache: bool) -> dict:
    # the checks take part in the key: a cached verdict of other checks is not used
    checks = hashlib.sha256(repr((_CHECKS_VERSION, _RUNTIME_MEMBERS, _FIXED_MEMBERS, _PARAMS,
                                  _COPY_CALLS)).encode()).hexdigest()[:8]
    cache = os.path.join(CACHE_DIR, f"go-runtime-{checks}-{_digest(path)}.json")
    if use_cache:
        try:
            got = load_cache(cache)
            offs = {k: int(v) for k, v in got["offsets"].items()}
            if set(offs) == set(_RUNTIME_MEMBERS.values()) and isinstance(got["buffers"], str):
                return {"offsets": offs, "buffers": got["buffers"]}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass
    offs, why = _runtime_offsets_from_dwarf(path)
    if not why:
        why = _copy_calls_check(path)
    got = {"offsets": offs, "buffers": why}
    if use_cache:
        save_cache(cache, got)
    return got


def _runtime_offsets_from_dwarf(path: str) -> tuple[dict[str, int], str]:
    """(offsets, "" or why the buffer probes' assumptions do not hold)."""
    from elftools.elf.elffile import ELFFile

    want = {s for s, _m in _RUNTIME_MEMBERS} | {s for s, _m in _FIXED_MEMBERS}
    got: dict[str, int] = {}
    fixed: dict[tuple[bytes, bytes], int] = {}
    params: dict[bytes, list[bytes]] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            raise GoBinaryError(f"{path}: no DWARF (stripped?)")
        for cu in elf.get_dwarf_info().iter_CUs():
            top = cu.get_top_DIE()
            name = top.attributes.get("DW_AT_name")
            if name is None or name.value != b"runtime":
                continue
            for die in top.iter_children():
                dn = die.attributes.get("DW_AT_name")
                if dn is None:
                    continue
                if die.tag == "DW_TAG_subprogram" and dn.value in _PARAMS:
                    params[dn.value] = [
                        c.attributes["DW_AT_name"].value for c in die.iter_children()
                        if c.tag == "DW_TAG_formal_parameter" and "DW_AT_name" in c.attributes
                        and not (c.attributes.get("DW_AT_variable_parameter")
                                 and c.attributes["DW_AT_variable_parameter"].value)]
                if die.tag != "DW_TAG_structure_type" or dn.value not in want:
                    continue
                for m in die.iter_children():
                    mn = m.attributes.get("DW_AT_name")
                    member = (dn.value, mn.value if mn else b"")
                    loc = m.attributes.get("DW_AT_data_member_location")
                    if loc is None:
                        continue
                    key = _RUNTIME_MEMBERS.get(member)
                    if key is not None:
                        got[key] = int(loc.value)
                    if member in _FIXED_MEMBERS:
                        fixed[member] = int(loc.value)
            if (len(got) == len(_RUNTIME_MEMBERS) and len(fixed) == len(_FIXED_MEMBERS)
                    and len(params) == len(_PARAMS)):
                break
    missing = set(_RUNTIME_MEMBERS.values()) - set(got)
    if missing:
        raise GoBinaryError(f"{path}: runtime offsets not in DWARF: {sorted(missing)}")
    for member, off in _FIXED_MEMBERS.items():
        if fixed.get(member) != off:
            return got, (f"{member[0].decode()}.{member[1].decode()} at {fixed.get(member)}, "
                         f"not {off}")
    linked = set(_defined(path, (fn.decode() for fn in _PARAMS)))
    for fn, names in _PARAMS.items():
        if fn not in params and fn.decode() not in linked:
            continue  # the linker left it out: it never runs
        if tuple(params.get(fn, ())[:len(names)]) != names:
            return got, f"{fn.decode()} has parameters {params.get(fn)}"
    return got, ""


def _copy_calls_check(path: str) -> str:
    """"" when each channel function calls typedmemmove as often as _COPY_CALLS says.
    A direct call is E8 and a 32-bit displacement: counting that byte pattern can only
    over-count (a pattern inside another instruction), never miss a call."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        text = elf.get_section_by_name(".text")
        if symtab is None or text is None:
            return "no symbol table"
        want = set(_COPY_CALLS) | {"runtime.typedmemmove"}
        syms = {s.name: (s["st_value"], s["st_size"]) for s in symtab.iter_symbols()
                if s.name in want}
        if "runtime.typedmemmove" not in syms:
            return "no runtime.typedmemmove"
        target = syms["runtime.typedmemmove"][0]
        base, code = text["sh_addr"], text.data()
        for fn, expected in _COPY_CALLS.items():
            if fn not in syms:
                continue  # not linked: never runs
            addr, size = syms[fn]
            body = code[addr - base:addr - base + size]
            n = sum(1 for i in range(len(body) - 4)
                    if body[i] == 0xE8
                    and addr + i + 5 + int.from_bytes(body[i + 1:i + 5], "little",
                                                      signed=True) == target)
            if n != expected:
                return f"{fn} calls typedmemmove {n} times, not {expected}"
    return ""


def symbols_present(path: str, names: Iterable[str]) -> list[str]:
    """Those of names that the ELF symbol table of path defines, in the order given;
    of BUFFER_SYMBOLS, none unless buffer_check passes and ZEROTRACE_GO_BUFFERS is not 0
    (then all that are defined)."""
    want = list(names)
    found = set(_defined(path, want))
    if found & set(BUFFER_SYMBOLS):
        why = ("ZEROTRACE_GO_BUFFERS=0" if os.environ.get("ZEROTRACE_GO_BUFFERS", "1") == "0"
               else _buffer_check_quiet(path))
        if why:
            log.warning("%s: buffered channel values not followed: %s", path, why)
            found -= set(BUFFER_SYMBOLS)
    return [n for n in want if n in found]


def _defined(path: str, names: Iterable[str]) -> list[str]:
    """Those of names that the ELF symbol table of path defines."""
    from elftools.elf.elffile import ELFFile

    wanted = set(names)
    found: list[str] = []
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        if symtab is None:
            return []
        for sym in symtab.iter_symbols():
            if sym.name in wanted and sym["st_value"]:
                found.append(sym.name)
    return found


def _buffer_check_quiet(path: str) -> str:
    try:
        return buffer_check(path)
    except (OSError, GoBinaryError) as e:
        return str(e)


def exe_path(pid: int) -> str:
    """The executable of pid, reachable from this mount namespace (containers too)."""
    target = os.readlink(f"/proc/{pid}/exe")
    via_root = f"/proc/{pid}/root{target}"
    return via_root if os.path.exists(via_root) else target
