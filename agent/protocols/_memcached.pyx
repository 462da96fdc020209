# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""memcached in compiled code: text protocol (classic and meta commands) and binary
protocol.

Text requests are a command line, followed for storage commands (`set`... `cas`, `ms`)
by a data block whose length the line gives; replies are one line, except `VALUE`
blocks up to `END` (retrieval), `STAT` lines up to `END` and `VA` with its data block.
Binary frames have a 24-byte header (magic 0x80 request / 0x81 response) with the body
length, so they are skipped by length like a RESP bulk.  Data blocks and values are
never buffered beyond `WAIT_BLOCK` and never read: records carry commands and keys only.

Matching is first in, first out, as the server answers in order, with these twists:
classic `noreply` commands get no reply at all (their record goes out at once, outcome
unknown); meta commands with the `q` flag and binary quiet opcodes are answered only
when something is worth saying (a hit, an error), so a reply may skip them: it is paired
with the first pending request it fits (same opaque `O` token or `k` key, a reply code
that command can give, the same binary opcode and opaque), and the quiet requests it
passed over are done (quiet means "success" or "miss"); if a later quiet request could
have taken it too, both are marked `ambiguous`.  memcached 1.6 drops the replies queued
before the CLIENT_ERROR of a retrieval with an over-long key: seen, that is undone.

This is the former Python parser (`memcached.py` up to commit cc53527) on the
compiled stream plumbing every parser shares (`_stream.StreamParser`); what leaves it
is the same: `base.Record`s holding `base.Message`s,
and `STATS` counters (tests/protocols/test_compiled_equivalence_memcached.py checks it
against that Python module).  Payload bytes are read only through `_Bytes` views
(pointer + length of a `bytes` object the caller keeps alive), every index checked
against that length before it is read.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

from ._stream cimport DirStream, Pending, StreamParser, new_message, new_record
from ._bytes cimport _Bytes, _at, _view

import re

from . import redact
from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    Message,
    Record,
    new_stats,
)

STATS = new_stats()
globals()["DirStream"] = DirStream  # the name the .py module exports (cimported here)

# A request line longer than this is not memcached (a multi-get of ~60 keys of the
# maximum 250 bytes fits): framing was lost.
MAX_LINE = 16384
# Data blocks up to this size are waited for whole; longer ones are skipped by length.
WAIT_BLOCK = 4096
MAX_KEY = 250
# Keys shown in db.query.text of a multi-key retrieval; the count goes to
# db.operation.batch.size.
SHOW_KEYS = 10
MAGIC_REQ, MAGIC_RESP = 0x80, 0x81
HEADER = 24

cdef Py_ssize_t C_MAX_LINE = MAX_LINE
cdef long long C_WAIT_BLOCK = WAIT_BLOCK
cdef Py_ssize_t C_MAX_KEY = MAX_KEY
cdef Py_ssize_t C_SHOW_KEYS = SHOW_KEYS
cdef Py_ssize_t C_HEADER = HEADER
cdef Py_ssize_t C_MAX_PENDING = MAX_PENDING

# -- text commands ----------------------------------------------------------------------
cdef enum:
    K_STORE = 0
    K_CAS = 1
    K_MS = 2
    K_GET = 3
    K_GAT = 4
    K_KEY = 5
    K_META = 6
    K_NOKEY = 7
    K_QUIT = 8
    K_OTHER = 9

_COMMANDS = {
    b"set": K_STORE, b"add": K_STORE, b"replace": K_STORE, b"append": K_STORE,
    b"prepend": K_STORE, b"cas": K_CAS, b"ms": K_MS,
    b"get": K_GET, b"gets": K_GET, b"gat": K_GAT, b"gats": K_GAT,
    b"delete": K_KEY, b"incr": K_KEY, b"decr": K_KEY, b"touch": K_KEY,
    b"mg": K_META, b"md": K_META, b"ma": K_META, b"me": K_META, b"mn": K_META,
    b"flush_all": K_NOKEY, b"verbosity": K_NOKEY, b"version": K_NOKEY, b"stats": K_NOKEY,
    b"quit": K_QUIT,
    b"cache_memlimit": K_NOKEY, b"shutdown": K_NOKEY, b"lru_crawler": K_NOKEY,
    b"slabs": K_NOKEY, b"lru": K_NOKEY, b"watch": K_NOKEY, b"misbehave": K_NOKEY,
    b"extstore": K_NOKEY, b"debugtime": K_NOKEY, b"verify_key": K_NOKEY,
}
# Commands whose first argument names a subcommand worth keeping in the operation.
_SUBCOMMANDS = frozenset((b"stats", b"lru_crawler", b"slabs", b"lru", b"extstore"))
# Reply codes each meta command can give (errors fit everything): which pending quiet
# request a reply belongs to.
_META_FIT = {
    b"mg": frozenset((b"VA", b"HD", b"EN")),
    b"ms": frozenset((b"HD", b"NS", b"EX", b"NF")),
    b"md": frozenset((b"HD", b"NF", b"EX")),
    b"ma": frozenset((b"HD", b"VA", b"NF", b"NS", b"EX")),
    b"me": frozenset((b"ME", b"EN")),
    b"mn": frozenset((b"MN",)),
}
_ERRORS = frozenset((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))
_BAD_LINE = b"CLIENT_ERROR bad command line format"
# Outcomes that are not errors but worth a status code: a miss, a failed add or cas.
_OUTCOMES = frozenset((b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"EN", b"NF", b"NS", b"EX"))
# First words of replies that go on until END.
_MULTI = frozenset((b"VALUE", b"STAT", b"ITEM", b"PREFIX"))
REPLY_WORDS = frozenset((
    b"VALUE", b"END", b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
    b"TOUCHED", b"OK", b"STAT", b"VERSION", b"VA", b"HD", b"EN", b"NF", b"NS", b"EX",
    b"MN", b"ME", b"RESET", b"BUSY", b"BADCLASS", b"NOSPARE", b"NOTFULL", b"UNSAFE",
    b"SAME", b"ITEM", b"PREFIX",
)) | _ERRORS
_GET_OPS = frozenset(("get", "gets", "gat", "gats", "mg"))
_CMD_START = re.compile(rb"([a-z_]{2,16})[ \r\n]")
_CMD_LINE = re.compile(rb"\n([a-z_]{2,16}) ")

