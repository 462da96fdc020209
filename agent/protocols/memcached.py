"""memcached: text protocol (classic and meta commands) and binary protocol.

The parser is compiled (`_memcached.pyx`, Cython, built by `pip install`); this module
is the name the rest of the agent imports it by.  The framing and the matching rules
(noreply, quiet meta and binary requests, ambiguous quiet replies, replies memcached
drops) are described in `_memcached.pyx`'s docstring and in docs/protocols.md.
"""

from __future__ import annotations

from ._infer import (
    MEMCACHED_BINARY,
    MEMCACHED_PORTS,
    MEMCACHED_REPLY,
    MEMCACHED_TEXT,
    MEMCACHED_VALUE,
)
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
from .spec import InferenceRule, ProtocolSpec

__all__ = ["BIN_STATUS", "HEADER", "MAGIC_REQ", "MAGIC_RESP", "MAX_KEY", "MAX_LINE",
           "MEMCACHED_PORTS", "OPCODES",
           "REPLY_WORDS", "SHOW_KEYS", "STATS", "WAIT_BLOCK", "DirStream", "MemcachedParser",
           "binary_request", "binary_response", "query_text"]


# The tests (_infer.pyx): a binary request (or reply on port 11211); a text command as
# clients write it (on a Redis port it is Redis: Redis takes inline commands too); a
# VALUE line; a reply line on port 11211.
PROTOCOL = ProtocolSpec(("memcached",), MemcachedParser, STATS,
                        (InferenceRule(60, "tcp", MEMCACHED_BINARY),
                         InferenceRule(110, "tcp", MEMCACHED_TEXT),
                         InferenceRule(120, "tcp", MEMCACHED_VALUE),
                         InferenceRule(130, "tcp", MEMCACHED_REPLY)))
