"""Redis RESP2 and RESP3: commands, pipelining, errors, push messages.

The parser is compiled (`_redis.pyx`, Cython, built by `pip install`); this module is
the name the rest of the agent imports it by.

The scanner is resumable at every element boundary (a stack of element counts left
in the open aggregates), so a frame split over many syscalls is never re-scanned and
a bulk string longer than what was captured is skipped by its length, after which
the remaining elements of the same frame are parsed as usual.
"""

from __future__ import annotations

import re

from ._redis import GRAB, MAX_LINE, STATS, TYPES, WAIT_BULK, DirStream, RedisParser
from .spec import InferenceRule, Ports, ProtocolSpec, on_port

__all__ = ["GRAB", "MAX_LINE", "STATS", "TYPES", "WAIT_BULK", "DirStream", "RedisParser"]


REDIS_PORTS = frozenset((6379, 6380, 26379))
_REQ = re.compile(rb"\*[1-9]\d{0,6}\r\n\$\d{1,10}\r\n")
_REPLY = re.compile(rb"(?:[+-][^\r\n]{0,200}|:-?\d{1,20}|\$-?\d{1,10}|\*-?\d{1,7}|_|#[tf]"
                    rb"|[%~>]\d{1,7}|,[^\r\n]{1,40}|\([\d-]{1,60}|[=!]\d{1,10})\r\n")
_INLINE = re.compile(rb"(?i)(?:PING|QUIT|INFO|AUTH \S+|HELLO \d)\r?\n")


def _request(data: bytes, _ports: Ports) -> str | None:
    return "redis" if _REQ.match(data) else None


def _on_redis_port(data: bytes, ports: Ports) -> str | None:
    if on_port(ports, REDIS_PORTS) and (_REPLY.match(data) or _INLINE.match(data)):
        return "redis"
    return None


def _inline(data: bytes, _ports: Ports) -> str | None:
    if _INLINE.match(data) and data[:4].upper() in (b"PING", b"HELL", b"AUTH"):
        return "redis"
    return None


PROTOCOL = ProtocolSpec(("redis",), lambda client_side, _t: RedisParser(client_side), STATS,
                        (InferenceRule(30, "tcp", _request),
                         InferenceRule(90, "tcp", _on_redis_port),
                         InferenceRule(100, "tcp", _inline)))
