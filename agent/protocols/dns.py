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

__all__ = ["MAX_ANSWERS", "STATS", "DirStream", "DnsParser", "parse", "rcode_name",
           "read_name", "type_name"]
