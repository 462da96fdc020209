"""Redaction of secrets before they reach a record, on by default.

`REDACT` is the module-level switch (set `agent.protocols.redact.REDACT = False` to keep
values).  Parsers never extract passwords from PostgreSQL/MySQL start-up and auth
messages at all; what this module masks is what does get extracted: sensitive HTTP
header values, card-number-like SQL literals (13-19 digits, Luhn-valid) and
passwords written into SQL text (`IDENTIFIED BY '...'`, `PASSWORD '...'`).
"""

from __future__ import annotations

import re

REDACT = True
MASK = "[REDACTED]"

SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

# Digits possibly grouped by single spaces or dashes, as card numbers are written.
# Not inside a longer digit run; letters around are fine ('card_4111...', 'x4111...').
_CARD = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
# The value after a password keyword: a quoted literal ('...', "...", PostgreSQL's
# E'...' and $tag$...$tag$), or a quote the capture cut short (masked to the end).
_SQL_PASSWORD = re.compile(
    r"""(?ix)(\b(?:identified\s+(?:with\s+\S+\s+)?by|password\s*(?:=|\()?|
    password\s+for\s+\S+\s*=)\s*(?:password\s*\(\s*)?)
    ([en]?'(?:[^'\\]|''|\\.)*'|"(?:[^"\\]|\\.)*"|\$(\w*)\$.*?\$\3\$|[en]?'[^']*$|"[^"]*$)"""
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i & 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _mask_card(m: re.Match) -> str:
    text = m.group(0)
    digits = re.sub(r"[ -]", "", text)
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "?"
    # Grouped digits may hold a card beside other numbers ("4111 1111 1111 1111 123",
    # "4111111111111111 12/27"): try each run of whole groups.
    groups = re.split(r"[ -]", text)
    for i in range(len(groups)):
        for j in range(len(groups), i, -1):
            run = "".join(groups[i:j])
            if 13 <= len(run) <= 19 and luhn_ok(run):
                return " ".join(groups[:i] + ["?"] + groups[j:])
    return text


def sql(text: str) -> str:
    """SQL text with card-number literals and inline passwords masked (if REDACT)."""
    if not REDACT:
        return text
    if "'" in text or '"' in text or "$" in text:
        text = _SQL_PASSWORD.sub(lambda m: m.group(1) + "'" + MASK + "'", text)
    if _CARD.search(text):
        text = _CARD.sub(_mask_card, text)
    return text


def header(name: str, value: str) -> str:
    """A header value, masked when the header carries credentials (if REDACT)."""
    if REDACT and name in SENSITIVE_HEADERS:
        return MASK
    return value
