# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""A look at SQL text before redact.sql and sqlinfo.operation run their expressions.

Statements carrying unique values (the demo's and most applications') are each seen
once, so the cache of descriptions does not help them and `redact.sql` ran two regular
expression scans on each: ~60 % of the PostgreSQL parser's cost a record.  Most text
can hold neither thing those scans look for, and that can be told in one pass in C:
`plain_sql` says so for ASCII text (anything else keeps the expressions: their `\\d`
and case-insensitive matching take non-ASCII characters too).  `operation` is
sqlinfo.operation's two expressions (leading verb, first table) as one scan of ASCII
text, with the engine's order of trying things, backtracking included.
"""

from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_GET_LENGTH


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)


cdef inline int _lower(int c):
    return c + 32 if 65 <= c <= 90 else c


cdef bint _has_word(const unsigned char *p, Py_ssize_t n, const char *w, Py_ssize_t k):
    """w (lower case) occurs in p[:n], ASCII case-insensitively."""
    cdef Py_ssize_t i, j
    for i in range(n - k + 1):
        if _lower(p[i]) != w[0]:
            continue
        j = 1
        while j < k and _lower(p[i + j]) == w[j]:
            j += 1
        if j == k:
            return True
    return False


cdef Py_ssize_t _longest_digit_chain(const unsigned char *p, Py_ssize_t n):
    """The most digits in a run of ASCII digits where one space or dash may stand
    between two digits (how redact's card pattern groups them)."""
    cdef Py_ssize_t i, count = 0, best = 0
    cdef int c
    for i in range(n):
        c = p[i]
        if 48 <= c <= 57:
            count += 1
            if count > best:
                best = count
        elif (c == 32 or c == 45) and count and i + 1 < n and 48 <= p[i + 1] <= 57:
            pass  # one separator between two digits: the chain goes on
        else:
            count = 0
    return best


def plain_sql(str text) -> bool:
    """True when redact.sql would return `text` unchanged because it is ASCII and holds
    neither a password keyword ("identified", "password", any case) nor 13 digits in a
    chain; False means: run the expressions (they decide)."""
    cdef const unsigned char *p
    cdef Py_ssize_t n
    if not PyUnicode_IS_ASCII(text):
        return False
    p = PyUnicode_1BYTE_DATA(text)
    n = PyUnicode_GET_LENGTH(text)
    if _longest_digit_chain(p, n) >= 13:
        return False
    return not (_has_word(p, n, b"password", 8) or _has_word(p, n, b"identified", 10))


# -- operation and table (sqlinfo.operation's expressions, for ASCII text) ---------------
# sqlinfo's expressions, read as the regular expression engine reads them (depth first,
# greedy before shorter, lazy before longer), on ASCII text where `\s` is
# [ \t\n\v\f\r\x1c-\x1f] and `\w` is [A-Za-z0-9_]:
#   lead:  ^(?:\s++|--[^\n]*+\n?|/\*.*?\*/|\()*+([A-Za-z]+)        (re.S; possessive)
#   table: \bfrom\s+NAME (SELECT), \binto\s+NAME (INSERT, REPLACE),
#          \bfrom\s+(?:only\s+)?NAME (DELETE), searched from the verb's end;
#          update\s+(?:only\s+)?NAME at the verb (UPDATE)                (re.I, re.S)
#   NAME:  IDENT(?:\.IDENT)*, IDENT: [\w$]+ | "[^"]+" | `[^`]+`

cdef inline bint _sp(int c):
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


cdef inline bint _letter(int c):
    return 65 <= c <= 90 or 97 <= c <= 122


cdef inline bint _wordc(int c):
    return _letter(c) or 48 <= c <= 57 or c == 95


cdef struct _Text:
    const unsigned char *p
    Py_ssize_t n


cdef inline int _ch(_Text t, Py_ssize_t i):
    """Character i of t, or -1 outside it."""
    if i < 0 or i >= t.n:
        return -1
    return t.p[i]


cdef Py_ssize_t _lead(_Text t):
    """Where the verb's letters start (-1: no match).  The prefix loop is possessive,
    as in sqlinfo._LEAD: blanks, comments and parentheses are consumed whole and never
    given back, so the verb is the first letter after them (linear time)."""
    cdef Py_ssize_t pos = 0, k
    cdef int c
    while True:
        c = _ch(t, pos)
        if _sp(c):
            while _sp(_ch(t, pos)):
                pos += 1
        elif c == 45 and _ch(t, pos + 1) == 45:  # --[^\n]*+\n?
            pos += 2
            while pos < t.n and t.p[pos] != 10:
                pos += 1
            if pos < t.n:
                pos += 1
        elif c == 47 and _ch(t, pos + 1) == 42:  # /\*.*?\*/ : the nearest end
            k = pos + 2
            while k + 1 < t.n and not (t.p[k] == 42 and t.p[k + 1] == 47):
                k += 1
            if k + 1 >= t.n:
                return -1  # unclosed: the loop stops at '/', not a letter
            pos = k + 2
        elif c == 40:  # (
            pos += 1
        else:
            return pos if _letter(c) else -1


cdef Py_ssize_t _spaces(_Text t, Py_ssize_t i):
    """End of the run of \\s starting at i (i itself if none)."""
    while _sp(_ch(t, i)):
        i += 1
    return i


cdef Py_ssize_t _ident(_Text t, Py_ssize_t i):
    """End of an IDENT at i, or -1."""
    cdef int c = _ch(t, i)
    cdef Py_ssize_t k
    if _wordc(c) or c == 36:
        k = i
        while _wordc(_ch(t, k)) or _ch(t, k) == 36:
            k += 1
        return k
    if c == 34 or c == 96:  # "..." or `...`, at least one character inside
        k = i + 1
        while k < t.n and t.p[k] != c:
            k += 1
        if k < t.n and k > i + 1:
            return k + 1
    return -1


cdef Py_ssize_t _name(_Text t, Py_ssize_t i):
    """End of NAME at i, or -1."""
    cdef Py_ssize_t e = _ident(t, i), k
    if e < 0:
        return -1
    while _ch(t, e) == 46:  # .IDENT, as long as one follows
        k = _ident(t, e + 1)
        if k < 0:
            break
        e = k
    return e


cdef bint _word_at(_Text t, Py_ssize_t i, const char *w, Py_ssize_t k):
    """t[i:i+k] == w (lower case), ASCII case-insensitively."""
    cdef Py_ssize_t j
    if i < 0 or i + k > t.n:
        return False
    for j in range(k):
        if _lower(t.p[i + j]) != w[j]:
            return False
    return True


cdef Py_ssize_t _after_keyword(_Text t, Py_ssize_t i, const char *w, Py_ssize_t k,
                               bint bound, bint only, Py_ssize_t *end):
    """NAME's start if `\\b?w\\s+(?:only\\s+)?NAME` matches at i (its end in *end), or -1."""
    cdef Py_ssize_t s, o, e
    if not _word_at(t, i, w, k):
        return -1
    if bound and i > 0 and _wordc(t.p[i - 1]):
        return -1
    s = _spaces(t, i + k)
    if s == i + k:
        return -1
    if only and _word_at(t, s, b"only", 4):
        o = _spaces(t, s + 4)
        if o > s + 4:
            e = _name(t, o)
            if e >= 0:
                end[0] = e
                return o
    e = _name(t, s)
    if e < 0:
        return -1
    end[0] = e
    return s


# Longer text goes to the expressions (the table search is quadratic at most).
cdef Py_ssize_t _MAX_TEXT = 16384
_NOT_TABLE = frozenset({"select", "lateral", "unnest", "generate_series"})


def operation(str sql):
    """(verb, table) as sqlinfo.operation gives them, or None when sql is not ASCII
    (the expressions decide then)."""
    cdef _Text t
    cdef Py_ssize_t start, stop, i, s = -1, e = 0
    if not PyUnicode_IS_ASCII(sql) or PyUnicode_GET_LENGTH(sql) > _MAX_TEXT:
        return None
    t.p = PyUnicode_1BYTE_DATA(sql)
    t.n = PyUnicode_GET_LENGTH(sql)
    start = _lead(t)
    if start < 0:
        return "", ""
    stop = start
    while _letter(_ch(t, stop)):
        stop += 1
    verb = sql[start:stop].upper()
    if verb == "UPDATE":
        s = _after_keyword(t, start, b"update", 6, False, True, &e)
    elif verb == "SELECT" or verb == "INSERT" or verb == "REPLACE" or verb == "DELETE":
        for i in range(stop, t.n):
            if verb == "SELECT":
                s = _after_keyword(t, i, b"from", 4, True, False, &e)
            elif verb == "DELETE":
                s = _after_keyword(t, i, b"from", 4, True, True, &e)
            else:
                s = _after_keyword(t, i, b"into", 4, True, False, &e)
            if s >= 0:
                break
    else:
        return verb, ""
    if s < 0:
        return verb, ""
    table = sql[s:e].replace('"', "").replace("`", "")
    if table.lower() in _NOT_TABLE:
        return verb, ""
    return verb, table


# -- sqlinfo.describe without its Python frames -------------------------------------------
# describe ran four Python functions a statement (describe, redact.sql, label,
# operation) around these two scans, ~6k instructions a call on the demo stream where
# unique literals make a third of the calls miss the cache.  Here the same steps, on the
# same cache: sqlinfo binds its module state once, at import.
cdef object _redact = None  # agent.protocols.redact: REDACT, sql_by_expressions
cdef dict _cache = None  # sqlinfo._CACHE
cdef object _by_expressions = None  # sqlinfo.operation_by_expressions


def bind(redact_mod, dict cache, by_expressions) -> None:
    """What describe reads: the redact module (its switch, read at every call, and its
    expressions), sqlinfo's cache and sqlinfo's operation for text the scan leaves."""
    global _redact, _cache, _by_expressions
    _redact, _cache, _by_expressions = redact_mod, cache, by_expressions


def describe(str sql, Py_ssize_t max_len=4096):
    """sqlinfo.describe_reference, compiled: (redacted text, operation label, verb,
    table), through the same cache, keys and bounds."""
    if _cache is None:
        raise RuntimeError("_sqltext.describe: sqlinfo did not bind it")
    flag = _redact.REDACT
    key = (sql, flag)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    text = sql[:max_len]
    if flag and not plain_sql(text):  # redact.sql
        text = _redact.sql_by_expressions(text)
    found = operation(text)  # sqlinfo.label
    if found is None:
        found = _by_expressions(text)
    verb, table = found
    hit = (text, f"{verb} {table}" if table else verb, verb, table)
    if len(sql) <= 2048:  # bounded: at most ~1024 entries of 2 KiB
        if len(_cache) >= 1024:
            _cache.clear()
        _cache[key] = hit
    return hit
