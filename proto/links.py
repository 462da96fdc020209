"""The cross-process link rules, declared once (issue 12).

A client span and a server span are the two ends of one exchange when one of these
rules says so, and a link is made only when the rule leaves exactly one candidate: a
wrong link is worse than no link.

- **TCP sequence numbers** (`seq_strength`, `pick_by_seq`): the request's first byte
  has the same TCP sequence number at both ends (`req_seq`).  When both ends also know
  the response's (`resp_seq`), both numbers must agree: 64 bits, and NAT does not
  rewrite them, so a client that called a Kubernetes Service address finds the pod's
  server span ("both seqs", the strong form).  When one end lacks the response's
  number, the connection tuple must be mirrored instead (the client's local address
  is the server's remote one and the other way round).  Among a span's candidates a
  single strong one wins; with no strong one, the mirrored ones are the candidates;
  anything but exactly one candidate links nothing.  Sequence numbers are 32-bit and
  repeat: a store keeping hours of spans also requires the server span to start
  within `SEQ_SKEW_NS` of the client's lifetime (two agents' clocks, a slow request).
- **UDP tuple** (`udp_key`, `UDP_SLACK_NS`): no sequence numbers; the mirrored tuple
  and operation, the server's exchange inside the client's, give or take the slack.
  The agent's stitcher applies it (the server's join does not: UDP spans of two nodes
  carry no key it could look up).
- **Propagated ids**: a request header the application forwards.  Across processes
  (`JOIN_HEADERS`, `header_join_keys`) the client's value and the server's are the
  same header of the same request: identical values link.  Within a process
  (`propagated_ids`) a server span's X-Request-ID or W3C trace id, found again on a
  client span it made, names the client's parent.

Users: the agent's stitcher (agent/stitch/stitcher.py; the compiled one imports
`header_keys` from it and is checked against `pick_by_seq` by a test), the server's
query-time join (server/join/joiner.py) and the service-dependency query
(server/storage/sqlstore.py `dependencies`, whose SQL comes from `seq_strength_sql`
and `pick_sql`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proto.span import KIND_CLIENT, KIND_SERVER

# How far apart the two ends of one TCP exchange may start (see the docstring).
SEQ_SKEW_NS = 5_000_000_000
# UDP: how far the server's exchange may stick out of the client's.
UDP_SLACK_NS = 50_000_000
# Headers whose identical values on a client and a server span link them across
# processes; compared whole (a traceparent names the calling span too).
JOIN_HEADERS = ("x-request-id", "traceparent")

# How well a client span and a server span match by sequence numbers.
NO_MATCH = 0  # another request, or both response numbers known and different
SAME_REQUEST = 1  # same request number, a response number missing, tuple not mirrored
MIRRORED = 2  # same request number, a response number missing, tuple mirrored
BOTH_SEQS = 3  # same request and response numbers

_COUNTERPART = {KIND_CLIENT: KIND_SERVER, KIND_SERVER: KIND_CLIENT}


def counterpart(kind: str) -> str:
    """The kind at the other end of an exchange ("" for spans that have none)."""
    return _COUNTERPART.get(kind, "")


def mirrored(a: Any, b: Any) -> bool:
    """`a` and `b` see one connection from its two ends (a's local is b's remote)."""
    return (a.local.addr, a.local.port, a.remote.addr, a.remote.port) == (
        b.remote.addr, b.remote.port, b.local.addr, b.local.port)


def seq_strength(client: Any, server: Any, skew_ns: int = 0) -> int:
    """How `client` and `server` match by sequence numbers (NO_MATCH .. BOTH_SEQS);
    `skew_ns` > 0 also requires the server to start within that of the client."""
    if client.req_seq is None or client.req_seq != server.req_seq:
        return NO_MATCH
    if skew_ns and not (client.start_ns - skew_ns <= server.start_ns
                        <= client.end_ns + skew_ns):
        return NO_MATCH
    if client.resp_seq is not None and server.resp_seq is not None:
        return BOTH_SEQS if client.resp_seq == server.resp_seq else NO_MATCH
    return MIRRORED if mirrored(client, server) else SAME_REQUEST


def pick_by_seq(strengths: Sequence[int]) -> list[int]:
    """Indexes of the candidates (by their `seq_strength`) the rule keeps: exactly one
    is a link, more are ambiguous (no link), none is no link."""
    strong = [i for i, s in enumerate(strengths) if s == BOTH_SEQS]
    if len(strong) == 1:
        return strong
    if not strong:
        return [i for i, s in enumerate(strengths) if s == MIRRORED]
    return [i for i, s in enumerate(strengths) if s != NO_MATCH]


def udp_key(s: Any) -> tuple:
    """A UDP span's exchange as its server would see it (its local = our remote)."""
    if s.kind == KIND_CLIENT:
        return (s.remote.addr, s.remote.port, s.local.addr, s.local.port, s.operation)
    return (s.local.addr, s.local.port, s.remote.addr, s.remote.port, s.operation)


