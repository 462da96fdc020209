"""Go binaries: where the goroutine id lives, so probes can follow goroutines.

The offset of `goid` in `runtime.g` changes between Go releases; it is read from the
binary's DWARF (pyelftools: the maintained pure-Python ELF/DWARF reader; about 2 s
for a net/http binary, cached per file content).  Stripped binaries have no DWARF:
their processes keep thread ids, and the stitcher refuses thread links there."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from agent.probes.btf import CACHE_DIR

EXECUTE_SYMBOL = "runtime.execute"
# Hand-offs (bpf/gowake.c): symbol -> probe function.
WAKE_SYMBOLS = {
    "runtime.send": "zt_go_send",
    "runtime.ready": "zt_go_ready",
    "runtime.chanrecv": "zt_go_recv",
    "runtime.selectgo": "zt_go_recv",
}
# (struct, member) -> key of runtime_offsets()
_RUNTIME_MEMBERS = {
    (b"runtime.g", b"goid"): "goid",
    (b"runtime.g", b"m"): "g_m",
    (b"runtime.m", b"g0"): "m_g0",
    (b"runtime.m", b"curg"): "m_curg",
    (b"runtime.sudog", b"g"): "sudog_g",
    (b"runtime.hchan", b"elemsize"): "hchan_elemsize",
}


class GoBinaryError(RuntimeError):
    """The binary cannot be followed (no DWARF, no symbol, not Go)."""


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def goid_offset(path: str, use_cache: bool = True) -> int:
    """Byte offset of goid in runtime.g for the Go binary at path."""
    digest = _digest(path)
    cache = os.path.join(CACHE_DIR, f"go-{digest}.json")
    if use_cache:
        try:
            with open(cache) as f:
                return int(json.load(f)["goid_offset"])
        except (OSError, ValueError, KeyError):
            pass
    off = _goid_offset_from_dwarf(path)
    if use_cache:
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            with open(cache, "w") as f:
                json.dump({"goid_offset": off}, f)
        except OSError:
            pass
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
    digest = _digest(path)
    cache = os.path.join(CACHE_DIR, f"go-runtime-{digest}.json")
    if use_cache:
        try:
            with open(cache) as f:
                got = {k: int(v) for k, v in json.load(f).items()}
            if set(got) == set(_RUNTIME_MEMBERS.values()):
                return got
        except (OSError, ValueError, AttributeError):
            pass
    got = _runtime_offsets_from_dwarf(path)
    if use_cache:
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            with open(cache, "w") as f:
                json.dump(got, f)
        except OSError:
            pass
    return got


def _runtime_offsets_from_dwarf(path: str) -> dict[str, int]:
    from elftools.elf.elffile import ELFFile

    want = {s for s, _m in _RUNTIME_MEMBERS}
    got: dict[str, int] = {}
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
                if die.tag != "DW_TAG_structure_type" or dn is None or dn.value not in want:
                    continue
                for m in die.iter_children():
                    mn = m.attributes.get("DW_AT_name")
                    key = _RUNTIME_MEMBERS.get((dn.value, mn.value if mn else b""))
                    if key is not None:
                        got[key] = int(m.attributes["DW_AT_data_member_location"].value)
            if len(got) == len(_RUNTIME_MEMBERS):
                break
    missing = set(_RUNTIME_MEMBERS.values()) - set(got)
    if missing:
        raise GoBinaryError(f"{path}: runtime offsets not in DWARF: {sorted(missing)}")
    return got


def symbols_present(path: str, names: Iterable[str]) -> list[str]:
    """Those of names that the ELF symbol table of path defines, in the order given."""
    from elftools.elf.elffile import ELFFile

    want = list(names)
    found: set[str] = set()
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        if symtab is None:
            return []
        wanted = set(want)
        for sym in symtab.iter_symbols():
            if sym.name in wanted and sym["st_value"]:
                found.add(sym.name)
    return [n for n in want if n in found]


def exe_path(pid: int) -> str:
    """The executable of pid, reachable from this mount namespace (containers too)."""
    target = os.readlink(f"/proc/{pid}/exe")
    via_root = f"/proc/{pid}/root{target}"
    return via_root if os.path.exists(via_root) else target
