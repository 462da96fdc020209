"""PostgreSQL frontend/backend protocol v3: start-up, simple and extended query.

The parser is compiled (`_postgresql.pyx`, Cython, built by `pip install`); this module
is the name the rest of the agent imports it by.

A record is one unit of work: a simple `Query` answered by everything up to
`ReadyForQuery`, or in the extended protocol one `Execute` (with the Parse / Bind /
Describe before it) answered up to its `CommandComplete` or `ErrorResponse`, so five
pipelined statements before one `Sync` are five records.  Units are matched first in,
first out.  Statement and portal names are remembered (bounded) so an `Execute` of a
statement prepared earlier still gets its SQL.  Start-up and authentication messages
are consumed without reading any secret from them.
"""

from __future__ import annotations

from ._postgresql import (
    BIG,
    CANCEL_REQUEST,
    CLIENT_TYPES,
    GSS_REQUEST,
    MAX_MSG,
    MAX_SQL,
    MAX_STATEMENTS,
    PROTO_V3,
    SERVER_TYPES,
    SSL_REQUEST,
    STATS,
    DirStream,
    PostgresParser,
)
from .spec import InferenceRule, Ports, ProtocolSpec

__all__ = ["BIG", "CANCEL_REQUEST", "CLIENT_TYPES", "GSS_REQUEST", "MAX_MSG", "MAX_SQL",
           "MAX_STATEMENTS", "PROTO_V3", "SERVER_TYPES", "SSL_REQUEST", "STATS",
           "DirStream", "PostgresParser"]


def _infer(data: bytes, _ports: Ports) -> str | None:
    return "postgresql" if _looks_like(data) else None


def _looks_like(data: bytes) -> bool:
    if len(data) >= 8:
        ln = int.from_bytes(data[0:4], "big")
        code = int.from_bytes(data[4:8], "big")
        if code in (PROTO_V3, SSL_REQUEST, GSS_REQUEST) and 8 <= ln < 10000:
            return True
    if len(data) >= 6 and data[0] in b"QP":
        ln = int.from_bytes(data[1:5], "big")
        if 4 < ln < (1 << 24) and (len(data) < ln + 1 or data[ln] == 0):
            return data[0] == 81 or (len(data) > ln + 1 and data[ln + 1] in b"BDSH")
    if len(data) >= 9 and data[0] == 82 and data[1:5] in (b"\x00\x00\x00\x08",
                                                         b"\x00\x00\x00\x0c"):
        return True  # AuthenticationOk / AuthenticationMD5Password
    return False


PROTOCOL = ProtocolSpec(("postgresql",), lambda client_side, _t: PostgresParser(client_side),
                        STATS, (InferenceRule(40, "tcp", _infer),))
