"""Redaction of secrets before they reach a record, on by default.

`REDACT` is the module-level switch (set `agent.protocols.redact.REDACT = False` to keep
values).  Parsers never extract passwords from PostgreSQL/MySQL start-up and auth
messages at all; what this module masks is what does get extracted: sensitive HTTP
header values, card-number-like SQL literals (13-19 digits, Luhn-valid) and
passwords written into SQL text (`IDENTIFIED BY '...'`, `PASSWORD '...'`).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from ._sqltext import plain_sql

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
    if not REDACT or plain_sql(text):
        return text
    return sql_by_expressions(text)


def sql_by_expressions(text: str) -> str:
    """What `sql` does to text the compiled look (`_sqltext.plain_sql`) cannot clear."""
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


# -- captured attributes, at the export boundary ------------------------------------
#
# The parsers mask what they extract (above).  What follows is applied to every span
# the agent exports (agent/export/batcher.py), whatever produced it: URL query values
# of sensitive names, SQL literals in statement text, bearer tokens, JWTs, well-known
# API key shapes and credentials in URLs, anywhere in attribute and resource values,
# and secrets in process command lines.

# Query parameter names whose values are secrets: matched as a part of the name
# ("api_key", "X-Amz-Signature", "client_secret", "sessionid").
_SENSITIVE_NAME = re.compile(
    r"(?i)(pass(?:wd|word)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|"
    r"private[-_]?key|auth(?!or)|credential|session|sig(?:nature)?$|signature|"
    r"^code$|^key$|^sid$|cookie|^otp$|^pin$|^ssn$)")
_QUERY_HINTS = ("pass", "pwd", "secret", "token", "key", "auth", "credential", "session",
                "sig", "code", "sid", "cookie", "otp", "pin", "ssn")
_QUERY_PAIR = re.compile(r"([^&;=]*)=([^&;]*)")
# Authorization schemes written into any text, and tokens of known shapes.
_TOKENS = re.compile(
    r"""(?x)
    (?P<scheme>(?<![\w/.-])(?:[Bb]earer|BEARER|[Bb]asic|BASIC|[Tt]oken|[Dd]igest)\s+)
        (?!-)(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}   # not a word, not a flag
    | eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*     # JWT / JWS
    | \b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}               # Stripe-style keys
    | \bgh[pousr]_[A-Za-z0-9]{20,}                               # GitHub tokens
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                             # Slack tokens
    | \bAKIA[0-9A-Z]{16}\b                                       # AWS access key ids
    | \bglpat-[A-Za-z0-9_-]{20,}                                 # GitLab tokens
    """)
# user:password@ in a URL (postgres://app:s3cr3t@db, https://u:p@host/).
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)([^@/\s]+)(@)")
# --password=x, --db-password x, -p x is not matched (too common a flag for other
# things); PASSWORD=x, api_key=x, --token=x ...
_SECRET_FLAG = re.compile(
    r"""(?ix)
    (--?[\w.-]*(?:pass(?:wd|word)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|
        private[-_]?key|credentials?)[\w.-]*(?:=|\s+))
    (?!-)(\S+)
    | (\b[\w.]*(?:PASS(?:WD|WORD)?|PWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY)[\w.]*=)(\S+)
    """)
# SQL: literals become "?" (pg_stat_statements style); identifiers, comments,
# placeholders ($1, ?, :name) and keywords stay, so the statement's shape is kept.
_SQL_LITERAL = re.compile(
    r"""(?xs)
    (?P<keep>"(?:[^"]|"")*"|`[^`]*`|--[^\n]*|/\*.*?\*/|\$\d+)
    | (?P<str>(?:[eEnNbBxXuU]&?)?'(?:[^'\\]|''|\\.)*(?:'|$)
        | \$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|$))
    | (?P<num>(?<![\w$.:])-?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
        (?![\w.]))
    """)
_SQL_CACHE: dict[str, str] = {}
_VALUE_CACHE: dict[tuple[str, str], str] = {}
_MAX_SCAN = 64 * 1024  # longer values are capped by the server (4 KiB) anyway


def _literal(m: re.Match) -> str:
    return m.group("keep") or "?"


def sql_literals(text: str) -> str:
    """`text` with every string and number literal replaced by `?` (if REDACT)."""
    if not REDACT or not text:
        return text
    hit = _SQL_CACHE.get(text)
    if hit is None:
        fast = _redactor()
        # The compiled scan of ASCII text (the same substitution: _redact.pyx), else
        # the regex: statements carrying unique values are each seen once or twice.
        hit = fast.sql_literals(text) if fast else None
        if hit is None:
            hit = _SQL_LITERAL.sub(_literal, text)
        if len(text) <= 2048:  # statements repeat (prepared, ORMs): a bounded cache
            if len(_SQL_CACHE) >= 1024:
                _SQL_CACHE.clear()
            _SQL_CACHE[text] = hit
    return hit


def url_query(query: str) -> str:
    """A URL query string with the values of sensitive parameters masked (if REDACT)."""
    if not REDACT or "=" not in query:
        return query
    low = query.lower()
    if not any(h in low for h in _QUERY_HINTS):
        return query
    return _QUERY_PAIR.sub(
        lambda m: f"{m.group(1)}={MASK}" if _SENSITIVE_NAME.search(m.group(1).strip())
        else m.group(0), query)


def _token_hint(v: str) -> bool:
    # Substring tests (tens of ns each) spare the regex on the common value, which
    # holds no token: the regex costs 10-40 us a value on a busy machine.
    return ("earer" in v or "EARER" in v or "asic" in v or "ASIC" in v or "oken" in v
            or "igest" in v or "eyJ" in v or "_live_" in v or "_test_" in v or "gh" in v
            or "xox" in v or "AKIA" in v or "glpat-" in v)


def text(value: str) -> str:
    """Any captured text with bearer tokens, JWTs, known API key shapes and URL
    credentials masked (if REDACT)."""
    if not REDACT or len(value) < 12:
        return value
    if "://" in value and "@" in value:
        value = _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + m.group(3), value)
    if not _token_hint(value):
        return value
    return _TOKENS.sub(lambda m: (m.group("scheme") or "") + MASK, value)


def _flag_value(m: re.Match) -> str:
    flag = m.group(1) or m.group(3)
    # --token-file PATH, --password-file=PATH: a path to a secret, not the secret.
    if re.search(r"(?i)[-_.](file|path|dir)\W*$", flag):
        return m.group(0)
    return flag + MASK


def command_line(cmdline: str) -> str:
    """A process command line with password-like flags and URL credentials masked."""
    if not REDACT or not cmdline:
        return cmdline
    cmdline = _SECRET_FLAG.sub(_flag_value, cmdline)
    return text(cmdline)


# Values cached up to this long; command lines longer still: every span of a process
# carries its command line (the resource), often a few hundred characters, and scanning
# it per span cost the demo's agent ~15 % of its CPU.
_CACHED_LEN = 256
_CACHED_LEN_CMDLINE = 4096


def _cached(key: str, value: str) -> bool:
    n = len(value)
    return n <= _CACHED_LEN or (n <= _CACHED_LEN_CMDLINE and key == "process.command_line")


def _value(key: str, value: str) -> str:
    # Most values repeat (hosts, user agents, statements, command lines): cached.
    if _cached(key, value):
        hit = _VALUE_CACHE.get((key, value))
        if hit is None:
            if len(_VALUE_CACHE) >= 8192:
                _VALUE_CACHE.clear()
            hit = _VALUE_CACHE[(key, value)] = _scrub(key, value)
        return hit
    return _scrub(key, value)


def _scrub(key: str, value: str) -> str:
    if len(value) > _MAX_SCAN:
        value = value[:_MAX_SCAN]
    if key == "url.query":
        value = url_query(value)
    elif key == "url.full" and "?" in value:
        head, _, q = value.partition("?")
        value = head + "?" + url_query(q)
    elif key in ("db.query.text", "db.statement"):
        value = sql_literals(value)
    elif key == "process.command_line":
        return command_line(value)
    return text(value)


# Keys whose values _scrub treats by key (not only as text): a short value of these
# can still change ("id=1" in SQL); any other value shorter than text()'s 12
# characters never does, and is not looked at (most values: ports, methods,
# addresses, status codes).
_KEYED = frozenset({"url.query", "url.full", "db.query.text", "db.statement",
                    "process.command_line"})


def attributes(attrs: dict) -> dict:
    """A span's attribute or resource dict redacted (if REDACT): the same dict when
    nothing needs masking, else a new one (the caller's is never changed)."""
    if not REDACT:
        return attrs
    out = attrs
    keyed = _KEYED
    for k, v in attrs.items():
        if type(v) is not str:
            if not isinstance(v, str) or not v:  # str subclasses: as before
                continue
        elif len(v) < 12 and k not in keyed:
            continue  # too short for text() to change, not a by-key value: kept
        new = _value(k, v)
        if new != v:
            if out is attrs:
                out = dict(attrs)
            out[k] = new
    return out


_COPIERS: dict[type, tuple | None] = {}


def _copy(s, attributes: dict, resource: dict, error: str, operation: str):
    """dataclasses.replace(s, ...) for these four fields, at a fraction of its cost
    (its generic keyword path was ~8 us a span): the constructor called positionally
    with the other fields as they are, for dataclasses whose fields all go through
    __init__ (Span); anything else through dataclasses.replace."""
    cp = _COPIERS.get(type(s), False)
    if cp is False:
        import dataclasses
        import operator

        fs = dataclasses.fields(s)
        cp = None
        names = [f.name for f in fs]
        if all(f.init for f in fs) and {"attributes", "resource", "error",
                                        "operation"} <= set(names):
            cp = (operator.attrgetter(*names), names.index("attributes"),
                  names.index("resource"), names.index("error"), names.index("operation"))
        _COPIERS[type(s)] = cp
    if cp is None:
        from dataclasses import replace

        return replace(s, attributes=attributes, resource=resource, error=error,
                        operation=operation)
    get, ia, ir, ie, io = cp
    args = list(get(s))
    args[ia], args[ir], args[ie], args[io] = attributes, resource, error, operation
    return type(s)(*args)


def reference_spans(batch: list) -> list:
    """The Python loop of `spans` (the compiled one, agent/export/_redact.pyx, must
    equal it: tests/export/test_redact_compiled.py).

    `batch` with every span redacted: attributes, resource and the free-text
    fields (error text, operation) that can quote a request.  Spans that change are
    copies: the originals may be held elsewhere (printed traces, the demo's fidelity
    count), and are left as they are.  Returns `batch` itself when nothing changed."""
    if not REDACT:
        return batch
    resources: dict[int, dict] = {}  # resources are shared by the spans of a process
    out = []
    changed = False
    for s in batch:
        attrs = attributes(s.attributes)
        res = resources.get(id(s.resource))
        if res is None:
            res = resources[id(s.resource)] = attributes(s.resource)
        error = text(s.error) if s.error else s.error
        op = s.operation
        if "?" in op or len(op) >= 12:
            head, sep, q = op.partition("?")
            if sep:
                op = head + "?" + url_query(q)
            op = text(op)
        if (attrs is not s.attributes or res is not s.resource or error != s.error
                or op != s.operation):
            s = _copy(s, attrs, res, error, op)
            changed = True
        out.append(s)
    return out if changed else batch


_REDACTOR: Any = None  # the compiled loop; False: not built


def _redactor() -> Any:
    global _REDACTOR
    if _REDACTOR is None:
        try:
            from agent.export._redact import Redactor
            from proto.span import Span

            _REDACTOR = Redactor(sys.modules[__name__], Span)
        except ImportError:  # not built: the Python loop
            _REDACTOR = False
    return _REDACTOR


def spans(batch: list) -> list:
    """`batch` with every span redacted: attributes, resource and the free-text
    fields (error text, operation) that can quote a request.  Spans that change are
    copies: the originals may be held elsewhere (printed traces, the demo's fidelity
    count), and are left as they are.  Returns `batch` itself when nothing changed.

    The per-span loop is compiled (agent/export/_redact.pyx: ~1 us a span where this
    module's loop cost 4-6); what is masked, and how, is decided here either way."""
    if not REDACT:
        return batch
    r = _redactor()
    if r and type(batch) is list:
        return r.spans(batch)
    return reference_spans(batch)
