# cython: language_level=3, boundscheck=True, wraparound=False, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""The per-span loop of `agent.protocols.redact.spans` in compiled code.

What gets masked, and how, stays in redact.py: this module only walks a batch and
decides, for each value, whether redact.py's functions must see it, by the same tests
`redact.spans`/`redact.attributes` make (a value shorter than `text()` looks at and
not by-key; a value's result already in redact.py's cache).  Results of the pure
functions are cached as redact.py caches them; a span that changes is copied (the
copy made in C: a new object of the same class with every slot of the original, then
the four redacted fields) when its class is a plain __slots__ class, else by
redact.py's `_copy`.  tests/export/test_redact_compiled.py checks it against the
Python loop (`redact.reference_spans`) on the recorded demo stream and on generated
spans with hostile values.
"""

from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy


from agent.export._slots cimport slot_offset as _slot_offset


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)


cdef inline PyObject** _at(object o, Py_ssize_t off):
    return <PyObject**>((<char*><PyObject*>o) + off)


cdef class Redactor:
    """Redacts batches of spans as `redact.reference_spans` does.

    `mod`: the agent.protocols.redact module (its functions, caches and limits);
    `span_type`: the class whose copies are made in C (its dataclass fields must
    all be plain slots).
    """
    cdef object mod
    cdef dict value_cache
    cdef object value_fn  # redact._value(key, value): cached scrub
    cdef object scrub_fn  # redact._scrub(key, value)
    cdef object text_fn
    cdef object url_query_fn
    cdef object copy_fn
    cdef frozenset keyed
    cdef dict op_cache
    cdef Py_ssize_t short, cache_len, cache_len_cmdline, cache_max, op_cache_max
    cdef object span_type
    cdef object descrs  # the slot descriptors the offsets come from
    cdef Py_ssize_t* offs
    cdef Py_ssize_t noffs
    cdef Py_ssize_t o_attrs, o_res, o_err, o_op
    cdef list names

    def __cinit__(self):
        self.offs = NULL
        self.noffs = 0

    def __dealloc__(self):
        free(self.offs)

    def __init__(self, object mod, object span_type):
        import dataclasses

        self.mod = mod
        self.value_cache = mod._VALUE_CACHE
        self.value_fn = mod._value
        self.scrub_fn = mod._scrub
        self.text_fn = mod.text
        self.url_query_fn = mod.url_query
        self.copy_fn = mod._copy
        self.keyed = mod._KEYED
        self.short = 12  # text() leaves shorter values alone
        self.cache_len = mod._CACHED_LEN  # _value caches values up to this long
        self.cache_len_cmdline = mod._CACHED_LEN_CMDLINE  # ... and command lines to this
        self.cache_max = 8192
        self.op_cache = {}
        self.op_cache_max = 8192
        self.span_type = span_type
        self.o_attrs = self.o_res = self.o_err = self.o_op = -1
        fs = dataclasses.fields(span_type)
        names = [f.name for f in fs]
        offs = [_slot_offset(span_type, n) for n in names]
        if (all(f.init for f in fs) and min(offs) >= 0
                and not hasattr(span_type, "__post_init__")
                and span_type.__dictoffset__ == 0 and span_type.__weakrefoffset__ == 0):
            self.noffs = len(offs)
            self.offs = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * self.noffs)
            if self.offs == NULL:
                raise MemoryError()
            for i in range(self.noffs):
                self.offs[i] = offs[i]
            self.o_attrs = offs[names.index("attributes")]
            self.o_res = offs[names.index("resource")]
            self.o_err = offs[names.index("error")]
            self.o_op = offs[names.index("operation")]
            self.descrs = [span_type.__dict__[n] for n in names]
            self.names = names

    cdef bint _fast_copy(self):
        # The C copy holds while the class's slots are those it was built from.
        cdef Py_ssize_t i
        if self.offs == NULL:
            return False
        d = self.span_type.__dict__
        for i in range(self.noffs):
            if d.get(self.names[i]) is not self.descrs[i]:
                return False
        return True

    cdef object _copy(self, object s, object attrs, object res, object error, object op):
        # A new object of the span's class with every slot of `s` (all set: a slot
        # left unset goes the Python way), then the four redacted fields.
        cdef Py_ssize_t i
        cdef PyObject** src
        cdef PyObject** dst
        cdef PyObject* old
        for i in range(self.noffs):
            if _at(s, self.offs[i])[0] == NULL:
                return self.copy_fn(s, attrs, res, error, op)
        new = self.span_type.__new__(self.span_type)
        for i in range(self.noffs):
            src = _at(s, self.offs[i])
            dst = _at(new, self.offs[i])
            old = dst[0]
            Py_INCREF(<object>src[0])
            dst[0] = src[0]
            Py_XDECREF(old)
        _set(new, self.o_attrs, attrs)
        _set(new, self.o_res, res)
        _set(new, self.o_err, error)
        _set(new, self.o_op, op)
        return new

    cdef object attributes(self, object attrs):
        """redact.attributes(attrs): the same dict when nothing changes."""
        cdef Py_ssize_t pos = 0
        cdef PyObject* kp
        cdef PyObject* vp
        cdef object k, v, new, hit
        cdef object out = attrs
        cdef list changes = None
        if type(attrs) is not dict:
            return self.mod.attributes(attrs)
        while PyDict_Next(attrs, &pos, &kp, &vp):
            k = <object>kp
            v = <object>vp
            if not PyUnicode_CheckExact(v):
                if not PyUnicode_Check(v) or not v:  # str subclasses: as before
                    continue
            elif len(v) < self.short and k not in self.keyed:
                continue  # too short for text() to change, not a by-key value
            if len(v) <= self.cache_len or (len(v) <= self.cache_len_cmdline
                                            and k == "process.command_line"):
                # redact._value, with its cache read here first.
                hit = self.value_cache.get((k, v))
                new = hit if hit is not None else self.value_fn(k, v)
            else:
                new = self.scrub_fn(k, v)
            if new is not v and new != v:
                if changes is None:
                    changes = []
                changes.append((k, new))
        if changes is not None:
            # Applied after the walk: the caller's dict is never changed, nor is the
            # dict being walked.
            out = dict(attrs)
            for k, new in changes:
                out[k] = new
        return out

    cdef object operation(self, object op):
        """The operation text as redact.spans masks it (cached: ops repeat)."""
        hit = self.op_cache.get(op)
        if hit is not None:
            return hit
        new = op
        head, sep, q = op.partition("?")
        if sep:
            new = head + "?" + self.url_query_fn(q)
        new = self.text_fn(new)
        if len(op) <= self.cache_len:
            if len(self.op_cache) >= self.op_cache_max:
                self.op_cache.clear()
            self.op_cache[op] = new
        return new

    def sql_literals(self, str text):
        """redact._SQL_LITERAL.sub(redact._literal, text), or None for the regex."""
        return sql_literals(text)

    def spans(self, list batch):
        """redact.spans(batch) (REDACT on): `batch` itself when nothing changed."""
        cdef dict resources = {}
        cdef list out = []
        cdef bint changed = False
        cdef bint fast = self._fast_copy()
        cdef object s, a, attrs, r, res, error, e, op, o
        for s in batch:
            a = s.attributes
            attrs = self.attributes(a)
            r = s.resource
            res = resources.get(id(r))
            if res is None:
                res = resources[id(r)] = self.attributes(r)
            e = s.error
            error = self.text_fn(e) if e else e
            op = o = s.operation
            if PyUnicode_CheckExact(o) and ("?" in o or len(o) >= self.short):
                op = self.operation(o)
            elif not PyUnicode_CheckExact(o):
                return self.mod.reference_spans(batch)  # whatever that does with it
            if attrs is not a or res is not r or error != e or op != o:
                if fast and type(s) is self.span_type:
                    s = self._copy(s, attrs, res, error, op)
                else:
                    s = self.copy_fn(s, attrs, res, error, op)
                changed = True
            out.append(s)
        return out if changed else batch


cdef inline void _set(object o, Py_ssize_t off, object v):
    cdef PyObject** dst = _at(o, off)
    cdef PyObject* old = dst[0]
    Py_INCREF(v)
    dst[0] = <PyObject*>v
    Py_XDECREF(old)


# -- SQL literals ------------------------------------------------------------------
#
# redact._SQL_LITERAL.sub(redact._literal, text) for ASCII text, as one left-to-right
# scan: at each position the regex's three alternatives in its order (kept tokens,
# string literals, numbers), each matched as Python's backtracking engine would
# (the comments say where backtracking can change a match); a literal becomes "?",
# a kept token and every other character is copied.  Non-ASCII text (where \w and \d
# mean more than [A-Za-z0-9_] and [0-9]) stays with the regex.  The regex cost 5-12 us
# a statement, and statements carrying unique values are seen once each.
# tests/export/test_redact_compiled.py compares both on generated SQL-like text.

cdef inline bint _word(unsigned char c):
    return (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95


cdef inline bint _digit(unsigned char c):
    return c >= 48 and c <= 57


cdef inline bint _hexdigit(unsigned char c):
    return _digit(c) or (c >= 65 and c <= 70) or (c >= 97 and c <= 102)


cdef Py_ssize_t _keep(const unsigned char* s, Py_ssize_t n, Py_ssize_t i):
    """End of a kept token at i ("ident", `ident`, -- comment, /* comment */, $1),
    or -1."""
    cdef unsigned char c = s[i]
    cdef Py_ssize_t j, last_pair
    if c == 34:  # "(?:[^"]|"")*"
        j = i + 1
        last_pair = -1
        while j < n:
            if s[j] == 34:
                if j + 1 < n and s[j + 1] == 34:
                    last_pair = j
                    j += 2
                    continue
                return j + 1
            j += 1
        # Unclosed: backtracking gives back "" pairs; the last one's first quote closes.
        return last_pair + 1 if last_pair >= 0 else -1
    if c == 96:  # `[^`]*`
        j = i + 1
        while j < n:
            if s[j] == 96:
                return j + 1
            j += 1
        return -1
    if c == 45:  # --[^\n]*
        if i + 1 < n and s[i + 1] == 45:
            j = i + 2
            while j < n and s[j] != 10:
                j += 1
            return j
        return -1
    if c == 47:  # /\*.*?\*/
        if i + 1 < n and s[i + 1] == 42:
            j = i + 2
            while j + 1 < n:
                if s[j] == 42 and s[j + 1] == 47:
                    return j + 2
                j += 1
        return -1
    if c == 36:  # \$\d+
        j = i + 1
        while j < n and _digit(s[j]):
            j += 1
        return j if j > i + 1 else -1
    return -1


cdef inline bint _at_end(const unsigned char* s, Py_ssize_t n, Py_ssize_t p):
    # Python's `$` without MULTILINE: the end, or before a newline that ends the text.
    return p == n or (p == n - 1 and s[p] == 10)


cdef Py_ssize_t _string(const unsigned char* s, Py_ssize_t n, Py_ssize_t i):
    """End of a string literal at i (quoted, with an optional E/N/B/X/U prefix and &,
    to the end when unclosed; or dollar-quoted), or -1."""
    cdef unsigned char c = s[i]
    cdef Py_ssize_t j, last_pair, t0, t1, k
    j = -1
    if c == 39:
        j = i
    elif c in b"eEnNbBxXuU":
        if i + 1 < n and s[i + 1] == 39:
            j = i + 1
        elif i + 2 < n and s[i + 1] == 38 and s[i + 2] == 39:
            j = i + 2
    if j >= 0:  # '(?:[^'\\]|''|\\.)*(?:'|$)
        j += 1
        last_pair = -1
        while j < n:
            c = s[j]
            if c == 39:
                if j + 1 < n and s[j + 1] == 39:
                    last_pair = j
                    j += 2
                    continue
                return j + 1
            if c == 92:
                if j + 1 < n:
                    j += 2
                    continue
                # A backslash ending the text: neither token nor end; backtracking
                # gives back "''" pairs, the last one's first quote closes.
                return last_pair + 1 if last_pair >= 0 else -1
            j += 1
        return n  # `$` at the end
    if c != 36:
        return -1
    # \$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|$)
    t0 = t1 = i + 1
    if t0 < n and (_word(s[t0]) and not _digit(s[t0])):
        t1 = t0 + 1
        while t1 < n and _word(s[t1]):
            t1 += 1
        if not (t1 < n and s[t1] == 36):
            t1 = t0  # the tag must be followed by $; without one, $$ must open
    if not (t1 < n and s[t1] == 36):
        return -1
    j = t1 + 1
    while True:
        if j < n and s[j] == 36:
            if t1 > t0:  # $tag$ first, then $$
                k = t1 - t0
                if j + 1 + k < n and memcmp(s + j + 1, s + t0, k) == 0 and s[j + 1 + k] == 36:
                    return j + k + 2
            if j + 1 < n and s[j + 1] == 36:
                return j + 2
        if _at_end(s, n, j):
            return j
        j += 1


cdef Py_ssize_t _number(const unsigned char* s, Py_ssize_t n, Py_ssize_t i):
    """End of a number at i (not after [\\w$.:], not followed by [\\w.]), or -1.
    Backtracking inside a number never ends it where the greedy match did not: a
    shorter match is followed by a digit, '.', 'e' or 'x'."""
    cdef Py_ssize_t j, k
    cdef unsigned char c
    if i > 0:
        c = s[i - 1]
        if _word(c) or c == 36 or c == 46 or c == 58:
            return -1
    j = i + 1 if s[i] == 45 else i
    if j >= n:
        return -1
    # 0[xX][0-9a-fA-F]+
    if s[j] == 48 and j + 2 < n and (s[j + 1] == 120 or s[j + 1] == 88) and _hexdigit(s[j + 2]):
        k = j + 2
        while k < n and _hexdigit(s[k]):
            k += 1
        if not (k < n and (_word(s[k]) or s[k] == 46)):
            return k
    k = -1
    if _digit(s[j]):  # \d+\.?\d*
        k = j
        while k < n and _digit(s[k]):
            k += 1
        if k < n and s[k] == 46:
            k += 1
            while k < n and _digit(s[k]):
                k += 1
    elif s[j] == 46 and j + 1 < n and _digit(s[j + 1]):  # \.\d+
        k = j + 1
        while k < n and _digit(s[k]):
            k += 1
    if k < 0:
        return -1
    k = _exponent(s, n, k)
    if k < n and (_word(s[k]) or s[k] == 46):
        return -1
    return k


cdef inline Py_ssize_t _exponent(const unsigned char* s, Py_ssize_t n, Py_ssize_t k):
    # (?:[eE][-+]?\d+)? at k: its end, or k.
    cdef Py_ssize_t e
    if k < n and (s[k] == 101 or s[k] == 69):
        e = k + 1
        if e < n and (s[e] == 43 or s[e] == 45):
            e += 1
        if e < n and _digit(s[e]):
            while e < n and _digit(s[e]):
                e += 1
            return e
    return k


def sql_literals(str text):
    """redact._SQL_LITERAL.sub(redact._literal, text) for ASCII text; None for other
    text (the regex's business)."""
    cdef Py_ssize_t n, i, e, start, o
    cdef const unsigned char* s
    cdef char* out
    if not text.isascii():
        return None
    s = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &n)  # ASCII: its own data
    out = NULL
    o = 0
    i = start = 0
    try:
        while i < n:
            e = _keep(s, n, i)
            if e >= 0:
                i = e
                continue
            e = _string(s, n, i)
            if e < 0:
                e = _number(s, n, i)
            if e >= 0:
                if out == NULL:
                    out = <char*>malloc(n + 1)  # "?" never makes the text longer
                    if out == NULL:
                        raise MemoryError()
                memcpy(out + o, s + start, i - start)
                o += i - start
                out[o] = 63  # '?'
                o += 1
                i = start = e
                continue
            i += 1
        if out == NULL:
            return text
        memcpy(out + o, s + start, n - start)
        o += n - start
        return PyUnicode_DecodeASCII(out, o, NULL)
    finally:
        free(out)