def udp_within(client: Any, server: Any) -> bool:
    """The UDP server's exchange inside the client's, give or take `UDP_SLACK_NS`."""
    return (client.start_ns <= server.start_ns + UDP_SLACK_NS
            and server.end_ns <= client.end_ns + UDP_SLACK_NS)


def header_join_keys(s: Any) -> list[tuple[str, str]]:
    """(header, value) pairs that link `s` across processes (`JOIN_HEADERS`)."""
    h = s.trace_headers
    return [(name, h[name]) for name in JOIN_HEADERS if h.get(name)]


def propagated_ids(s: Any) -> tuple:
    """Ids an application propagates from a request to the calls it makes: the
    X-Request-ID value and the W3C traceparent's trace id (within a process)."""
    keys = []
    h = s.trace_headers
    rid = h.get("x-request-id")
    if rid:
        keys.append(("x-request-id", rid))
    tp = h.get("traceparent", "").split("-")
    if len(tp) >= 3 and len(tp[1]) == 32:
        keys.append(("trace", tp[1]))
    return tuple(keys)


def lookups(spans: Any) -> set[tuple]:
    """The correlation keys a query-time join looks up for `spans`, as the stores'
    `find_join_fragments` takes them: ("seq", req_seq, counterpart kind) and
    ("header", (name, value), counterpart kind)."""
    out: set[tuple] = set()
    for s in spans:
        want = counterpart(s.kind)
        if not want:
            continue
        if s.req_seq is not None:
            out.add(("seq", s.req_seq, want))
        for hv in header_join_keys(s):
            out.add(("header", hv, want))
    return out


def holds(s: Any, keys: Any) -> bool:
    """`s` is a counterpart some lookup of `keys` (see `lookups`) asks for."""
    if s.kind not in _COUNTERPART:
        return False
    if s.req_seq is not None and ("seq", s.req_seq, s.kind) in keys:
        return True
    return any(("header", hv, s.kind) in keys for hv in header_join_keys(s))


# -- the same rules in ClickHouse SQL (service dependencies) ----------------------


def seq_strength_sql(cl: str, sv: str, skew: str = "") -> str:
    """`seq_strength` of rows `cl` (client) and `sv` (server) that already share
    `req_seq` (the join's equality), as SQL; `skew`: SQL of `skew_ns` ("" = none)."""
    both = f"{cl}.resp_seq IS NOT NULL AND {sv}.resp_seq IS NOT NULL"
    mirror = (f"{cl}.local_addr = {sv}.remote_addr AND {cl}.local_port = {sv}.remote_port "
              f"AND {cl}.remote_addr = {sv}.local_addr AND {cl}.remote_port = {sv}.local_port")
    out = (f"multiIf({both}, if({cl}.resp_seq = {sv}.resp_seq, {BOTH_SEQS}, {NO_MATCH}), "
           f"{mirror}, {MIRRORED}, {SAME_REQUEST})")
    if skew:
        # written without subtraction: start_ns is unsigned
        out = (f"if({sv}.start_ns + {skew} >= {cl}.start_ns AND "
               f"{sv}.start_ns <= {cl}.end_ns + {skew}, {out}, {NO_MATCH})")
    return out


def pick_sql(strength: str) -> str:
    """Aggregate condition over one span's candidate rows: `pick_by_seq` keeps
    exactly one (then the kept candidate is the one of greatest `strength`)."""
    return (f"(countIf({strength} = {BOTH_SEQS}) = 1 OR (countIf({strength} = {BOTH_SEQS}) = 0 "
            f"AND countIf({strength} = {MIRRORED}) = 1))")
