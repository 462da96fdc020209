"""The Python mirror of bpf/abi.h matches the C layout, field by field."""

from __future__ import annotations

import ctypes as ct
import subprocess
from pathlib import Path

import pytest

from agent.probes import abi

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


def c_layout(tmp_path: Path, struct: str, fields: list[str]) -> dict[str, int]:
    lines = [f'printf("sizeof %zu\\n", sizeof(struct {struct}));']
    lines += [f'printf("{f} %zu\\n", offsetof(struct {struct}, {f}));' for f in fields]
    src = tmp_path / "layout.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
                   f'#include "{BPF_DIR}/abi.h"\nint main(void) {{\n' + "\n".join(lines)
                   + "\nreturn 0; }\n")
    exe = tmp_path / "layout"
    r = subprocess.run(["cc", "-o", str(exe), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot compile abi.h: {r.stderr}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("cls,cname", [(abi.ZtEvent, "zt_event"), (abi.ZtConfig, "zt_config"),
                                      (abi.ZtWake, "zt_wake"),
                                      (abi.ZtGoRuntime, "zt_go_runtime")])
def test_python_mirror_matches_c(tmp_path, cls, cname):
    names = [n for n, _ in cls._fields_]
    c = c_layout(tmp_path, cname, names)
    assert c["sizeof"] == ct.sizeof(cls)
    for n in names:
        assert c[n] == getattr(cls, n).offset, n


def test_struct_decoder_is_derived_from_ctypes():
    assert abi.EVENT_STRUCT.size == ct.sizeof(abi.ZtEvent)
    e = abi.ZtEvent(ts_enter=1, pid=7, lport=80, flags=3, seq=99)
    e.comm = b"curl"
    vals = dict(zip(abi.EVENT_FIELDS, abi.EVENT_STRUCT.unpack(bytes(e)), strict=True))
    assert (vals["ts_enter"], vals["pid"], vals["lport"], vals["flags"], vals["seq"]) == (
        1, 7, 80, 3, 99)
    assert vals["comm"].rstrip(b"\0") == b"curl"


def test_wake_records_decode_and_are_told_apart_by_length():
    from agent.probes.events import WakeEvent, decode

    w = abi.ZtWake(ts=5, waker=7, goid=9, thread_goid=3, pid=11, tid=12, lost=2,
                   type=abi.EV_WAKE, kind=abi.WAKE_HANDOFF)
    e = decode(bytes(w), 100)
    assert isinstance(e, WakeEvent)
    assert (e.ts, e.waker, e.goid, e.thread_goid, e.pid, e.tid, e.lost, e.kind) == (
        105, 7, 9, 3, 11, 12, 2, abi.WAKE_HANDOFF)
    assert e.type == abi.EV_WAKE
    ev = abi.ZtEvent(ts_enter=1, pid=7, type=abi.EV_DATA)
    assert decode(bytes(ev) + b"xy", 0).pid == 7


def test_record_kinds_agree_with_bpf_abi_h():
    """Every ZT_EV_* and ZT_WAKE_* of bpf/abi.h has the same value in agent/probes/abi.py
    (a kind added on one side only would be read as another kind)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "bpf/abi.h").read_text()
    defs = dict(re.findall(r"^#define ZT_((?:EV|WAKE|F)_\w+) (\d+)", text, re.M))
    assert len(defs) >= 11, defs
    for name, value in defs.items():
        assert getattr(abi, name) == int(value), name
    wakes = {int(v) for k, v in defs.items() if k.startswith("WAKE_")}
    assert set(abi.WAKE_KIND_NAMES) == wakes


def test_counter_slots_agree_with_bpf_abi_h():
    """ZT_STAT_* / ZT_DROP_* slots of bpf/abi.h are the ones agent/probes/abi.py reads
    (a slot read under another name would report one counter as another)."""
    import re

    text = (BPF_DIR / "abi.h").read_text()
    stats = {int(v): k for k, v in re.findall(r"^#define ZT_STAT_(\w+) (\d+)", text, re.M)}
    count = stats.pop(max(stats))
    assert count == "SLOTS" and max(stats) + 1 == abi.STAT_SLOT_COUNT == len(abi.STAT_SLOTS)
    assert set(stats) == set(abi.STAT_SLOTS)
    for slot, cname in stats.items():  # same meaning: the C name in the Python one
        words = cname.lower().replace("record_bytes", "ring_bytes").replace(
            "records", "ring_records").replace("conns", "connections")
        assert abi.STAT_SLOTS[slot] == words, (slot, cname)
    keep = re.search(r"^#define ZT_KEEP_ALL (\d+)", text, re.M)
    assert int(keep.group(1)) == abi.KEEP_ALL


def test_flag_bits_agree_with_bpf_abi_h():
    """Every ZT_F_* flag bit of bpf/abi.h is defined once, there, and abi.F_* mirrors it
    (a bit defined elsewhere, as ZT_F_NOCAPTURE once was, could be reused by mistake)."""
    import re

    text = (BPF_DIR / "abi.h").read_text()
    flags = dict(re.findall(r"^#define ZT_F_(\w+) (\d+)", text, re.M))
    assert flags, "no ZT_F_ flags found in abi.h"
    bits = [int(v) for v in flags.values()]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    for name, value in flags.items():
        assert getattr(abi, "F_" + name) == int(value), name
    for other in ("maps.h", "data.c", "conn.c", "sock.h", "tls.c", "tc.c"):
        assert not re.search(r"^#define ZT_F_", (BPF_DIR / other).read_text(), re.M), other
