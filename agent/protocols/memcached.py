"""memcached: text protocol (classic and meta commands) and binary protocol.

The parser is compiled (`_memcached.pyx`, Cython, built by `pip install`); this module
is the name the rest of the agent imports it by.  The framing and the matching rules
(noreply, quiet meta and binary requests, ambiguous quiet replies, replies memcached
drops) are described in `_memcached.pyx`'s docstring and in docs/protocols.md.
"""

from __future__ import annotations

import re

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
from .redis import REDIS_PORTS
from .spec import InferenceRule, Ports, ProtocolSpec, on_port

__all__ = ["BIN_STATUS", "HEADER", "MAGIC_REQ", "MAGIC_RESP", "MAX_KEY", "MAX_LINE", "OPCODES",
           "REPLY_WORDS", "SHOW_KEYS", "STATS", "WAIT_BLOCK", "DirStream", "MemcachedParser",
           "binary_request", "binary_response", "query_text"]


MEMCACHED_PORTS = frozenset((11211,))
# memcached text commands in the shape clients write them (lower case, as the server
# wants); keys are 1-250 bytes without spaces or control characters.
_KEY = rb"[!-~\x80-\xff]{1,250}"
_REQ = re.compile(
    rb"(?:(?:set|add|replace|append|prepend) K \d{1,10} -?\d{1,10} \d{1,10}(?: noreply)?"
    rb"|cas K \d{1,10} -?\d{1,10} \d{1,10} \d{1,20}(?: noreply)?"
    rb"|gets? K(?: K)*|gats? -?\d{1,10}(?: K)+|delete K(?: 0)?(?: noreply)?"
    rb"|(?:incr|decr) K \d{1,20}(?: noreply)?|touch K -?\d{1,10}(?: noreply)?"
    rb"|m[gsdae] K(?: [!-~]{1,64})*|mn|version|stats(?: [a-z_]{1,20})*"
    rb"|flush_all(?: -?\d{1,10})?(?: noreply)?|verbosity \d{1,3}(?: noreply)?)\r?\n"
    .replace(b"K", _KEY))
_VALUE = re.compile(rb"VALUE " + _KEY + rb" \d{1,10} \d{1,10}(?: \d{1,20})?\r\n")
_REPLY = re.compile(rb"(?:STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|END|OK"
                    rb"|VERSION [\w.-]{1,40}|STAT \w{1,40} [^\r\n]{0,200}|HD|EN|NF|NS|EX|MN"
                    rb"|VA \d{1,10}|SERVER_ERROR [^\r\n]{0,200}|CLIENT_ERROR [^\r\n]{0,200})"
                    rb"[ \r]")


def _binary(data: bytes, ports: Ports) -> str | None:
    if binary_request(data) or (binary_response(data) and on_port(ports, MEMCACHED_PORTS)):
        return "memcached"
    return None


def _text_command(data: bytes, ports: Ports) -> str | None:
    if not _REQ.match(data):
        return None
    # Redis takes inline commands too ("get k"): on its ports, it is Redis.
    return "redis" if on_port(ports, REDIS_PORTS) else "memcached"


def _value(data: bytes, _ports: Ports) -> str | None:
    return "memcached" if _VALUE.match(data) else None


def _reply(data: bytes, ports: Ports) -> str | None:
    return "memcached" if on_port(ports, MEMCACHED_PORTS) and _REPLY.match(data) else None


PROTOCOL = ProtocolSpec(("memcached",), lambda client_side, _t: MemcachedParser(client_side),
                        STATS, (InferenceRule(60, "tcp", _binary),
                                InferenceRule(110, "tcp", _text_command),
                                InferenceRule(120, "tcp", _value),
                                InferenceRule(130, "tcp", _reply)))
