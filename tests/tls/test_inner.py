"""Which functions the OpenSSL probes go on (agent/probes/tls.py inner_functions): the
internal function both SSL_read wrappers call, only when the code proves it; else the
public symbols.  Machine code written here byte by byte, and the real libraries of this
host."""

from __future__ import annotations

import glob
import os
import struct

import pytest

from agent.probes import tls


def call(at: int, target: int, op: int = 0xE8) -> bytes:
    """A call (or jmp) rel32 at address at to target."""
    return bytes([op]) + struct.pack("<i", target - (at + 5))


@pytest.mark.parametrize("prologue", [
    b"",                                  # a bare tail jump / call
    b"\x48\x83\xec\x08",                  # sub $8,%rsp (OpenSSL 3.0's SSL_read_ex)
    b"\xf3\x0f\x1e\xfa\x48\x81\xec\x00\x01\x00\x00",  # endbr64; sub $0x100,%rsp
    b"\x53\x41\x57",                      # push %rbx; push %r15
])
@pytest.mark.parametrize("op", [0xE8, 0xE9])
def test_wrapper_passing_its_arguments(prologue, op):
    base, target = 0x35000, 0x34000
    code = prologue + call(base + len(prologue), target, op) + b"\xc3" * 8
    assert tls._wrapped_target(code, base) == target


@pytest.mark.parametrize("code", [
    b"\x49\x89\xc8\x31\xc9\xe9\x00\x00\x00\x00",   # mov %rcx,%r8; xor %ecx,%ecx; jmp
    b"\x48\x89\xfb\xe8\x00\x00\x00\x00",           # mov %rdi,%rbx; call (rdi kept, but
                                                   # nothing but the list is accepted)
    b"\x48\x83\xec\x08\xff\x15\x00\x00\x00\x00",   # sub; call *(%rip): not direct
    b"\x48\x83\xec",                               # cut short
    b"\x55" * 9 + b"\xe8\x00\x00\x00\x00",         # too long a prologue
])
def test_other_code_refused(code):
    assert tls._wrapped_target(code + b"\x90" * 8, 0x1000) is None


def test_system_libssl():
    """Debian 12's OpenSSL 3.0: both directions, each a distinct function of the file's
    own code that SSL_read_ex and SSL_read both call."""
    path = os.path.realpath(tls.system_libssl()[0])
    inner = tls.inner_functions(path)
    assert set(inner) == {"read", "write"}
    assert inner["read"] != inner["write"]
    from tests.tls.test_tls_openssl import call_targets

    for kind, names in tls.INNER.items():
        for sym in names:
            assert inner[kind] in call_targets(path, sym)


def test_openssl_33_write_refused():
    """OpenSSL >= 3.3 (a wheel's bundled copy): SSL_write_ex moves its 4th argument to
    r8 and jumps to SSL_write_ex2, whose internal function takes 5 arguments: writes
    stay on the public symbols; reads still go through ssl_read_internal."""
    site = os.path.dirname(os.path.dirname(pytest.__file__))  # site-packages
    libs = [p for p in glob.glob(os.path.join(site, "*.libs", "libssl-*.so*"))
            if tls.exported_symbols(p) >= {"SSL_write_ex", "SSL_read_ex"}]
    if not libs:
        pytest.skip("no bundled libssl here (psycopg-binary)")
    from elftools.elf.elffile import ELFFile

    for path in libs:
        with open(path, "rb") as f:
            dynsym = ELFFile(f).get_section_by_name(".dynsym")
            names = {s.name for s in dynsym.iter_symbols()}
        inner = tls.inner_functions(path)
        if "SSL_write_ex2" in names:
            assert "write" not in inner, path
        assert "read" in inner, path


def test_not_elf(tmp_path):
    p = tmp_path / "libssl.so.3"
    p.write_bytes(b"not an ELF file")
    assert tls.inner_functions(str(p)) == {}
