"""The one place protocols are registered: inference from first bytes, parser factory.

`infer` looks at the first bytes a connection carries (either direction); ports are
only a tie-breaker for shapes that several protocols share, so Redis on port 8080 is
still Redis.  `new_parser` builds the stateful per-connection parser.
"""

from __future__ import annotations

import re
from collections import Counter

from . import dns as _dns
from . import http1, http2, memcached, mysql, postgresql, redis
from .base import ConnectionParser

_PARSERS: dict[str, type] = {
    "http": http1.Http1Parser,
    "http2": http2.Http2Parser,
    "grpc": http2.Http2Parser,  # same parser: gRPC is told apart by content-type
    "redis": redis.RedisParser,
    "dns": _dns.DnsParser,
    "postgresql": postgresql.PostgresParser,
    "mysql": mysql.MySQLParser,
    "memcached": memcached.MemcachedParser,
}
# Drop/gap counters, reason -> count, one Counter per parser module ("grpc" shares
# "http2"'s), for export as metrics.
STATS: dict[str, Counter] = {
    "http": http1.STATS,
    "http2": http2.STATS,
    "redis": redis.STATS,
    "dns": _dns.STATS,
    "postgresql": postgresql.STATS,
    "mysql": mysql.STATS,
    "memcached": memcached.STATS,
}

PROTOCOLS = tuple(_PARSERS)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HTTP_REQ = re.compile(rb"[A-Z]{3,10} [^\s]+ HTTP/1\.[01]\r\n")
_REDIS_REQ = re.compile(rb"\*[1-9]\d{0,6}\r\n\$\d{1,10}\r\n")
_REDIS_REPLY = re.compile(rb"(?:[+-][^\r\n]{0,200}|:-?\d{1,20}|\$-?\d{1,10}|\*-?\d{1,7}|_|#[tf]"
                          rb"|[%~>]\d{1,7}|,[^\r\n]{1,40}|\([\d-]{1,60}|[=!]\d{1,10})\r\n")
_INLINE = re.compile(rb"(?i)(?:PING|QUIT|INFO|AUTH \S+|HELLO \d)\r?\n")

REDIS_PORTS = frozenset((6379, 6380, 26379))
PG_PORTS = frozenset((5432, 5433))
MYSQL_PORTS = frozenset((3306, 3307, 4000))
DNS_PORTS = frozenset((53, 5353, 853))
MEMCACHED_PORTS = frozenset((11211,))
# memcached text commands in the shape clients write them (lower case, as the server
# wants); keys are 1-250 bytes without spaces or control characters.
_MC_KEY = rb"[!-~\x80-\xff]{1,250}"
_MC_REQ = re.compile(
    rb"(?:(?:set|add|replace|append|prepend) K \d{1,10} -?\d{1,10} \d{1,10}(?: noreply)?"
    rb"|cas K \d{1,10} -?\d{1,10} \d{1,10} \d{1,20}(?: noreply)?"
    rb"|gets? K(?: K)*|gats? -?\d{1,10}(?: K)+|delete K(?: 0)?(?: noreply)?"
    rb"|(?:incr|decr) K \d{1,20}(?: noreply)?|touch K -?\d{1,10}(?: noreply)?"
    rb"|m[gsdae] K(?: [!-~]{1,64})*|mn|version|stats(?: [a-z_]{1,20})*"
    rb"|flush_all(?: -?\d{1,10})?(?: noreply)?|verbosity \d{1,3}(?: noreply)?)\r?\n"
    .replace(b"K", _MC_KEY))
_MC_VALUE = re.compile(rb"VALUE " + _MC_KEY + rb" \d{1,10} \d{1,10}(?: \d{1,20})?\r\n")
_MC_REPLY = re.compile(rb"(?:STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|END|OK"
                       rb"|VERSION [\w.-]{1,40}|STAT \w{1,40} [^\r\n]{0,200}|HD|EN|NF|NS|EX|MN"
                       rb"|VA \d{1,10}|SERVER_ERROR [^\r\n]{0,200}|CLIENT_ERROR [^\r\n]{0,200})"
                       rb"[ \r]")
H2_FRAME_TYPES = frozenset(range(10))