cdef dict _C_COMMANDS = _COMMANDS
cdef frozenset _C_SUBCOMMANDS = _SUBCOMMANDS, _C_ERRORS = _ERRORS, _C_OUTCOMES = _OUTCOMES
cdef frozenset _C_MULTI = _MULTI, _C_REPLY_WORDS = REPLY_WORDS, _C_GET_OPS = _GET_OPS
cdef dict _C_META_FIT = _META_FIT
cdef bytes _C_BAD_LINE = _BAD_LINE

# -- binary opcodes ---------------------------------------------------------------------
# opcode -> (operation, quiet): named as the text command doing the same, so a service's
# "get" aggregates whichever protocol its client speaks.
OPCODES = {
    0x00: ("get", False), 0x01: ("set", False), 0x02: ("add", False),
    0x03: ("replace", False), 0x04: ("delete", False), 0x05: ("incr", False),
    0x06: ("decr", False), 0x07: ("quit", False), 0x08: ("flush_all", False),
    0x09: ("get", True), 0x0A: ("noop", False), 0x0B: ("version", False),
    0x0C: ("get", False), 0x0D: ("get", True), 0x0E: ("append", False),
    0x0F: ("prepend", False), 0x10: ("stats", False), 0x11: ("set", True),
    0x12: ("add", True), 0x13: ("replace", True), 0x14: ("delete", True),
    0x15: ("incr", True), 0x16: ("decr", True), 0x17: ("quit", True),
    0x18: ("flush_all", True), 0x19: ("append", True), 0x1A: ("prepend", True),
    0x1B: ("verbosity", False), 0x1C: ("touch", False), 0x1D: ("gat", False),
    0x1E: ("gat", True), 0x20: ("sasl_list_mechs", False), 0x21: ("sasl_auth", False),
    0x22: ("sasl_step", False), 0x23: ("gat", False), 0x24: ("gat", True),
}
# Request shape per opcode, for inference and resynchronisation: the extras lengths it
# may carry, whether it names a key, whether a value follows.
_SHAPES = {
    "get": ((0,), True, False), "set": ((8,), True, True), "add": ((8,), True, True),
    "replace": ((8,), True, True), "delete": ((0,), True, False),
    "incr": ((20,), True, False), "decr": ((20,), True, False), "quit": ((0,), False, False),
    "flush_all": ((0, 4), False, False), "noop": ((0,), False, False),
    "version": ((0,), False, False), "append": ((0,), True, True),
    "prepend": ((0,), True, True), "stats": ((0,), None, False),
    "verbosity": ((4,), False, False), "touch": ((4,), True, False),
    "gat": ((4,), True, False), "sasl_list_mechs": ((0,), False, False),
    "sasl_auth": ((0,), True, True), "sasl_step": ((0,), True, True),
}
_BIN_SHAPE = {op: _SHAPES[name] for op, (name, _) in OPCODES.items()}
BIN_STATUS = {
    0x00: "", 0x01: "NOT_FOUND", 0x02: "EXISTS", 0x03: "TOO_LARGE", 0x04: "INVALID_ARGUMENTS",
    0x05: "NOT_STORED", 0x06: "NON_NUMERIC", 0x07: "NOT_MY_VBUCKET", 0x08: "AUTH_ERROR",
    0x09: "AUTH_CONTINUE", 0x20: "AUTH_ERROR", 0x81: "UNKNOWN_COMMAND", 0x82: "OUT_OF_MEMORY",
    0x83: "NOT_SUPPORTED", 0x84: "INTERNAL_ERROR", 0x85: "BUSY", 0x86: "TEMPORARY_FAILURE",
}
# Not errors, as their text counterparts: a miss, an add or cas that lost, SASL going on.
_BIN_OUTCOMES = frozenset((0x01, 0x02, 0x05, 0x09))
cdef dict _C_OPCODES = OPCODES, _C_BIN_SHAPE = _BIN_SHAPE, _C_BIN_STATUS = BIN_STATUS
cdef frozenset _C_BIN_OUTCOMES = _BIN_OUTCOMES


# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) -------------------

cdef inline Py_ssize_t _lf(_Bytes v, Py_ssize_t start):
    """Index of the first LF in v[start:], or -1."""
    cdef const void *hit
    if start < 0:
        start = 0
    if start >= v.n:
        return -1
    hit = memchr(v.p + start, 10, <size_t>(v.n - start))
    if hit == NULL:
        return -1
    return <const unsigned char *>hit - v.p


cdef inline bytes _slice(_Bytes v, Py_ssize_t a, Py_ssize_t b):
    """bytes v[a:b] for 0 <= a, clamped to v as Python slices are."""
    if a < 0:
        a = 0
    if b > v.n:
        b = v.n
    if b <= a:
        return b""
    return PyBytes_FromStringAndSize(<const char *>v.p + a, b - a)


cdef inline long long _u32(_Bytes v, Py_ssize_t i):
    """Big-endian 32-bit word at i (the caller checked i + 4 <= v.n), as int.from_bytes."""
    return ((<long long>_at(v, i) << 24) | (_at(v, i + 1) << 16) | (_at(v, i + 2) << 8)
            | _at(v, i + 3))


cdef str _text(bytes b):
    return b.decode("latin-1")


cdef long long _int(bytes b):
    """A non-negative decimal, or -1 (int(b) if b.isdigit() and len(b) < 12)."""
    cdef _Bytes v = _view(b)
    cdef Py_ssize_t i
    cdef long long x = 0
    cdef int c
    if v.n == 0 or v.n >= 12:
        return -1
    for i in range(v.n):
        c = v.p[i]
        if c < 48 or c > 57:
            return -1
        x = x * 10 + (c - 48)
    return x


cdef bint _word(bytes b):
    """b is [a-z_]{1,32}."""
    cdef _Bytes v = _view(b)
    cdef Py_ssize_t i
    cdef int c
    if v.n < 1 or v.n > 32:
        return False
    for i in range(v.n):
        c = v.p[i]
        if not (97 <= c <= 122 or c == 95):
            return False
    return True


cdef bint _isdigit(bytes b):
    """bytes.isdigit(): non-empty, ASCII digits only."""
    cdef _Bytes v = _view(b)
    cdef Py_ssize_t i
    if v.n == 0:
        return False
    for i in range(v.n):
        if v.p[i] < 48 or v.p[i] > 57:
            return False
    return True


def query_text(op: str, keys: list) -> str:
    """`get k1 k2 ...`: the command and its keys (at most SHOW_KEYS), never values."""
    return _query_text(op, keys)


cdef str _query_text(str op, list keys):
    cdef Py_ssize_t nk = len(keys), i
    cdef list shown
    cdef str more
    if not nk:
        return op
    shown = [(<bytes>keys[i])[:C_MAX_KEY].decode("latin-1")
             for i in range(nk if nk < C_SHOW_KEYS else C_SHOW_KEYS)]
    more = f" ...(+{nk - C_SHOW_KEYS})" if nk > C_SHOW_KEYS else ""
    return redact.sql(op + " " + " ".join(shown) + more)


# -- per-connection state -------------------------------------------------------------

cdef class _Req:
    """What the reply to a pending request needs: how to recognise it, what it was."""
    cdef bytes cmd
    cdef bint quiet
    cdef object opaque  # bytes or None
    cdef object key  # bytes or None
    cdef int bop  # binary opcode, -1 for a text command
    cdef long long bopaque
    # A retrieval with a key over 250 bytes: memcached answers CLIENT_ERROR and drops
    # the replies still queued for the commands before it in the same read.
    cdef bint too_long
    # An ms with a mode or cas flag, which may answer NS, EX or NF.
    cdef bint cond


cdef _Req _new_req(bytes cmd, bint quiet, opaque, key, int bop, long long bopaque):
    cdef _Req q = _Req.__new__(_Req)
    q.cmd = cmd
    q.quiet = quiet
    q.opaque = opaque
    q.key = key
    q.bop = bop
    q.bopaque = bopaque
    q.too_long = False
    q.cond = False
    return q


cdef class _Reply:
    """A reply in progress in the response direction (multi-line, or a block skipped)."""
    cdef object msg
    cdef bytes word
    cdef bytes line
    cdef long long hits
    cdef bint multi
    cdef int bop  # binary opcode, -1 for a text reply
    cdef long long bopaque
    cdef int bstatus
    cdef str inc
    cdef bint done_after_block


