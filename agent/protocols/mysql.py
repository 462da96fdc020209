"""MySQL / MariaDB client/server protocol: handshake, COM_QUERY, prepared statements.

The parser is compiled (`_mysql.pyx`, Cython, built by `pip install`); this module is
the name the rest of the agent imports it by.

Every packet carries its length, so a packet longer than the captured prefix is
handled from its head and skipped.  The response to a command is followed through its
shape (OK / ERR / result set: column count, column definitions, optional EOF, rows,
terminator, more results) so the record ends at the response's last byte.  The
handshake response and any auth packet are consumed without reading credentials.
"""

from __future__ import annotations

from ._infer import MYSQL, MYSQL_PORTS
from ._mysql import (
    CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF,
    CLIENT_QUERY_ATTRIBUTES,
    CLIENT_SSL,
    COM_CHANGE_USER,
    COM_FIELD_LIST,
    COM_INIT_DB,
    COM_QUERY,
    COM_QUIT,
    COM_STATISTICS,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_PREPARE,
    COM_STMT_SEND_LONG_DATA,
    COMMANDS,
    MAX_SQL,
    MAX_STATEMENTS,
    MORE_RESULTS,
    STATS,
    DirStream,
    MySQLParser,
    lenenc,
)
from .spec import InferenceRule, ProtocolSpec

__all__ = ["CLIENT_CONNECT_WITH_DB", "CLIENT_DEPRECATE_EOF", "CLIENT_QUERY_ATTRIBUTES",
           "CLIENT_SSL", "COMMANDS", "COM_CHANGE_USER", "COM_FIELD_LIST", "COM_INIT_DB",
           "COM_QUERY", "COM_QUIT", "COM_STATISTICS", "COM_STMT_CLOSE", "COM_STMT_EXECUTE",
           "COM_STMT_PREPARE", "COM_STMT_SEND_LONG_DATA", "MAX_SQL", "MAX_STATEMENTS",
           "MORE_RESULTS", "MYSQL_PORTS", "STATS", "DirStream", "MySQLParser", "lenenc"]


# A server greeting (protocol 10, a version), or a whole COM_QUERY / COM_STMT_PREPARE on a
# MySQL port or starting with a SQL verb: _infer.pyx.
PROTOCOL = ProtocolSpec(("mysql",), MySQLParser, STATS, (InferenceRule(50, "tcp", MYSQL),))
