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
        # Debian 12's OpenSSL 3.0: both directions probed on the internal functions
        system = tls.display_path(tls.system_libssl()[0])
        assert any(c.detail.startswith(system) and "(probed inside: read and write)" in c.detail
                   for c in lines), lines
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


def test_check_lists_go_and_static_executables(tmp_path):
    """A running Go HTTPS-capable program and a running program with OpenSSL linked in
    are each one line, with the file's path; a Go program without crypto/tls is not."""
    import shutil
    import socket
    from pathlib import Path

    import pytest

    from tests.tls.builds import PROGRAMS, static_client

    if shutil.which("go") is None:
        pytest.skip("no Go toolchain")
    from agent.demo.services import go_binary

    gobin = str(go_binary(PROGRAMS / "gotls.go", "gotls"))
    plain = str(go_binary(Path(PROGRAMS) / "goplain.go", "goplain"))
    static = static_client(str(tmp_path))
    # a listener that never answers: the static client waits in its handshake
    ln = socket.socket()
    ln.bind(("127.0.0.1", 0))
    ln.listen(1)
    port = ln.getsockname()[1]
    procs = [subprocess.Popen([gobin, "server", "127.0.0.1:0"], stdout=subprocess.PIPE),
             subprocess.Popen([static, "127.0.0.1", str(port), "/"]),
             subprocess.Popen([plain, "127.0.0.1:0"], stdout=subprocess.PIPE)]
    try:
        assert procs[0].stdout.readline().strip() == b"ready"
        assert procs[2].stdout.readline().strip() == b"ready"
        conn, _ = ln.accept()  # the static client is running (connected)
        lines = check.check_tls_executables()
        go = [c for c in lines if c.name == "TLS (Go crypto/tls)" and gobin in c.detail]
        assert len(go) == 1 and go[0].ok and "crypto/tls" in go[0].detail, lines
        st = [c for c in lines if c.name == "TLS (OpenSSL linked in)" and static in c.detail]
        assert len(st) == 1 and st[0].ok and "SSL_read" in st[0].detail, lines
        assert "(probed inside: read and write)" in st[0].detail
        assert not any(plain in c.detail for c in lines)
        conn.close()
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        ln.close()
