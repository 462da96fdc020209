"""HTTP/1.1: keep-alive, pipelining, chunked bodies, 100-continue, truncated bodies.

The parser is compiled (`_http1.pyx`, Cython, built by `pip install`); this module is
the name the rest of the agent imports it by.

Header blocks are scanned in C rather than with httptools (llhttp): llhttp is
incremental but has no notion of "N bytes are missing here" (the capture keeps a prefix
of each syscall), stops for good at the first byte it does not expect, and reports every
header through a Python callback, which costs more than the few lookups a span needs.
Bodies are never buffered: their length is skipped (Content-Length, chunk sizes), so a
2 GB body costs nothing but a counter.
"""

from __future__ import annotations

from ._http1 import (
    CHUNKED,
    HEAD,
    MAX_HEAD,
    METHODS,
    STATS,
    UNTIL_CLOSE,
    WAIT,
    DirStream,
    Http1Parser,
)
from ._infer import HTTP1
from .spec import InferenceRule, ProtocolSpec

__all__ = ["CHUNKED", "HEAD", "MAX_HEAD", "METHODS", "STATS", "UNTIL_CLOSE", "WAIT",
           "DirStream", "Http1Parser"]


# A request line (`[A-Z]{3,10} [^\s]+ HTTP/1\.[01]\r\n`) or a status line: _infer.pyx.
PROTOCOL = ProtocolSpec(("http",), Http1Parser, STATS, (InferenceRule(20, "tcp", HTTP1),))