cdef _Reply _new_reply(msg, bytes word, bytes line):
    cdef _Reply r = _Reply.__new__(_Reply)
    r.msg = msg
    r.word = word
    r.line = line
    r.hits = 0
    r.multi = False
    r.bop = -1
    r.bopaque = 0
    r.bstatus = 0
    r.inc = ""
    r.done_after_block = False
    return r


cdef class _Pending(Pending):
    """A request waiting for its response, with what the response needs to know."""
    cdef _Req extra


cdef class _Command:
    """What a command line says: (operation, attributes, reply matching, noreply, data
    block length or -1)."""
    cdef str op
    cdef dict attrs
    cdef _Req req
    cdef bint noreply
    cdef long long blen


cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef _Command _command(bytes cmd, int kind, list toks):
    """What the command line `toks` (toks[0] == cmd) says."""
    cdef _Command c = _Command.__new__(_Command)
    cdef str op = _text(cmd)
    cdef Py_ssize_t nt = len(toks)
    cdef list keys = []
    cdef long long blen = -1
    cdef bint noreply = False, quiet = False, cond = False
    cdef bytes t
    cdef dict attrs
    cdef _Req req
    opaque = None
    if kind == K_STORE or kind == K_CAS:
        if nt > 1:
            keys = toks[1:2]
        if nt > 4:
            blen = _int(<bytes>toks[4])
        noreply = nt > (6 if kind == K_CAS else 5) and toks[nt - 1] == b"noreply"
    elif kind == K_GET:
        keys = toks[1:]
    elif kind == K_GAT:
        keys = toks[2:]
    elif kind == K_KEY:
        keys = toks[1:2]
        noreply = nt > 2 and toks[nt - 1] == b"noreply"
    elif kind == K_MS or kind == K_META:
        keys = toks[1:2] if cmd != b"mn" else []
        if kind == K_MS and nt > 2:
            blen = _int(<bytes>toks[2])
        for t in toks[2:]:
            if t == b"q":
                quiet = True
            elif t[:1] == b"O":
                opaque = t
            elif t[:1] in (b"M", b"C", b"I"):
                cond = True
    elif kind == K_NOKEY:
        noreply = nt > 1 and toks[nt - 1] == b"noreply"
        if cmd in _C_SUBCOMMANDS and nt > 1:
            op = f"{op} {_text((<bytes>toks[1])[:32])}"
    elif kind == K_QUIT:
        noreply = True
    attrs = {"db.system": "memcached", "db.operation.name": op,
             "db.query.text": _query_text(op, keys)}
    if len(keys) > 1:
        attrs["db.operation.batch.size"] = len(keys)
    req = _new_req(cmd, quiet, opaque, keys[0] if keys else None, -1, 0)
    req.cond = cond
    if kind == K_GET or kind == K_GAT:
        for t in keys:
            if len(t) > C_MAX_KEY:
                req.too_long = True
                break
    c.op = op
    c.attrs = attrs
    c.req = req
    c.noreply = noreply
    c.blen = blen
    return c


