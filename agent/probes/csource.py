"""The probes' C sources as bcc must see them: one text per BPF object."""

from __future__ import annotations

import re
from pathlib import Path

_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)


def inline_includes(path: Path, seen: set[Path] | None = None) -> str:
    """The C source with our own `#include "x"` files pasted in, each once.

    bcc rewrites map and tracepoint sugar only in the main file it compiles, so the
    files of bpf/ (one per concern) are joined into one text before compiling: a map
    used in a shared header (sock.h's sock_fops) compiled as an include would be an
    indirect call the kernel refuses ("unknown opcode 8d").
    """
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)

    def paste(m: re.Match[str]) -> str:
        return inline_includes(path.parent / m.group(1), seen)

    return _LOCAL_INCLUDE.sub(paste, path.read_text())
