"""Operation name and table from SQL text: "SELECT users", "INSERT orders", "BEGIN".

Only a quick look at the leading keyword and the first table after FROM / INTO /
UPDATE / JOIN: spans need a short operation label, not a SQL parser.
"""

from __future__ import annotations

import re

from . import _sqltext, redact
from ._sqltext import operation as _scan

# Possessive: blanks, comments and parentheses before the verb are consumed whole and
# never given back.  The backtracking form took exponential time on text a client sends
# ("--" * 200, 40 blanks and no verb: a hung parser thread) and found verbs inside
# comments ("-- foo" gave "O").
_LEAD = re.compile(r"^(?:\s++|--[^\n]*+\n?|/\*.*?\*/|\()*+([A-Za-z]+)", re.S)
_IDENT = r"(?:[\w$]+|\"[^\"]+\"|`[^`]+`)"
_NAME = rf"({_IDENT}(?:\.{_IDENT})*)"
_TABLE = {
    "SELECT": re.compile(rf"(?is)\bfrom\s+{_NAME}"),
    "INSERT": re.compile(rf"(?is)\binto\s+{_NAME}"),
    "UPDATE": re.compile(rf"(?is)update\s+(?:only\s+)?{_NAME}"),
    "DELETE": re.compile(rf"(?is)\bfrom\s+(?:only\s+)?{_NAME}"),
}
_TABLE["REPLACE"] = _TABLE["INSERT"]
_NOT_TABLE = frozenset({"select", "lateral", "unnest", "generate_series"})


def operation(sql: str) -> tuple[str, str]:
    """(verb, table) of a statement; table is "" when not found."""
    found = _scan(sql)  # the expressions below, compiled, for ASCII text
    return found if found is not None else operation_by_expressions(sql)


def operation_by_expressions(sql: str) -> tuple[str, str]:
    """What `operation` does with text the compiled scan does not take (not ASCII)."""
    m = _LEAD.match(sql)
    if not m:
        return "", ""
    verb = m.group(1).upper()
    rx = _TABLE.get(verb)
    if rx is None:
        return verb, ""
    t = rx.match(sql, m.start(1)) if verb == "UPDATE" else rx.search(sql, m.end())
    if not t:
        return verb, ""
    table = t.group(1).replace('"', "").replace("`", "")
    if table.lower() in _NOT_TABLE:
        return verb, ""
    return verb, table


def label(sql: str) -> tuple[str, str, str]:
    """(operation label, verb, table)."""
    verb, table = operation(sql)
    return (f"{verb} {table}" if table else verb), verb, table


_CACHE: dict[tuple[str, bool], tuple[str, str, str, str]] = {}


def describe_reference(sql: str, max_len: int = 4096) -> tuple[str, str, str, str]:
    """(redacted text, operation label, verb, table) of a statement.

    Statements repeat (prepared statements, ORMs), so results are kept in a bounded
    cache keyed by the text and the redaction switch.  `describe` is this, compiled
    (_sqltext.describe: the same steps on the same cache, without four Python frames a
    statement); tests/protocols/test_sqltext.py holds them equal.
    """
    key = (sql, redact.REDACT)
    hit = _CACHE.get(key)
    if hit is None:
        text = redact.sql(sql[:max_len])
        hit = (text, *label(text))
        if len(sql) <= 2048:  # bounded: at most ~1024 entries of 2 KiB
            if len(_CACHE) >= 1024:
                _CACHE.clear()
            _CACHE[key] = hit
    return hit


_sqltext.bind(redact, _CACHE, operation_by_expressions)
describe = _sqltext.describe
