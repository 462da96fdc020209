"""Struct member offsets of the running kernel, read from its BTF.

bcc compiles probes against whatever headers it finds, which may belong to another
kernel (see docs/probes.md); every kernel struct the probes walk is therefore read
with offsets taken from `/sys/kernel/btf/vmlinux` and passed to the C as `-D` flags.

The BTF format is small and stable (uapi `linux/btf.h`); parsing it here takes about
0.3 s for a full vmlinux and needs no subprocess, no libbpf binding and no headers.
Results are cached on disk per BTF content hash, so later starts cost a hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
CACHE_DIR = "/var/cache/zerotrace"

BTF_MAGIC = 0xEB9F
# Kinds (uapi linux/btf.h).
K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC = 9, 10, 11, 12, 13, 14, 15
K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64 = 16, 17, 18, 19
# Bytes that follow the 12-byte common header: fixed part + per-vlen part.
_EXTRA_FIXED = {K_INT: 4, K_ARRAY: 12, K_VAR: 4, K_DECL_TAG: 4}
_EXTRA_PER_VLEN = {K_STRUCT: 12, K_UNION: 12, K_ENUM: 8, K_FUNC_PROTO: 8, K_DATASEC: 12,
                   K_ENUM64: 12}
_MODIFIERS = (K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT, K_TYPE_TAG)


class BTFError(RuntimeError):
    """The BTF is missing, malformed, or lacks a member the probes need."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


