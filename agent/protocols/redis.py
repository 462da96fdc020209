"""Redis RESP2 and RESP3: commands, pipelining, errors, push messages.

The parser is compiled (`_redis.pyx`, Cython, built by `pip install`); this module is
the name the rest of the agent imports it by.

The scanner is resumable at every element boundary (a stack of element counts left
in the open aggregates), so a frame split over many syscalls is never re-scanned and
a bulk string longer than what was captured is skipped by its length, after which
the remaining elements of the same frame are parsed as usual.
"""

from __future__ import annotations

from ._infer import REDIS_INLINE, REDIS_ON_PORT, REDIS_PORTS, REDIS_REQUEST
from ._redis import GRAB, MAX_LINE, STATS, TYPES, WAIT_BULK, DirStream, RedisParser
from .spec import InferenceRule, ProtocolSpec

__all__ = ["GRAB", "MAX_LINE", "REDIS_PORTS", "STATS", "TYPES", "WAIT_BULK", "DirStream",
           "RedisParser"]


# The tests (_infer.pyx): a request (`*N` then a bulk string); a reply or an inline
# command on a Redis port; an inline PING / HELLO / AUTH anywhere.
PROTOCOL = ProtocolSpec(("redis",), RedisParser, STATS,
                        (InferenceRule(30, "tcp", REDIS_REQUEST),
                         InferenceRule(90, "tcp", REDIS_ON_PORT),
                         InferenceRule(100, "tcp", REDIS_INLINE)))
