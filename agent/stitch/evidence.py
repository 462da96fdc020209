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
    i = pick_by_token_sets(ct, [tokens(c) for c in candidates])
    return None if i is None else candidates[i]


def pick_by_token_sets(ct: frozenset[str], cand_tokens: list[frozenset[str]]) -> int | None:
    """pick_by_tokens on token sets computed beforehand: the index of the one candidate
    sharing a token with ct that no other candidate has, or None."""
    if not ct:
        return None
    # how many candidates carry each token: a token of candidate i that no other
    # candidate has is one counted once (linear, not a union of the others per i)
    count: dict[str, int] = {}
    for t in cand_tokens:
        for tok in t:
            count[tok] = count.get(tok, 0) + 1
    hit = None
    for i, t in enumerate(cand_tokens):
        if any(count[tok] == 1 for tok in ct & t):
            if hit is not None:
                return None
            hit = i
    return hit
