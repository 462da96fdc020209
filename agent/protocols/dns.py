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
from ._infer import DNS_PORTS, DNS_TCP, DNS_UDP
from .spec import InferenceRule, ProtocolSpec

__all__ = ["DNS_PORTS", "MAX_ANSWERS", "MAX_PEER_SESSIONS", "PEER_IDLE_NS", "STATS", "DirStream",
           "DnsParser", "bound_peer_sessions", "parse", "rcode_name", "read_name",
           "type_name"]


# A header with one question (opcode query, status, notify or update) on a DNS port, or
# a whole message read by the parser; over TCP after its 2-byte length: _infer.pyx.
PROTOCOL = ProtocolSpec(("dns",), DnsParser, STATS,
                        (InferenceRule(10, "udp", DNS_UDP), InferenceRule(70, "tcp", DNS_TCP)))


# -- sessions per client port ------------------------------------------------------------
# A DNS server's unconnected UDP socket (dnsmasq, CoreDNS) gets a session per client
# address and port (agent/conn/_core.pyx keys them (conn, peer, port)), and resolvers
# take a new source port for each query: one session per query, which the assembler
# would hold for its 120 s idle time (Session, ConnMeta, parser and the first event's
# record each), up to the assembler's 50 000 sessions, after which every new connection
# of any protocol is refused.  Such a session is one exchange: resolvers give up on an
# answer after a few seconds (glibc 5 s, Go 5 s, CoreDNS forward 5 s), so it ends well
# before PEER_IDLE_NS, and MAX_PEER_SESSIONS of them cover 800 queries/s answered within
# that time.
PEER_IDLE_NS = 10 * 10**9
MAX_PEER_SESSIONS = 8192


def bound_peer_sessions(assembler, now_ns: int, idle_ns: int = PEER_IDLE_NS,
                        max_sessions: int = MAX_PEER_SESSIONS) -> tuple[int, int]:
    """End the per-peer DNS sessions idle for more than idle_ns, then the least recently
    active beyond max_sessions, as the assembler ends idle sessions (what their parser
    holds becomes incomplete spans, reason "idle").  Counted in the assembler's stats
    (dns_peer_sessions_idle, dns_peer_sessions_over_limit); returns both counts."""
    sessions = assembler.sessions
    peer = []
    for keys in assembler.udp_keys.values():
        for key in keys:
            s = sessions.get(key)
            if s is not None and s.protocol == "dns":
                peer.append((s.last_ns, key))
    idle = [key for last, key in peer if now_ns - last > idle_ns]
    over: list = []
    excess = len(peer) - len(idle) - max_sessions
    if excess > 0:
        live = sorted((x for x in peer if now_ns - x[0] <= idle_ns), key=lambda x: x[0])
        over = [key for _last, key in live[:excess]]
    if not idle and not over:
        return 0, 0
    # SpanAssembler.expire is the one public way to end a session with its parser
    # flushed and its peer index kept right: it is given the victims alone.
    victims = {key: sessions.pop(key) for key in idle + over}
    try:
        assembler.sessions = victims
        assembler.expire(now_ns, -(1 << 62))
    finally:
        assembler.sessions = sessions
        sessions.update(victims)  # none left unless expire failed midway
    stats = assembler.stats
    stats["dns_peer_sessions_idle"] += len(idle)
    stats["dns_peer_sessions_over_limit"] += len(over)
    return len(idle), len(over)
