"""memcached: text protocol (classic and meta commands) and binary protocol.

The parser is compiled (`_memcached.pyx`, Cython, built by `pip install`); this module
is the name the rest of the agent imports it by.  The framing and the matching rules
(noreply, quiet meta and binary requests, ambiguous quiet replies, replies memcached
drops) are described in `_memcached.pyx`'s docstring and in docs/protocols.md.
"""

from __future__ import annotations

from ._memcached import (
    BIN_STATUS,
    HEADER,
    MAGIC_REQ,
    MAGIC_RESP,
    MAX_KEY,
    MAX_LINE,
    OPCODES,
    REPLY_WORDS,
    SHOW_KEYS,
    STATS,
    WAIT_BLOCK,
    DirStream,
    MemcachedParser,
    binary_request,
    binary_response,
    query_text,
)

__all__ = ["BIN_STATUS", "HEADER", "MAGIC_REQ", "MAGIC_RESP", "MAX_KEY", "MAX_LINE", "OPCODES",
           "REPLY_WORDS", "SHOW_KEYS", "STATS", "WAIT_BLOCK", "DirStream", "MemcachedParser",
           "binary_request", "binary_response", "query_text"]