class BTF:
    """The struct/union part of a BTF blob, enough to resolve member paths."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BTFError("BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        self._kinds: list[int] = [0]  # type id 0 is void
        self._names: list[int] = [0]
        self._size_or_type: list[int] = [0]
        self._members: dict[int, list[tuple[int, int, int]]] = {}
        self._array_elem: dict[int, int] = {}
        self._by_name: dict[tuple[int, str], int] = {}
        self._parse_types(blob, hdr_len + type_off, type_len)

    def _parse_types(self, blob: bytes, start: int, length: int) -> None:
        pos, end = start, start + length
        unpack3 = struct.Struct("<III").unpack_from
        kinds, names, sot = self._kinds, self._names, self._size_or_type
        while pos < end:
            name_off, info, size_or_type = unpack3(blob, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            tid = len(kinds)
            kinds.append(kind)
            names.append(name_off)
            sot.append(size_or_type)
            pos += 12
            if kind in (K_STRUCT, K_UNION):
                kflag = info >> 31
                mem = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack3(blob, pos + 12 * i)
                    if kflag:
                        mem.append((m_name, m_type, m_off & 0xFFFFFF | (m_off >> 24) << 32))
                    else:
                        mem.append((m_name, m_type, m_off))
                self._members[tid] = mem
                if name_off:
                    self._by_name.setdefault((kind, self._str(name_off)), tid)
            elif kind == K_ARRAY:
                self._array_elem[tid] = struct.unpack_from("<I", blob, pos)[0]
            pos += _EXTRA_FIXED.get(kind, 0) + _EXTRA_PER_VLEN.get(kind, 0) * vlen

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def struct_id(self, name: str) -> int:
        for kind in (K_STRUCT, K_UNION):
            tid = self._by_name.get((kind, name))
            if tid is not None:
                return tid
        raise BTFError(f"struct {name} not in BTF")

    def resolve(self, tid: int) -> int:
        """Strip typedef/const/volatile/restrict/type-tag modifiers."""
        while self._kinds[tid] in _MODIFIERS:
            tid = self._size_or_type[tid]
        return tid

    def size(self, tid: int) -> int:
        tid = self.resolve(tid)
        return self._size_or_type[tid] if self._kinds[tid] in (K_STRUCT, K_UNION, K_INT) else 0

    def _find(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type id) of `name` in struct `tid`, looking through
        anonymous struct/union members (skc_daddr and friends live in those)."""
        for m_name, m_type, m_off in self._members.get(self.resolve(tid), ()):
            bit_off = m_off & 0xFFFFFFFF
            if m_name and self._str(m_name) == name:
                return bit_off, m_type
            if not m_name and self._kinds[self.resolve(m_type)] in (K_STRUCT, K_UNION):
                inner = self._find(m_type, name)
                if inner is not None:
                    return bit_off + inner[0], inner[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path, e.g. offset("sock", "__sk_common.skc_dport")."""
        tid = self.struct_id(struct_name)
        total = 0
        for part in path.split("."):
            found = self._find(tid, part)
            if found is None:
                raise BTFError(f"{struct_name}.{path}: no member {part!r} in this kernel's BTF")
            bit_off, tid = found
            if bit_off % 8:
                raise BTFError(f"{struct_name}.{path} is a bitfield; probes cannot read it")
            total += bit_off // 8
        return total


# Every offset the probe C uses: macro name -> (struct, member path).
OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FILE_INODE": ("file", "f_inode"),
    "OFF_FILE_FOP": ("file", "f_op"),
    "OFF_FILE_PRIVATE": ("file", "private_data"),
    "OFF_INODE_MODE": ("inode", "i_mode"),
    "OFF_SOCKET_SK": ("socket", "sk"),
    "OFF_SOCKET_TYPE": ("socket", "type"),
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "OFF_SK_STATE": ("sock", "__sk_common.skc_state"),
    "OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
    "OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "OFF_SK_NET": ("sock", "__sk_common.skc_net"),
    "OFF_NET_NS_INUM": ("net", "ns.inum"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_TCP_WRITE_SEQ": ("tcp_sock", "write_seq"),
    "OFF_TCP_COPIED_SEQ": ("tcp_sock", "copied_seq"),
    "OFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "OFF_TASK_COMM": ("task_struct", "comm"),
}
# Members renamed across kernel versions: macro -> (struct, [paths], flag macro set to
# the index of the path found).  struct file's reference count became f_ref (a
# zero-based file_ref_t) in 6.13; before, f_count counted from one.
ALTERNATIVES: dict[str, tuple[str, list[str], str]] = {
    "OFF_FILE_COUNT": ("file", ["f_ref.refcnt", "f_count"], "ZT_FILE_COUNT_KIND"),
}


def _cache_path(digest: str) -> str:
    return os.path.join(CACHE_DIR, f"btf-offsets-{digest[:16]}.json")


def kernel_offsets(btf_path: str = VMLINUX_BTF, use_cache: bool = True) -> dict[str, int]:
    """Offsets of OFFSETS in the kernel whose BTF is at `btf_path` (cached on disk)."""
    try:
        with open(btf_path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise BTFError(f"cannot read {btf_path}: {e.strerror}; the kernel needs "
                       "CONFIG_DEBUG_INFO_BTF=y") from e
    digest = hashlib.sha256(blob + json.dumps([OFFSETS, ALTERNATIVES], sort_keys=True)
                            .encode()).hexdigest()
    if use_cache:
        try:
            with open(_cache_path(digest)) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
    btf = BTF(blob)
    offsets = {macro: btf.offset(s, path) for macro, (s, path) in OFFSETS.items()}
    for macro, (struct_name, paths, flag) in ALTERNATIVES.items():
        for i, path in enumerate(paths):
            try:
                offsets[macro] = btf.offset(struct_name, path)
                offsets[flag] = i
                break
            except BTFError:
                continue
        else:
            raise BTFError(f"{struct_name}: none of {', '.join(paths)} in this kernel's BTF")
    if use_cache:
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            tmp = _cache_path(digest) + f".{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(offsets, f)
            os.replace(tmp, _cache_path(digest))
        except OSError:
            pass  # a read-only /var only costs the next start 0.3 s
    return offsets


def cflags(offsets: dict[str, int]) -> list[str]:
    """`-D` flags for bcc."""
    return [f"-D{k}={v}" for k, v in sorted(offsets.items())]
