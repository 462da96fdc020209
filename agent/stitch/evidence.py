"""Payload evidence for a parent link where thread order alone is ambiguous.

Downstream requests usually repeat an id of the request that caused them (a path
segment, a key, a literal).  A rare token that a downstream request shares with
exactly one candidate parent is evidence; none or several is a refusal."""

from __future__ import annotations

import re

from proto.span import Span

_TOKEN = re.compile(r"[A-Za-z0-9_\-]{8,}")
_FIELDS = ("url.path", "url.query", "db.query.text", "rpc.method", "dns.question.name")
# Long but common words are not ids.
_COMMON = frozenset({"application", "localhost", "keep-alive", "text/html", "undefined",
                     "transfer-encoding", "content-type", "content-length"})


def tokens(s: Span) -> frozenset[str]:
    """Id-like tokens of what a span's request carried (8+ chars, with a digit)."""
    text = [s.operation]
    attrs = s.attributes
    for k in _FIELDS:
        v = attrs.get(k)
        if isinstance(v, str):
            text.append(v)
    out = set()
    for t in text:
        for tok in _TOKEN.findall(t):
            if any(c.isdigit() for c in tok) and tok.lower() not in _COMMON:
                out.add(tok)
    return frozenset(out)


def pick_by_tokens(child: Span, candidates: list[Span]) -> Span | None:
    """The one candidate sharing a token with child that no other candidate has."""
    ct = tokens(child)
    if not ct:
        return None
    cand_tokens = [tokens(c) for c in candidates]
    hits = []
    for i, c in enumerate(candidates):
        others = set().union(*(t for j, t in enumerate(cand_tokens) if j != i))
        if (ct & cand_tokens[i]) - others:
            hits.append(c)
    return hits[0] if len(hits) == 1 else None