cdef class MemcachedParser(StreamParser):
    """One memcached connection, both directions, text or binary (frame by frame)."""

    # The request whose data block is being skipped: (msg, op, attrs, req, noreply).
    cdef tuple open_req
    cdef _Reply reply

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = "memcached"
        self.counts = STATS
        self.pending = deque()
        self.open_req = None
        self.reply = None

    # -- direction ------------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        self._scan(d, st, out, False)

    cdef void _scan(self, int d, DirStream st, list out, bint force) except *:
        cdef int b0
        if self.rdir < 0:
            b0 = _at(_view(st.buf), 0)
            # Commands are lower case, replies upper case (or digits, for incr).
            self.rdir = d if (b0 == 0x80 or 97 <= b0 <= 122) else \
                1 - d if (b0 == 0x81 or 65 <= b0 <= 90 or 48 <= b0 <= 57) else d
        if d == self.rdir:
            self._requests(d, st, out, force)
        else:
            self._replies(d, st, out, force)

    # -- requests -------------------------------------------------------------------------
    cdef void _requests(self, int d, DirStream st, list out, bint force) except *:
        cdef bytes buf = st.buf, line, cmd
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0, j, le
        cdef long long start, e
        cdef int kind
        cdef list toks
        cdef _Command c
        while pos < n:
            if v.p[pos] == 0x80:
                pos = self._binary(d, st, buf, pos, n, force, out)
                if pos < 0:
                    return
                continue
            j = _lf(v, pos)
            if j < 0:
                if n - pos > C_MAX_LINE:
                    self._bad(d, st, out)
                    return
                break
            le = j - 1 if j > pos and v.p[j - 1] == 13 else j
            toks = _slice(v, pos, le).split()
            start = st.base + pos
            if not toks:
                # memcached answers an empty line with ERROR (a noreply block longer than
                # announced leaves one): keep the count of replies.
                self._request(st.message(start, st.base + j + 1), "(empty line)",
                              {"db.system": "memcached"}, _new_req(b"", False, None, None, -1, 0),
                              False, "", out)
                pos = j + 1
                continue
            cmd = <bytes>toks[0]
            kind = _C_COMMANDS.get(cmd, K_OTHER)
            if kind == K_OTHER and not _word(cmd):
                self._bad(d, st, out)
                return
            c = _command(cmd, kind, toks)
            pos = j + 1
            if c.blen >= 0:
                e = pos + c.blen + 2
                if e > n:
                    if c.blen + 2 <= C_WAIT_BLOCK and not force:
                        pos = <Py_ssize_t>(start - st.base)  # wait for the whole block
                        break
                    # The block runs past what is buffered: skip the rest by length.
                    msg = st.message(start, st.base + n)
                    st.consume(n)
                    st.skip = e - n
                    st.open = msg
                    self.open_req = (msg, c.op, c.attrs, c.req, c.noreply)
                    return
                pos = <Py_ssize_t>e
            self._request(st.message(start, st.base + pos), c.op, c.attrs, c.req, c.noreply,
                          "", out)
        st.consume(pos)

    cdef void _request(self, msg, str op, dict attrs, _Req req, bint noreply, str inc,
                       list out) except *:
        cdef _Pending p
        if noreply:
            # No reply will come, whatever happened: the outcome is unknown.
            attrs["memcached.noreply"] = True
            out.append(new_record("memcached", msg, None, op, STATUS_UNSET, "", "", attrs, {},
                              inc))
            return
        if len(self.pending) >= C_MAX_PENDING:
            _count("pending_overflow")
            out.append(self._incomplete(<_Pending>self.pending.popleft(), "evicted"))
        p = _Pending.__new__(_Pending)
        p.msg = msg
        p.operation = op
        p.attributes = attrs
        p.incomplete = inc
        p.extra = req
        self.pending.append(p)

    # -- replies --------------------------------------------------------------------------
    cdef void _replies(self, int d, DirStream st, list out, bint force) except *:
        cdef bytes buf = st.buf, line, word
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0, j, le, sp, ls
        cdef long long blen, e
        cdef _Reply r
        cdef list parts
        while pos < n:
            r = self.reply
            if v.p[pos] == 0x81 and (r is None or r.bop >= 0):
                pos = self._binary(d, st, buf, pos, n, force, out)
                if pos == -1:
                    return
                continue
            if r is not None and r.bop >= 0:
                self._bad(d, st, out)  # text inside a binary stats reply
                return
            j = _lf(v, pos)
            if j < 0:
                if n - pos > C_MAX_LINE:
                    self._bad(d, st, out)
                    return
                break
            le = j - 1 if j > pos and v.p[j - 1] == 13 else j
            line = _slice(v, pos, le)
            sp = line.find(b" ")
            word = line if sp < 0 else line[:sp]
            if r is None:
                if word not in _C_REPLY_WORDS and not _isdigit(line) and line[:4] != b"key=":
                    self._bad(d, st, out)
                    return
                r = _new_reply(st.message(st.base + pos, st.base + j + 1), word, line)
                self.reply = r
                r.multi = word in _C_MULTI or line[:4] == b"key="
            ls = pos
            pos = j + 1
            blen = -1
            if word == b"VALUE" or word == b"VA":
                parts = line.split()
                blen = _int(<bytes>(parts[3] if word == b"VALUE" and len(parts) > 3 else
                                    parts[1] if word == b"VA" and len(parts) > 1 else b""))
                if blen < 0:
                    self._bad(d, st, out)
                    return
            elif r.multi and word != b"END" and word not in _C_ERRORS:
                continue
            elif r.multi and word in _C_ERRORS:
                r.word = word
                r.line = line
            if blen >= 0:
                e = pos + blen + 2
                if e > n:
                    if blen + 2 <= C_WAIT_BLOCK and not force:
                        pos = ls  # parse the line again once its block is in
                        break
                    r.hits += 1
                    r.done_after_block = not r.multi
                    st.consume(n)
                    st.skip = e - n
                    st.open = r.msg
                    st.last_mark_end(r.msg)
                    return
                r.hits += 1
                pos = <Py_ssize_t>e
                if r.multi:
                    continue
            self._reply_done(st, st.base + pos, "", out)
        st.consume(pos)

    cdef void _reply_done(self, DirStream st, long long end, str inc, list out) except *:
        cdef _Reply r = self.reply
        cdef tuple m
        self.reply = None
        msg = r.msg
        msg.size = end - msg.offset
        m = st.mark_at(end - 1)
        msg.end_ns = m[1]
        msg.end_tid = m[2]
        self._answer(r, inc or r.inc, out)

    cdef bint _fits(self, _Reply r, _Req q) except -1:
        cdef bytes t
        if r.bop >= 0:
            return q.bop == r.bop and q.bopaque == r.bopaque
        if q.bop >= 0:
            return False
        if r.word in _C_ERRORS:
            return True
        fit = _C_META_FIT.get(q.cmd)
        if fit is None:
            return True
        if r.word != b"ME":
            # Meta replies echo the request's O (opaque) and, if asked, k (key) flags.
            ro = rk = None
            for t in r.line.split()[1:]:
                if t[:1] == b"O":
                    ro = t
                elif t[:1] == b"k":
                    rk = t[1:]
            if ro != q.opaque or (rk is not None and q.key is not None and rk != q.key):
                return False
        if q.cmd == b"ms" and not q.cond:
            return r.word == b"HD"  # a plain set can only succeed (or fail with an error)
        return r.word in <frozenset>fit

    cdef void _answer(self, _Reply r, str inc, list out) except *:
        cdef Py_ssize_t i = self._fit(r), k
        pending = self.pending
        if i < 0:
            # Nothing pending it can answer: maybe the request still being read.
            self._salvage_request(out)
            i = self._fit(r)
        if i < 0 or (<_Pending>pending[i]).msg.start_ns > r.msg.start_ns:
            # Nothing asked, or it answers a request lost before the oldest one seen:
            # requests were lost, and how many is unknown.
            _count("unmatched_response")
            self.uncertain = True
            return
        if r.line == _C_BAD_LINE and not (<_Pending>pending[i]).extra.too_long:
            i = self._dropped_replies(r, i, out)
        for k in range(i):
            self._quiet_done(<_Pending>pending.popleft(), out)
        self._record(<_Pending>pending.popleft(), r, inc, out)

    cdef Py_ssize_t _fit(self, _Reply r) except -2:
        """Index of the pending request r answers: the first one it fits, passing over
        quiet requests that had nothing to say; -1 if none."""
        cdef Py_ssize_t i = 0
        cdef _Pending p
        cdef _Req q
        for p in self.pending:
            q = p.extra
            if not q.quiet:
                return i
            if self._fits(r, q):
                self._ambiguous(r, p, i)
                return i
            i += 1
        return -1

    cdef void _ambiguous(self, _Reply r, _Pending p, Py_ssize_t i) except *:
        """Another quiet request further on could take r as well (no distinct opaque or
        key tells them apart): which got what is a guess, so neither is reported whole."""
        cdef bint amb = False
        cdef Py_ssize_t k, n = len(self.pending)
        cdef _Pending p2
        pending = self.pending
        for k in range(i + 1, n):
            p2 = <_Pending>pending[k]
            if not p2.extra.quiet:
                break
            if self._fits(r, p2.extra):
                amb = True
                p2.incomplete = p2.incomplete or "ambiguous"
        if amb:
            p.incomplete = p.incomplete or "ambiguous"

    cdef Py_ssize_t _dropped_replies(self, _Reply r, Py_ssize_t i, list out) except -2:
        """A retrieval with a key over 250 bytes makes memcached drop the replies queued
        before its CLIENT_ERROR: the requests before it are answered by nothing.  Returns
        the index of the request r answers."""
        cdef Py_ssize_t k = 0, m
        cdef _Pending p
        cdef DirStream st
        pending = self.pending
        for p in pending:
            if p.extra.too_long:
                if p.msg.start_ns <= r.msg.start_ns:
                    for m in range(k):
                        _count("reply_dropped_by_server")
                        out.append(self._incomplete(<_Pending>pending.popleft(),
                                                      "reply dropped by server"))
                    return 0
                return i
            k += 1
        st = self._st(self.rdir)
        if st.buf or not st.synced or self.open_req is not None:
            # That retrieval may be the request still being read (or lost): pairing in
            # order may be off from here until the queue drains.
            self.uncertain = True
        return i

    cdef void _quiet_done(self, _Pending p, list out) except *:
        """A quiet request a later reply passed over: success, or a miss for a get."""
        p.attributes["memcached.noreply"] = True
        if p.operation in _C_GET_OPS:
            p.attributes["db.response.returned_rows"] = 0
        out.append(new_record("memcached", p.msg, None, p.operation, STATUS_OK, "", "",
                          p.attributes, {}, self._why(p.incomplete, "")))

    cdef void _record(self, _Pending p, _Reply r, str inc, list out) except *:
        cdef dict attrs = p.attributes
        cdef str code = "", error = "", status = STATUS_OK
        cdef int s
        cdef bytes word
        if r.bop >= 0:
            s = r.bstatus
            if s:
                code = _C_BIN_STATUS.get(s, f"0x{s:04x}")
                attrs["db.response.status_code"] = code
                if s not in _C_BIN_OUTCOMES:
                    status = STATUS_ERROR
                    error = redact.sql(_text(r.line[:256])) or code
            if p.operation in _C_GET_OPS:
                attrs["db.response.returned_rows"] = 0 if s else 1
        else:
            word = r.word
            if word in _C_ERRORS:
                status = STATUS_ERROR
                code = _text(word)
                error = redact.sql(_text(r.line[:256]))
                attrs["db.response.status_code"] = code
            elif word in _C_OUTCOMES:
                code = _text(word)
                attrs["db.response.status_code"] = code
            if p.operation in _C_GET_OPS and status == STATUS_OK:
                attrs["db.response.returned_rows"] = r.hits if p.operation != "mg" else \
                    int(word == b"VA" or word == b"HD")
        out.append(new_record("memcached", p.msg, r.msg, p.operation, status, code, error, attrs,
                          {}, self._why(p.incomplete, inc)))

    # -- binary ---------------------------------------------------------------------------
    cdef Py_ssize_t _binary(self, int d, DirStream st, bytes buf, Py_ssize_t pos,
                            Py_ssize_t n, bint force, list out) except -2:
        """Parse the binary frame at pos: the position after it, or -1 when done with the
        buffer for now (waiting for more, skipping a body by length, desynchronised)."""
        cdef _Bytes v = _view(buf)
        cdef int op, elen, status
        cdef Py_ssize_t klen, kstart
        cdef long long blen, opaque, e, need
        cdef bint is_req, quiet
        cdef str name
        cdef bytes key
        cdef _Req req
        cdef _Reply r
        if n > v.n:
            n = v.n
        if n - pos < C_HEADER:
            st.consume(pos)
            return -1
        op = _at(v, pos + 1)
        klen = (_at(v, pos + 2) << 8) | _at(v, pos + 3)
        elen = _at(v, pos + 4)
        status = (_at(v, pos + 6) << 8) | _at(v, pos + 7)
        blen = _u32(v, pos + 8)
        opaque = _u32(v, pos + 12)
        is_req = _at(v, pos) == 0x80
        if elen + klen > blen or klen > C_MAX_KEY or elen > 32 or _at(v, pos + 5) != 0:
            self._bad(d, st, out)
            return -1
        e = pos + C_HEADER + blen
        kstart = pos + C_HEADER + elen
        # Wait for the key (and, in an error reply, its message): a few hundred bytes.
        if is_req or not status:
            need = kstart + klen
        else:
            need = min(e, kstart + klen + 256)
        if need > n and not force:
            st.consume(pos)
            return -1
        key = _slice(v, kstart, min(kstart + klen, n))
        msg = st.message(st.base + pos, st.base + min(e, n))
        if is_req:
            hit = _C_OPCODES.get(op)
            if hit is None:
                name, quiet = f"0x{op:02x}", False
            else:
                name, quiet = (<tuple>hit)[0], (<tuple>hit)[1]
            attrs = {"db.system": "memcached", "db.operation.name": name,
                     "db.query.text": _query_text(name, [key] if klen else []),
                     "memcached.protocol": "binary"}
            req = _new_req(b"", quiet, None, key or None, op, opaque)
            if e > n:
                st.consume(n)
                st.skip = e - n
                st.open = msg
                self.open_req = (msg, name, attrs, req, False)
                return -1
            self._request(msg, name, attrs, req, False, "", out)
            return <Py_ssize_t>e
        r = self.reply
        if r is None:
            text = _slice(v, kstart + klen, min(e, n)) if status else b""
            r = _new_reply(msg, b"", text)
            self.reply = r
            r.bop = op
            r.bopaque = opaque
            r.bstatus = status
        # A stats reply is one frame per statistic, up to an empty one.
        r.multi = op == 0x10 and not status and blen > 0
        if e > n:
            r.done_after_block = not r.multi
            st.consume(n)
            st.skip = e - n
            st.open = r.msg
            st.last_mark_end(r.msg)
            return -1
        if not r.multi:
            self._reply_done(st, st.base + e, "", out)
        return <Py_ssize_t>e

    # -- gaps, tails, resynchronisation --------------------------------------------------
    cdef void _bad(self, int d, DirStream st, list out) except *:
        _count("bad_frame")
        _count("desync")
        self._desync(d, st, out)

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        cdef _Reply r
        cdef bytes buf
        cdef Py_ssize_t sp
        cdef long long end
        if st.buf:
            # A block cut by the hole is skipped by its length; then parsing goes on.
            self._scan(d, st, out, True)
            if st.skip and st.synced:
                self._lose(d, st, g, out)
                return True
        if not st.synced:
            return False
        # What comes after the hole is unknown; keep what was seen as truncated.
        if d == self.rdir:
            if st.buf:
                self._salvage_line(st, g, out)  # a command line cut short
            return False
        r = self.reply
        buf = st.buf
        if r is None and buf:
            # A first line cut short: its first word still says what it was.
            sp = buf.find(b" ")
            if sp > 0 and buf[:sp] in _C_REPLY_WORDS:
                r = _new_reply(st.message(st.base, st.base + len(buf)), buf[:sp], buf)
                self.reply = r
                r.hits = r.word == b"VALUE" or r.word == b"VA"
        if r is not None:
            # A syscall usually writes a whole reply: it ends where the hole does.
            end = r.msg.offset + 1
            if st.nxt > end:
                end = st.nxt
            self._reply_done(st, end, "truncated", out)
        return False

    cdef bint _salvage_line(self, DirStream st, long long g, list out) except -1:
        """Register the request whose line is cut short at the end of the buffer."""
        cdef list toks = st.buf.split(b"\n", 1)[0].split()
        cdef bytes cmd
        cdef _Command c
        if not toks or toks[0] not in _C_COMMANDS:
            return False
        cmd = <bytes>toks[0]
        if len(toks) == 1 or not st.buf.endswith(b" "):
            toks = toks[:-1] if len(toks) > 1 else toks  # the last word may be cut
        c = _command(cmd, <int>_C_COMMANDS[cmd], toks)
        msg = st.message(st.base, st.base + len(st.buf))
        msg.size += g
        self._request(msg, c.op, c.attrs, c.req, c.noreply, "truncated", out)
        return True

    cdef void _tail_done(self, int d, DirStream st, msg, list out) except *:
        cdef str inc = ""
        cdef tuple o
        cdef _Reply r
        if st.trunc:
            st.trunc = False
            inc = "truncated"
        if d == self.rdir:
            o = self.open_req
            self.open_req = None
            if o is not None:
                self._request(o[0], <str>o[1], <dict>o[2], <_Req>o[3], <bint>o[4], inc, out)
            return
        r = self.reply
        if r is None:
            return
        if inc:
            r.inc = inc
        if r.done_after_block:
            self._reply_done(st, r.msg.offset + r.msg.size, "", out)

    cdef void _salvage_request(self, list out) except *:
        """A reply came while a request is still being read: the server replies to whole
        requests only, so the rest of that one was lost.  Take it as it is."""
        cdef int d = self.rdir
        cdef DirStream st = self._st(d)
        cdef tuple o
        if not st.synced:
            return
        if st.buf and self.open_req is None:
            # A request waiting for the rest of its block (or key): its length is known,
            # so it can be taken as it is.
            self._requests(d, st, out, True)
        o = self.open_req
        if o is not None:
            self.open_req = None
            self._request(o[0], <str>o[1], <dict>o[2], <_Req>o[3], <bint>o[4], "truncated",
                          out)
        elif not (st.buf and self._salvage_line(st, 0, out)):
            return
        st.drop()
        st.skip = 0
        st.open = None
        st.synced = False
        _count("salvaged_request")

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        # A syscall usually writes whole commands and replies: accept a chunk that
        # starts like one.
        cdef _Bytes v = _view(data)
        cdef Py_ssize_t j
        cdef int c0 = _at(v, 0)
        cdef bytes line
        if d == self.rdir or self.rdir < 0:
            if c0 == 0x80:
                return 0 if _binary_request(v) else -1
            m = _CMD_START.match(data)
            if m and m.group(1) in _C_COMMANDS:
                return 0
            # Or a line start inside the chunk (chunks may cut commands anywhere).
            for m in _CMD_LINE.finditer(data, 0, C_MAX_LINE):
                if m.group(1) in _C_COMMANDS:
                    return m.start(1)
            return -1
        if c0 == 0x81:
            return 0 if _binary_response(v) else -1
        j = data.find(b"\r\n", 0, C_MAX_LINE)
        if j < 0:
            return -1
        line = data[:j]
        return 0 if line.split(b" ", 1)[0] in _C_REPLY_WORDS or _isdigit(line) else -1

    cdef void _on_desync(self, int d, list out) except *:
        if d == self.rdir:
            self.open_req = None
            return
        self.reply = None
        while self.pending:
            out.append(self._incomplete(<_Pending>self.pending.popleft(), "gap"))


