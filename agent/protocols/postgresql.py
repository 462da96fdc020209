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

from ._infer import POSTGRES
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
from .spec import InferenceRule, ProtocolSpec

__all__ = ["BIG", "CANCEL_REQUEST", "CLIENT_TYPES", "GSS_REQUEST", "MAX_MSG", "MAX_SQL",
           "MAX_STATEMENTS", "PROTO_V3", "SERVER_TYPES", "SSL_REQUEST", "STATS",
           "DirStream", "PostgresParser"]


# A start-up packet, a Query or Parse with its length, or AuthenticationOk/MD5: _infer.pyx.
PROTOCOL = ProtocolSpec(("postgresql",), PostgresParser, STATS,
                        (InferenceRule(40, "tcp", POSTGRES),))
