"""DNS over UDP (one datagram per chunk) and TCP (2-byte length prefix).

The parser is compiled (`_dns.pyx`, Cython, built by `pip install`); this module is the
name the rest of the agent imports it by (the registry as `_dns`, for `parse`).

Queries and responses are matched by message id.  The header, question and the
common answer types (A, AAAA, CNAME, PTR, NS, MX, TXT) are decoded by hand: building a
`dns.message.Message` costs ~75 us a message.  dnspython still supplies the mnemonics
(type, rcode names) and decodes the rarer answer types.
"""

from __future__ import annotations

from ._dns import (
    MAX_ANSWERS,
    STATS,
    DirStream,
    DnsParser,
    parse,
    rcode_name,
    read_name,
    type_name,
)
from .spec import InferenceRule, Ports, ProtocolSpec, on_port

__all__ = ["MAX_ANSWERS", "STATS", "DirStream", "DnsParser", "parse", "rcode_name",
           "read_name", "type_name"]


DNS_PORTS = frozenset((53, 5353, 853))


def _header(data: bytes, off: int) -> bool:
    if len(data) < off + 12:
        return False
    qd = (data[off + 4] << 8) | data[off + 5]
    opcode = (data[off + 2] >> 3) & 0xF
    return qd == 1 and opcode in (0, 2, 4, 5)


def _message(data: bytes, off: int) -> bool:
    if not _header(data, off):
        return False
    try:
        info = parse(data[off:])
    except Exception:  # noqa: BLE001 - inference must never raise
        return False
    return info is not None and bool(info["name"]) and not info["truncated"]


def _udp(data: bytes, ports: Ports) -> str | None:
    if _message(data, 0) or (_header(data, 0) and on_port(ports, DNS_PORTS)):
        return "dns"
    return None


def _tcp(data: bytes, ports: Ports) -> str | None:
    """Over TCP a message has a 2-byte length prefix."""
    if len(data) < 14 or ((data[0] << 8) | data[1]) < 12 or not _header(data, 2):
        return None
    return "dns" if on_port(ports, DNS_PORTS) or _message(data, 2) else None


PROTOCOL = ProtocolSpec(("dns",), DnsParser, STATS,
                        (InferenceRule(10, "udp", _udp), InferenceRule(70, "tcp", _tcp)))
