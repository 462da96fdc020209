"""`zerotrace check` names the libssl files it would probe, with a process mapping one."""

from __future__ import annotations

import subprocess
import sys

from agent import check
from agent.probes import tls


def test_check_lists_libssl_and_its_users():
    # a process that has loaded the system libssl (Python's ssl module links it)
    p = subprocess.Popen([sys.executable, "-c", "import ssl, sys; print(1, flush=True); "
                          "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        p.stdout.readline()
        mapped = tls.mapped_libssl(p.pid)
        assert mapped and all(tls.is_libssl(m) for m in mapped)
        lines = check.check_tls()
        assert any(c.ok and "SSL_read" in c.detail and "SSL_write" in c.detail for c in lines)
        # the file that process maps is one of the lines, with at least that process
        names = [tls.display_path(m).split(" (")[0] for m in mapped]
        hit = [c for c in lines if any(n.split("/")[-1] in c.detail for n in names)]
        assert hit and "mapped by 0 " not in hit[0].detail
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def test_exported_symbols_of_a_non_library(tmp_path):
    f = tmp_path / "libssl.so.3"
    f.write_bytes(b"not an elf")
    assert tls.exported_symbols(str(f)) == set()
    assert tls.display_path("/proc/42/root/usr/lib/libssl.so.3") == \
        "/usr/lib/libssl.so.3 (root of pid 42)"
