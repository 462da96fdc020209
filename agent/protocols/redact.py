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
_CARD = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])")
_SQL_PASSWORD = re.compile(
    r"""(?ix)(\b(?:identified\s+(?:with\s+\S+\s+)?by|password\s*(?:=|\()?|
    password\s+for\s+\S+\s*=)\s*(?:password\s*\(\s*)?)('(?:[^'\\]|''|\\.)*'|"(?:[^"\\]|\\.)*")"""
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
    digits = re.sub(r"[ -]", "", m.group(0))
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "?"
    return m.group(0)


def sql(text: str) -> str:
    """SQL text with card-number literals and inline passwords masked (if REDACT)."""
    if not REDACT:
        return text
    if "'" in text or '"' in text:
        text = _SQL_PASSWORD.sub(lambda m: m.group(1) + "'" + MASK + "'", text)
    if _CARD.search(text):
        text = _CARD.sub(_mask_card, text)
    return text


def header(name: str, value: str) -> str:
    """A header value, masked when the header carries credentials (if REDACT)."""
    if REDACT and name in SENSITIVE_HEADERS:
        return MASK
    return value
