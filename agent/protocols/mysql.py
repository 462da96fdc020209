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
from .spec import InferenceRule, Ports, ProtocolSpec, on_port

__all__ = ["CLIENT_CONNECT_WITH_DB", "CLIENT_DEPRECATE_EOF", "CLIENT_QUERY_ATTRIBUTES",
           "CLIENT_SSL", "COMMANDS", "COM_CHANGE_USER", "COM_FIELD_LIST", "COM_INIT_DB",
           "COM_QUERY", "COM_QUIT", "COM_STATISTICS", "COM_STMT_CLOSE", "COM_STMT_EXECUTE",
           "COM_STMT_PREPARE", "COM_STMT_SEND_LONG_DATA", "MAX_SQL", "MAX_STATEMENTS",
           "MORE_RESULTS", "STATS", "DirStream", "MySQLParser", "lenenc"]


MYSQL_PORTS = frozenset((3306, 3307, 4000))


def _infer(data: bytes, ports: Ports) -> str | None:
    return "mysql" if _looks_like(data, ports) else None


def _looks_like(data: bytes, ports: Ports) -> bool:
    if len(data) < 5:
        return False
    ln = data[0] | (data[1] << 8) | (data[2] << 16)
    seq, first = data[3], data[4]
    if ln == 0 or seq != 0:
        return False
    if first == 10:  # server greeting: protocol 10, then a version such as "10.11.6-MariaDB"
        nul = data.find(b"\x00", 5, 5 + 64)
        return nul > 5 and data[5:6].isdigit()
    whole = ln + 4 == len(data) or ln + 4 > len(data) >= 1024
    if first in (COM_QUERY, COM_STMT_PREPARE) and whole:
        return on_port(ports, MYSQL_PORTS) or _looks_sql(data[5:])
    return False


def _looks_sql(b: bytes) -> bool:
    return b[:10].split(b" ", 1)[0].upper() in (b"SELECT", b"INSERT", b"UPDATE", b"DELETE",
                                               b"SET", b"SHOW", b"BEGIN", b"COMMIT",
                                               b"CREATE", b"DROP", b"USE", b"CALL")


PROTOCOL = ProtocolSpec(("mysql",), lambda client_side, _t: MySQLParser(client_side), STATS,
                        (InferenceRule(50, "tcp", _infer),))