def infer(data: bytes, direction: int, local_port: int, remote_port: int,
          transport: str) -> str | None:
    """The protocol a connection speaks, from its first bytes; None when unsure."""
    if not data:
        return None
    ports = (local_port, remote_port)
    if transport == "udp":
        if _dns_message(data, 0) or (_dns_header(data, 0) and _port(ports, DNS_PORTS)):
            return "dns"
        return None
    if data.startswith(H2_PREFACE):
        return "http2"
    if _HTTP_REQ.match(data) or data.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
        return "http"
    if _REDIS_REQ.match(data):
        return "redis"
    if _pg(data):
        return "postgresql"
    if _mysql(data, ports):
        return "mysql"
    if memcached.binary_request(data) or (
            memcached.binary_response(data) and _port(ports, MEMCACHED_PORTS)):
        return "memcached"
    if _dns_tcp(data) and (_port(ports, DNS_PORTS) or _dns_message(data, 2)):
        return "dns"
    if _h2_frame(data):
        return "http2"
    if _port(ports, REDIS_PORTS) and (_REDIS_REPLY.match(data) or _INLINE.match(data)):
        return "redis"
    if _INLINE.match(data) and data[:4].upper() in (b"PING", b"HELL", b"AUTH"):
        return "redis"
    if _MC_REQ.match(data):
        # Redis takes inline commands too ("get k"): on its ports, it is Redis.
        return "redis" if _port(ports, REDIS_PORTS) else "memcached"
    if _MC_VALUE.match(data):
        return "memcached"
    if _port(ports, MEMCACHED_PORTS) and _MC_REPLY.match(data):
        return "memcached"
    return None


def new_parser(protocol: str, client_side: bool | None,
               transport: str | None = None) -> ConnectionParser:
    """A fresh parser for one connection; `transport` only matters for DNS."""
    cls = _PARSERS[protocol]
    if protocol == "dns":
        return cls(client_side, transport)
    return cls(client_side)


def _port(ports: tuple[int, int], known: frozenset) -> bool:
    return ports[0] in known or ports[1] in known


def _pg(data: bytes) -> bool:
    if len(data) >= 8:
        ln = int.from_bytes(data[0:4], "big")
        code = int.from_bytes(data[4:8], "big")
        if code in (postgresql.PROTO_V3, postgresql.SSL_REQUEST, postgresql.GSS_REQUEST) \
                and 8 <= ln < 10000:
            return True
    if len(data) >= 6 and data[0] in b"QP":
        ln = int.from_bytes(data[1:5], "big")
        if 4 < ln < (1 << 24) and (len(data) < ln + 1 or data[ln] == 0):
            return data[0] == 81 or (len(data) > ln + 1 and data[ln + 1] in b"BDSH")
    if len(data) >= 9 and data[0] == 82 and data[1:5] in (b"\x00\x00\x00\x08",
                                                         b"\x00\x00\x00\x0c"):
        return True  # AuthenticationOk / AuthenticationMD5Password
    return False


def _mysql(data: bytes, ports: tuple[int, int]) -> bool:
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
    if first in (mysql.COM_QUERY, mysql.COM_STMT_PREPARE) and whole:
        return _port(ports, MYSQL_PORTS) or _looks_sql(data[5:])
    return False


def _looks_sql(b: bytes) -> bool:
    return b[:10].split(b" ", 1)[0].upper() in (b"SELECT", b"INSERT", b"UPDATE", b"DELETE",
                                               b"SET", b"SHOW", b"BEGIN", b"COMMIT",
                                               b"CREATE", b"DROP", b"USE", b"CALL")


def _dns_header(data: bytes, off: int) -> bool:
    if len(data) < off + 12:
        return False
    qd = (data[off + 4] << 8) | data[off + 5]
    opcode = (data[off + 2] >> 3) & 0xF
    return qd == 1 and opcode in (0, 2, 4, 5)


def _dns_message(data: bytes, off: int) -> bool:
    if not _dns_header(data, off):
        return False
    try:
        info = _dns.parse(data[off:])
    except Exception:  # noqa: BLE001 - inference must never raise
        return False
    return info is not None and bool(info["name"]) and not info["truncated"]


def _dns_tcp(data: bytes) -> bool:
    if len(data) < 14:
        return False
    ln = (data[0] << 8) | data[1]
    return 12 <= ln and _dns_header(data, 2)


def _h2_frame(data: bytes) -> bool:
    """A server-side first read of HTTP/2 (SETTINGS frame on stream 0)."""
    if len(data) < 9:
        return False
    ln = int.from_bytes(data[0:3], "big")
    return data[3] == 4 and ln % 6 == 0 and ln <= 60 and data[5:9] == b"\x00\x00\x00\x00" \
        and data[4] in (0, 1)
