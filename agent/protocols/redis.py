"""Redis RESP2 and RESP3: commands, pipelining, errors, push messages.

The parser is compiled (`_redis.pyx`, Cython, built by `pip install`); this module is
the name the rest of the agent imports it by.

The scanner is resumable at every element boundary (a stack of element counts left
in the open aggregates), so a frame split over many syscalls is never re-scanned and
a bulk string longer than what was captured is skipped by its length, after which
the remaining elements of the same frame are parsed as usual.
"""

from __future__ import annotations

from ._redis import GRAB, MAX_LINE, STATS, TYPES, WAIT_BULK, DirStream, RedisParser

__all__ = ["GRAB", "MAX_LINE", "STATS", "TYPES", "WAIT_BULK", "DirStream", "RedisParser"]
