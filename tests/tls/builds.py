"""Test programs built by the TLS tests: the C client with OpenSSL linked in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "programs"
LIBDIR = "/usr/lib/x86_64-linux-gnu"


def static_client(out: str) -> str:
    """tests/tls/programs/static_client.c linked with the system's libssl.a and
    libcrypto.a (glibc stays dynamic); the executable's path."""
    for a in ("libssl.a", "libcrypto.a"):
        if not os.path.exists(f"{LIBDIR}/{a}"):
            pytest.fail(f"{LIBDIR}/{a} missing: apt-get install libssl-dev")
    exe = os.path.join(out, "static_client")
    subprocess.run(["cc", "-O1", "-o", exe, str(PROGRAMS / "static_client.c"),
                    f"{LIBDIR}/libssl.a", f"{LIBDIR}/libcrypto.a", "-lpthread", "-ldl"],
                   check=True, capture_output=True, timeout=300)
    return exe
