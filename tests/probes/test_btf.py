"""BTF offsets: the reader agrees with bpftool on this kernel, and fails clearly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from agent.probes import btf

HAVE_BTF = os.path.exists(btf.VMLINUX_BTF)


@pytest.mark.skipif(not HAVE_BTF and os.environ.get("CI") != "true",
                    reason="this kernel exposes no /sys/kernel/btf/vmlinux")
@pytest.mark.skipif(shutil.which("bpftool") is None and os.environ.get("CI") != "true",
                    reason="bpftool not installed (scripts/setup.sh installs it)")
def test_offsets_agree_with_bpftool():
    raw = subprocess.run(["bpftool", "btf", "dump", "file", btf.VMLINUX_BTF, "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    block = re.search(r"STRUCT 'tcp_sock' size=\d+ vlen=\d+\n((?:\t.*\n)+)", raw).group(1)
    bits = dict(re.findall(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", block))
    offs = btf.kernel_offsets(use_cache=False)
    assert offs["OFF_TCP_WRITE_SEQ"] == int(bits["write_seq"]) // 8
    assert offs["OFF_TCP_COPIED_SEQ"] == int(bits["copied_seq"]) // 8


def test_anonymous_union_members_resolve():
    if not HAVE_BTF:
        pytest.skip("no kernel BTF here")
    b = btf.BTF(open(btf.VMLINUX_BTF, "rb").read())
    # skc_dport sits in an unnamed union inside sock_common
    assert b.offset("sock", "__sk_common.skc_dport") == b.offset("sock_common", "skc_dport")


def test_missing_member_and_bad_blob_say_what():
    with pytest.raises(btf.BTFError, match="bad BTF magic"):
        btf.BTF(b"\0" * 64)
    if HAVE_BTF:
        b = btf.BTF(open(btf.VMLINUX_BTF, "rb").read())
        with pytest.raises(btf.BTFError, match="no member 'no_such_field'"):
            b.offset("sock", "no_such_field")
    with pytest.raises(btf.BTFError, match="cannot read"):
        btf.kernel_offsets("/nonexistent/vmlinux", use_cache=False)