cdef bint _binary_request(_Bytes v):
    cdef Py_ssize_t klen
    cdef int elen
    cdef long long blen
    if v.n < C_HEADER or _at(v, 0) != 0x80 or _at(v, 5) != 0:
        return False
    shape = _C_BIN_SHAPE.get(_at(v, 1))
    if shape is None:
        return False
    klen = (_at(v, 2) << 8) | _at(v, 3)
    elen = _at(v, 4)
    blen = _u32(v, 8)
    extras, keyed, valued = shape
    if elen not in extras or klen > C_MAX_KEY or (keyed is not None and (klen > 0) != keyed):
        return False
    return elen + klen <= blen if valued else elen + klen == blen


cdef bint _binary_response(_Bytes v):
    cdef Py_ssize_t klen
    cdef int status
    cdef long long blen
    if v.n < C_HEADER or _at(v, 0) != 0x81 or _at(v, 5) != 0:
        return False
    klen = (_at(v, 2) << 8) | _at(v, 3)
    status = (_at(v, 6) << 8) | _at(v, 7)
    if _at(v, 1) not in _C_OPCODES and status != 0x81:
        return False
    blen = _u32(v, 8)
    return status in _C_BIN_STATUS and klen <= C_MAX_KEY and _at(v, 4) + klen <= blen


def binary_request(bytes data not None) -> bool:
    """A binary request header with a known opcode and lengths consistent with it."""
    return _binary_request(_view(data))


def binary_response(bytes data not None) -> bool:
    """A binary reply header with a known opcode (or the unknown-command status), a known
    status and sane lengths."""
    return _binary_response(_view(data))
