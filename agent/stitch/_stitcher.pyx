# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""The stitcher, compiled (issue 13): agent/stitch/stitcher.py's rules, unchanged, on
C++ containers.

Same decisions, same refusal reasons, same public API as the Python `Stitcher` (kept as
the reference; tests/stitch/test_compiled_vs_python.py checks both give identical links
and attributes).  What changes is where the per-event and per-span state lives:
- thread and client-connection histories are C++ vectors of plain structs in std::maps
  keyed by (pid, tid) / conn_id: an observed event allocates no Python object, and the
  garbage collector has nothing to visit there (it was ~25 us of the ~80 us a span);
- the in-flight request reads, the per-connection message ranges and the per-thread
  server spans likewise (ranges and server spans hold a strong reference to their Item,
  released when the entry is removed);
- an Item caches the span's integers it is asked for (pid, times, tids, conn_id) as C
  fields; attribution returns a status string and leaves its item in a field instead
  of allocating a tuple per step.
Orderings mirror the Python lists of tuples exactly (lexicographic on the same fields),
so bisects and insertions land where the reference's do."""

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t, INT64_MIN
from libcpp.vector cimport vector
from libcpp.map cimport map as cmap
from libcpp.set cimport set as cset
from libcpp.pair cimport pair
from cython.operator cimport dereference as deref, preincrement as inc

import os
from collections import Counter, defaultdict, deque

from agent.conn._ctx cimport SpanContext
from agent.export._slots cimport slot_offset
from agent.probes._events cimport SocketEvent
from agent.clock import now_ns as _clock_now
from agent.probes import abi
from agent.stitch import evidence
from agent.stitch.handoff import NOTHING_SEEN
from agent.stitch.runtime import GOROUTINE_BASE, MODE_GO, MODE_GO_GOID, RuntimeClassifier
from agent.stitch.stitcher import (
    HISTORY_DROPPED,
    MAX_EMITTED,
    NO_SPAN,
    OTHER_PROCESS,
    ROLE_SHED,
    SHED_READ,
    Trace,
    header_keys,
)
from proto.span import KIND_CLIENT, KIND_SERVER, PARENT_UNKNOWN, Span


cdef int64_t _MS = 10**6
cdef int _INGRESS = abi.DIR_INGRESS
cdef int _EGRESS = abi.DIR_EGRESS
cdef int _ROLE_SERVER = abi.ROLE_SERVER
cdef int _ROLE_CLIENT = abi.ROLE_CLIENT
cdef int _ROLE_SHED = ROLE_SHED  # a request read left out by sampling (stitcher.py)
cdef int _EV_CONN = abi.EV_CONN
cdef int _F_SHED_STAMP = abi.F_SHED_STAMP
cdef uint64_t _READS_MASK = abi.STAMP_READS_MASK
cdef int _ANSWERS_SHIFT = abi.STAMP_ANSWERS_SHIFT
cdef int _OPEN_SHIFT = abi.STAMP_OPEN_SHIFT
cdef uint64_t _OPEN_MASK = abi.STAMP_OPEN_MASK
cdef uint64_t _LAST_READ = abi.STAMP_LAST_READ
cdef str _SHED_READ = SHED_READ
cdef str _OTHER_PROCESS = OTHER_PROCESS
cdef int64_t _GOROUTINE_BASE = GOROUTINE_BASE
# How many connection or hand-off steps one attribution may follow back (stitcher.py)
cdef int _MAX_DEPTH = 16
cdef str _NO_SPAN = NO_SPAN
cdef str _HISTORY_DROPPED = HISTORY_DROPPED
cdef str _NOTHING_SEEN = NOTHING_SEEN
cdef str _MODE_GO = MODE_GO
cdef str _MODE_GO_GOID = MODE_GO_GOID
cdef str _KIND_SERVER = KIND_SERVER
cdef str _KIND_CLIENT = KIND_CLIENT
cdef str _PARENT_UNKNOWN = PARENT_UNKNOWN
# Span fields read per span, at their __slots__ offsets (no attribute lookup each): the
# offsets are checked at import (a field that is no plain slot fails loudly)
cdef Py_ssize_t _S_PID, _S_START, _S_END, _S_KIND, _S_PROCESS
cdef object _SpanT = Span


cdef Py_ssize_t _slot(str name) except -1:
    cdef Py_ssize_t off = slot_offset(Span, name)
    if off < 0:
        raise ImportError(f"proto.span.Span.{name} is not a plain slot: update _stitcher.pyx")
    return off


_S_PID, _S_START, _S_END = _slot("pid"), _slot("start_ns"), _slot("end_ns")
_S_KIND, _S_PROCESS = _slot("kind"), _slot("process")
cdef Py_ssize_t _S_TRACE = _slot("trace_id"), _S_PARENT = _slot("parent_span_id")
cdef Py_ssize_t _S_SPAN_ID = _slot("span_id")
cdef Py_ssize_t _S_OPERATION = _slot("operation"), _S_ATTRIBUTES = _slot("attributes")
cdef Py_ssize_t _S_RESP_SEQ = _slot("resp_seq")
cdef Py_ssize_t _S_LOCAL = _slot("local"), _S_REMOTE = _slot("remote")


cdef inline void _sput(object s, Py_ssize_t off, str name, object v) except *:
    """Set field name of span s to v (at its slot offset when s is a Span)."""
    cdef PyObject** p
    cdef PyObject* old
    if type(s) is _SpanT:
        p = <PyObject**>((<char*><PyObject*>s) + off)
        old = p[0]
        Py_INCREF(v)
        p[0] = <PyObject*>v
        if old != NULL:
            Py_DECREF(<object>old)
    else:
        setattr(s, name, v)


cdef inline object _sget(object s, Py_ssize_t off, str name):
    """Field of span s at slot offset off when s is a Span (else by attribute name);
    an unset slot raises as attribute access does."""
    cdef PyObject* v
    if type(s) is _SpanT:
        v = (<PyObject**>((<char*><PyObject*>s) + off))[0]
        if v != NULL:
            return <object>v
    return getattr(s, name)


# Counters: collections.Counter defines __delitem__, so its item assignment goes through
# a Python-level slot (~0.7k instructions); a Counter is a dict, and adding to one is
# setting the dict item (what Counter does: it has no __setitem__ of its own).
cdef object _CounterT = Counter


cdef inline void _inc(object c, object key, long n=1) except *:
    cdef PyObject* v
    if type(c) is _CounterT:
        v = PyDict_GetItem(c, key)
        PyDict_SetItem(c, key, (<object>v if v != NULL else 0) + n)
    else:
        c[key] += n


# the counter names of each way of linking and each refusal reason, made once
cdef dict _LINK_KEYS = {}
cdef dict _REFUSED_KEYS = {}

ctypedef pair[int64_t, int64_t] TKey  # (pid, tid)


cdef struct TEv:  # a data event on a thread: (ts, direction, conn_id, offset, role, open)
    int64_t ts  # the fields in an order that packs them in 32 bytes (60 s of them held)
    uint64_t conn
    uint64_t off
    int32_t open  # shed requests open on the thread at its entry (its stamp), -1 unknown
    int8_t d
    int8_t role


cdef struct CEv:  # a data event on a client connection: (ts, direction, pid, tid)
    int64_t ts
    int d
    int64_t pid
    int64_t tid


cdef struct REnt:  # a known message a side reads: [start, end) of its stream, its item
    uint64_t start
    uint64_t end
    uint64_t ident
    PyObject* item  # a strong reference


cdef struct SEnt:  # a completed server span by the time its request was read
    int64_t in_ns
    uint64_t ident
    PyObject* item  # a strong reference


cdef inline bint _tev_lt(const TEv& a, const TEv& b) noexcept:
    if a.ts != b.ts:
        return a.ts < b.ts
    if a.d != b.d:
        return a.d < b.d
    if a.conn != b.conn:
        return a.conn < b.conn
    if a.off != b.off:
        return a.off < b.off
    if a.role != b.role:
        return a.role < b.role
    return a.open < b.open


cdef inline bint _cev_lt(const CEv& a, const CEv& b) noexcept:
    if a.ts != b.ts:
        return a.ts < b.ts
    if a.d != b.d:
        return a.d < b.d
    if a.pid != b.pid:
        return a.pid < b.pid
    return a.tid < b.tid


ctypedef fused HistEv:  # the entries of a thread's or a client connection's history
    TEv
    CEv


cdef inline void _add_sorted(vector[HistEv]* h, const HistEv& entry) noexcept:
    """Append to a history, kept sorted (insort_right when out of order)."""
    cdef Py_ssize_t i
    if h.size() and h.back().ts > entry.ts:
        # rare: events of one thread arriving out of order
        i = h.size()
        if HistEv is TEv:
            while i > 0 and _tev_lt(entry, deref(h)[i - 1]):
                i -= 1
        else:
            while i > 0 and _cev_lt(entry, deref(h)[i - 1]):
                i -= 1
        h.insert(h.begin() + i, entry)
    else:
        h.push_back(entry)


cdef inline Py_ssize_t _tev_lower(vector[TEv]* v, int64_t ts) noexcept:
    """First index whose ts >= ts (bisect_left on (ts,))."""
    cdef Py_ssize_t lo = 0, hi = <Py_ssize_t>v.size(), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if deref(v)[mid].ts < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _cev_lower(vector[CEv]* v, int64_t ts) noexcept:
    cdef Py_ssize_t lo = 0, hi = <Py_ssize_t>v.size(), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if deref(v)[mid].ts < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _sent_lower(vector[SEnt]* v, int64_t ts) noexcept:
    cdef Py_ssize_t lo = 0, hi = <Py_ssize_t>v.size(), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if deref(v)[mid].in_ns < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _rent_upper(vector[REnt]* v, uint64_t off) noexcept:
    """First index whose start > off (bisect_right on (off, inf, ...))."""
    cdef Py_ssize_t lo = 0, hi = <Py_ssize_t>v.size(), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if deref(v)[mid].start <= off:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef class Item:
    """A span in the stitcher: its context, its parent link and the decisions made."""

    cdef public object ctx, span, tokens
    cdef public Item parent
    cdef public list children
    cdef public bint thread_done, remote_done, emitted
    cdef public str trace_id, link
    # the span's integers, read from ctx once
    cdef int64_t pid, in_tid, out_tid, in_ns, out_ns, start_ns, end_ns
    cdef uint64_t conn_id
    cdef bint server, has_response
    # the indexes the item is in, to drop it from on prune
    cdef bint in_ranges, in_servers, gone
    cdef object seq_key, udp_key
    cdef list hkeys
    # TraceAssembler.emit_quiet's marks: the pass (_ep) _root was found in, the pass (_gep) the
    # items of the trace rooted here were gathered (_group) in
    cdef uint64_t _ep, _gep
    cdef Item _root
    cdef list _group
    # Once emitted, the item lets its span (and context) go and keeps only what a late
    # joiner's decision reads (_let_go): the span's id, the texts of a server span's
    # payload tokens, for client spans indexed by sequence number their response's
    # and their tuple (issue 13: ~1.6 KB a span held 5.5 s, mostly attribute dicts)
    cdef str sid
    cdef object rseq, loc, rem, tsrc

    def __init__(self, ctx) -> None:
        self._init(ctx)

    cdef _init(self, ctx):
        cdef SpanContext c
        self.ctx = ctx
        self.trace_id = ""
        self.link = ""
        if type(ctx) is SpanContext:  # the core's: C fields, no attribute lookups
            c = <SpanContext>ctx
            s = c.span
            self.conn_id = c.conn_id
            self.in_tid = c.in_tid
            self.out_tid = c.out_tid
            self.in_ns = c.in_ns
            self.out_ns = c.out_ns
            self.has_response = c.has_response
        else:
            s = ctx.span
            self.conn_id = ctx.conn_id
            self.in_tid = ctx.in_tid
            self.out_tid = ctx.out_tid
            self.in_ns = ctx.in_ns
            self.out_ns = ctx.out_ns
            self.has_response = ctx.has_response
        self.span = s
        self.pid = _sget(s, _S_PID, "pid")
        self.start_ns = _sget(s, _S_START, "start_ns")
        self.end_ns = _sget(s, _S_END, "end_ns")
        self.server = _sget(s, _S_KIND, "kind") == _KIND_SERVER


cdef Item _new_item(ctx):
    cdef Item it = Item.__new__(Item)
    it._init(ctx)
    return it


# "Something unattributable happened on the thread": a candidate no token can pick.
cdef Item _UNKNOWN = _new_item(SpanContext(Span(), 0, 0, 0, 0, 0, False))


cdef bint _mirror(a, b):
    return (a.local.addr, a.local.port, a.remote.addr, a.remote.port) == (
        b.remote.addr, b.remote.port, b.local.addr, b.local.port)


cdef tuple _udp_key(s):
    # as the server would see it: its local = our remote
    if s.kind == _KIND_CLIENT:
        return (s.remote.addr, s.remote.port, s.local.addr, s.local.port, s.operation)
    return (s.local.addr, s.local.port, s.remote.addr, s.remote.port, s.operation)


# -- payload tokens (agent/stitch/evidence.py's tokens(), compiled) ----------------------
cdef frozenset _COMMON = evidence._COMMON
cdef tuple _FIELDS = evidence._FIELDS
if evidence._TOKEN.pattern != r"[A-Za-z0-9_\-]{8,}":
    raise ImportError("evidence._TOKEN changed: update span_tokens in _stitcher.pyx")


cdef inline bint _tok_char(Py_UCS4 c) noexcept:
    return (c >= u'a' and c <= u'z') or (c >= u'A' and c <= u'Z') or (
        c >= u'0' and c <= u'9') or c == u'_' or c == u'-'


cdef void _scan_tokens(str t, set out) except *:
    """Add t's id-like tokens to out: the maximal runs of [A-Za-z0-9_-] of 8 or more
    characters (what the regex's findall returns), with a digit, not a common word."""
    cdef Py_ssize_t n = len(t), i = 0, j
    cdef bint digit
    cdef Py_UCS4 c
    while i < n:
        c = t[i]
        if not _tok_char(c):
            i += 1
            continue
        j = i
        digit = False
        while j < n:
            c = t[j]
            if not _tok_char(c):
                break
            if c >= u'0' and c <= u'9':
                digit = True
            j += 1
        if digit and j - i >= 8:
            tok = t[i:j]
            if tok.lower() not in _COMMON:
                out.add(tok)
        i = j


cpdef frozenset span_tokens(s):
    """evidence.tokens(s), compiled: the same tokens of the span's operation and request
    fields (tests/stitch/test_tokens_compiled.py checks both agree)."""
    op = s.operation
    if type(op) is not str:
        return evidence.tokens(s)  # not plain text: the reference decides (or raises)
    cdef set out = set()
    _scan_tokens(<str>op, out)
    attrs = s.attributes
    for k in _FIELDS:
        v = attrs.get(k)
        if isinstance(v, str):
            if type(v) is not str:
                return evidence.tokens(s)
            _scan_tokens(<str>v, out)
    return frozenset(out)


# -- emitted spans kept for late joiners, without their span -----------------------------
cdef class SpanRef:
    """Trace.root when the trace's root went out earlier (spans joining a trace already
    emitted) and its item has let its span go: the root's span and trace ids."""

    cdef readonly str span_id, trace_id

    def __init__(self, str span_id, str trace_id) -> None:
        self.span_id = span_id
        self.trace_id = trace_id

    def __repr__(self) -> str:
        return f"SpanRef(span_id={self.span_id!r}, trace_id={self.trace_id!r})"


cdef object _token_source(s):
    """The texts span_tokens(s) reads (the operation, then the _FIELDS attributes that
    are text), or the tokens themselves when one is not plain str (the reference's)."""
    cdef PyObject* pv
    op = _sget(s, _S_OPERATION, "operation")
    if type(op) is not str:
        return evidence.tokens(s)
    cdef list out = None
    attrs = _sget(s, _S_ATTRIBUTES, "attributes")
    for k in _FIELDS:
        if type(attrs) is dict:  # no method call a field
            pv = PyDict_GetItem(attrs, k)
            if pv == NULL:
                continue
            v = <object>pv
        else:
            v = attrs.get(k)
        if isinstance(v, str):
            if type(v) is not str:
                return evidence.tokens(s)
            if out is None:
                out = [op, v]
            else:
                out.append(v)
    return (op,) if out is None else tuple(out)


cdef object _item_tokens(Item x):
    """x's payload tokens (span_tokens of its span), computed once, from the texts kept
    when the item let its span go; None for an item that let its span go without them
    (a client span: never a parent candidate, see _let_go), which makes _by_token pick
    nothing rather than guess."""
    cdef set out
    tk = x.tokens
    if tk is None:
        if x.span is not None:
            tk = span_tokens(x.span)
        elif type(x.tsrc) is tuple:
            out = set()
            for t in <tuple>x.tsrc:
                _scan_tokens(<str>t, out)
            tk = frozenset(out)
        else:
            tk = x.tsrc  # computed when the span was let go (not plain text), or None
        x.tokens = tk
        x.tsrc = None
    return tk


cdef inline str _span_id(Item it):
    return it.sid if it.span is None else _sget(it.span, _S_SPAN_ID, "span_id")


cdef void _let_go(Item it) except *:
    """An emitted item keeps what a late joiner's decision reads of its span, and lets
    the span and its context go (the exporter has them; 5.5 s of whole spans was most of
    the agent's memory under load).  Items whose links are not both decided (emitted
    by close) keep their span."""
    s = it.span
    if s is None or not (it.thread_done and it.remote_done):
        return
    it.sid = _sget(s, _S_SPAN_ID, "span_id")
    if it.server:
        # A late joiner's thread decision may weigh a server span's payload tokens
        # (every parent candidate is a server span: a client's parent is one too): the
        # texts they come from are kept, and scanned only if asked (rarely: scanning
        # every span here cost ~3k instructions a span)
        if it.tokens is None:
            it.tsrc = _token_source(s)
    elif it.seq_key is not None:  # a server span's remote decision reads these
        it.rseq = _sget(s, _S_RESP_SEQ, "resp_seq")
        it.loc = _sget(s, _S_LOCAL, "local")
        it.rem = _sget(s, _S_REMOTE, "remote")
    it.span = None
    it.ctx = None


include "_remote.pxi"
include "_assembly.pxi"


cdef class Stitcher:
    """Links SpanContexts into traces; `observe` every data event, `add` every span.

    Three jobs: thread linking (here: a client span's parent in its own process, from
    the thread's reads before its write, connection reuse, payload tokens, propagated
    ids and Go hand-offs), remote linking (RemoteLinker, _remote.pxi) and trace
    assembly (TraceAssembler, _assembly.pxi)."""

    cdef public object emit, classifier, handoffs, stats, per_process, comm
    cdef public int64_t settle_ns, quiet_ns, max_wait_ns, horizon_ns
    cdef public Py_ssize_t max_emitted
    cdef public list pending_thread
    cdef RemoteLinker remote
    cdef TraceAssembler assembly
    cdef int64_t _next_prune, _next_full, _now
    cdef int64_t _history_from  # thread histories before it may have been pruned
    cdef Py_ssize_t _added
    cdef bint _via_conn
    cdef Item _ri  # the item of the last attribution step
    cdef str _rhow  # how the last _thread_context found its parent
    cdef dict by_header, _write_ctx
    cdef object _write_keys  # deque: _write_ctx's keys in the order they were added
    cdef cmap[TKey, vector[TEv]] threads
    cdef cmap[uint64_t, vector[CEv]] conn_events
    cdef cmap[uint64_t, vector[REnt]] ranges  # (conn_id, ingress) in the Python version
    cdef cmap[TKey, vector[SEnt]] thread_servers
    cdef cmap[TKey, int64_t] thread_maxdur
    # (pid, tid) -> {(conn_id, offset): ts} of request reads whose span is not known
    cdef cmap[TKey, cmap[pair[uint64_t, uint64_t], int64_t]] inflight
    cdef cmap[uint64_t, cset[TKey]] inflight_threads
    # (pid, tid) -> the shed stamp of its latest record (abi.F_SHED_STAMP), while the
    # thread has a history
    cdef cmap[TKey, uint64_t] thread_stamp

    def __init__(self, emit, *, settle_ns: int = 100 * 10**6, quiet_ns: int = 500 * 10**6,
                 max_wait_ns: int = 5000 * 10**6, horizon_ns: int = 60_000 * 10**6,
                 max_emitted: int = MAX_EMITTED, classifier=None) -> None:
        self.emit = emit
        self.settle_ns, self.quiet_ns = settle_ns, quiet_ns
        self.max_wait_ns, self.horizon_ns = max_wait_ns, horizon_ns
        self.max_emitted = max_emitted
        self.classifier = classifier or RuntimeClassifier()
        self.remote = RemoteLinker()
        self.assembly = TraceAssembler()
        self._next_prune = 0
        self._added = 0
        self._next_full = 0
        self.pending_thread = []
        self.by_header = {}
        self._now = 0
        self.stats = Counter()
        self.per_process = defaultdict(Counter)
        self.comm = {}
        self._write_ctx = {}
        self._write_keys = deque()
        self.handoffs = None
        self._via_conn = False
        self._rhow = ""

    @property
    def items(self) -> list:
        """Spans not emitted yet."""
        return self.assembly.items

    @property
    def emitted(self):
        """Spans emitted and kept for late joiners (a deque)."""
        return self.assembly.emitted

    @property
    def dropped_end_ns(self):
        """The latest end of an emitted span dropped early (max_emitted), or 0."""
        return self.assembly.dropped_end

    @property
    def pending_remote(self) -> list:
        """Server spans whose client span is not decided yet."""
        return self.remote.pending

    def __dealloc__(self):
        cdef pair[uint64_t, vector[REnt]] r
        cdef pair[TKey, vector[SEnt]] sv
        cdef size_t i
        for r in self.ranges:
            for i in range(r.second.size()):
                Py_DECREF(<object>r.second[i].item)
        for sv in self.thread_servers:
            for i in range(sv.second.size()):
                Py_DECREF(<object>sv.second[i].item)

    # -- input ------------------------------------------------------------------------
    def observe(self, e) -> None:
        """Record a data event's moment on its thread (call for every data event)."""
        cdef TEv entry
        cdef CEv centry
        cdef int64_t pid, tid, ts0
        cdef SocketEvent se
        cdef vector[TEv]* tl
        cdef vector[CEv]* ce
        cdef int flags
        cdef uint64_t stamp = 0
        if type(e) is SocketEvent:
            se = <SocketEvent>e
            if se.ev.type == _EV_CONN:
                return
            flags = se.flags
            entry.d = se.ev.direction
            entry.ts = se.ts_exit if entry.d == _INGRESS else se.ts_enter
            ts0 = se.ts_enter
            pid = se.ev.pid
            tid = se.tid
            entry.conn = se.conn_id
            entry.off = se.offset
            entry.role = se.role
            if flags & _F_SHED_STAMP:
                stamp = se.ev.offset
        else:
            if getattr(e, "type", 0) == _EV_CONN:
                return
            flags = getattr(e, "flags", 0)
            entry.d = e.direction
            entry.ts = e.ts_exit if entry.d == _INGRESS else e.ts_enter
            ts0 = e.ts_enter
            pid = e.pid
            tid = e.tid
            entry.conn = e.conn_id
            entry.off = e.offset
            entry.role = e.role
            if flags & _F_SHED_STAMP:
                stamp = e.stamp
        cdef TKey key = TKey(pid, tid)
        tl = &self.threads[key]
        entry.open = -1
        if flags & _F_SHED_STAMP:
            entry.open = <int32_t>((stamp >> _OPEN_SHIFT) & _OPEN_MASK)
            self._shed_turns(key, tl, stamp, ts0, not tl.size() or tl.back().ts <= entry.ts)
        if entry.d == _INGRESS and entry.role == _ROLE_SERVER:
            # a request read: open on this thread until its server span completes
            self.inflight[key][pair[uint64_t, uint64_t](entry.conn, entry.off)] = entry.ts
            self.inflight_threads[entry.conn].insert(key)
        _add_sorted(tl, entry)
        if entry.role == _ROLE_CLIENT:
            ce = &self.conn_events[entry.conn]
            centry.ts = entry.ts
            centry.d = entry.d
            centry.pid = pid
            centry.tid = tid
            _add_sorted(ce, centry)

    cdef void _shed_turns(self, TKey key, vector[TEv]* tl, uint64_t stamp, int64_t ts0,
                          bint latest) except *:
        """Server exchanges left out by sampling that turned on the thread since its
        previous stamped record (the counters of `stamp` moved, abi.F_SHED_STAMP), as
        history entries of role SHED just before this record (entered at ts0): a request
        read (of unknown context) and/or an answer (a write), the thread's last turn
        last (stitcher.py).  A record older than the thread's latest (rare) is compared
        with nothing: any turn the thread ever had counts as just before it."""
        cdef uint64_t prev = 0
        cdef TEv v
        if latest:
            it = self.thread_stamp.find(key)
            if it != self.thread_stamp.end():
                prev = deref(it).second
            self.thread_stamp[key] = stamp
        cdef bint reads = ((stamp ^ prev) & _READS_MASK) != 0
        cdef bint answers = (((stamp ^ prev) >> _ANSWERS_SHIFT) & _READS_MASK) != 0
        if not (reads or answers):
            return
        v.conn = 0
        v.off = 0
        v.open = -1
        v.role = _ROLE_SHED
        v.ts = ts0 - 2
        if reads and answers:
            v.d = _EGRESS if stamp & _LAST_READ else _INGRESS
            _add_sorted(tl, v)
            v.d = _INGRESS if stamp & _LAST_READ else _EGRESS
        else:
            v.d = _INGRESS if reads else _EGRESS
        v.ts = ts0 - 1
        _add_sorted(tl, v)

    cdef bint _hidden_at(self, TKey key, int64_t t):
        """A request read on thread key and left out by sampling was open at t (read
        before, not answered by then): the stamp of the thread's record at t says; with
        none, what is around t says, and an unknown counts as open (stitcher.py)."""
        cdef vector[TEv]* lst
        cdef Py_ssize_t i, j, n
        sit = self.thread_stamp.find(key)
        if sit == self.thread_stamp.end() or deref(sit).second == 0:
            return False  # no request of the thread was ever shed
        tit = self.threads.find(key)
        if tit == self.threads.end():
            return True
        lst = &deref(tit).second
        n = <Py_ssize_t>lst.size()
        i = _tev_lower(lst, t)
        j = i
        while j < n and deref(lst)[j].ts == t:
            if deref(lst)[j].open >= 0:
                return deref(lst)[j].open > 0
            j += 1
        j = i - 1  # back to the last stamped record before t
        while j >= 0 and deref(lst)[j].open < 0:
            if deref(lst)[j].role == _ROLE_SHED and deref(lst)[j].d == _INGRESS:
                return True
            j -= 1
        if j >= 0 and deref(lst)[j].open > 0:
            return True
        j = i  # shed reads told by the next stamped record may come before t
        while j < n and deref(lst)[j].open < 0:
            if deref(lst)[j].role == _ROLE_SHED and deref(lst)[j].d == _INGRESS:
                return True
            j += 1
        return j == n  # nothing stamped after t yet: not known

    def add(self, ctx) -> None:
        cdef Item item = _new_item(ctx)
        cdef REnt r
        cdef SEnt se
        cdef vector[REnt]* rl
        cdef vector[SEnt]* sl
        cdef Py_ssize_t i
        cdef int64_t dur, n
        cdef TKey key
        self._added += 1
        s = item.span
        pid = item.pid
        self.assembly.add(item)
        self.comm[pid] = _sget(s, _S_PROCESS, "process")
        cdef uint64_t conn_id = item.conn_id
        cdef bint server = item.server
        # The range of what this side reads, the request of a server or the response
        # of a client: a read of it opens (server) or resumes (client) the context.
        if server:
            off, n = s.req_offset, s.req_bytes
        else:
            off, n = s.resp_offset, s.resp_bytes
        if off is not None:
            r.start = off
            r.end = r.start + <uint64_t>(n if n > 1 else 1)
            r.ident = <uint64_t><Py_ssize_t><PyObject*>item
            r.item = <PyObject*>item
            rl = &self.ranges[conn_id]
            i = rl.size()  # insort_right on (start, end, id)
            while i > 0 and (r.start < deref(rl)[i - 1].start or (
                    r.start == deref(rl)[i - 1].start and (r.end < deref(rl)[i - 1].end or (
                        r.end == deref(rl)[i - 1].end and r.ident < deref(rl)[i - 1].ident)))):
                i -= 1
            rl.insert(rl.begin() + i, r)
            Py_INCREF(item)
            item.in_ranges = True
        if server:
            item.thread_done = True
            self.remote.add_server(item)
            key = TKey(item.pid, item.in_tid)
            dur = item.out_ns - item.in_ns
            it = self.thread_maxdur.find(key)
            if it == self.thread_maxdur.end():
                if dur > 0:
                    self.thread_maxdur[key] = dur
            elif dur > deref(it).second:
                deref(it).second = dur
            se.in_ns = item.in_ns
            se.ident = <uint64_t><Py_ssize_t><PyObject*>item
            se.item = <PyObject*>item
            sl = &self.thread_servers[key]
            i = sl.size()
            while i > 0 and (se.in_ns < deref(sl)[i - 1].in_ns or (
                    se.in_ns == deref(sl)[i - 1].in_ns and se.ident < deref(sl)[i - 1].ident)):
                i -= 1
            sl.insert(sl.begin() + i, se)
            Py_INCREF(item)
            item.in_servers = True
            if s.trace_headers:
                for hk in header_keys(s):
                    k = (pid, hk)
                    lst = self.by_header.get(k)
                    if lst is None:
                        self.by_header[k] = [item]
                    else:
                        lst.append(item)
                    if item.hkeys is None:
                        item.hkeys = [k]
                    else:
                        item.hkeys.append(k)
            if off is not None and self.inflight_threads.count(conn_id):
                self._settle_inflight(conn_id, off, s.req_bytes)
        else:
            item.remote_done = True
            self.pending_thread.append(item)
            self.remote.add_client(item, s)

    cdef _settle_inflight(self, uint64_t conn_id, uint64_t off, size):
        """The request at [off, off+size) of conn_id is known now: no longer in flight."""
        cdef uint64_t end = off + <uint64_t>(size if size > 1 else 1)
        it = self.inflight_threads.find(conn_id)
        if it == self.inflight_threads.end() or deref(it).second.empty():
            return
        cdef cset[TKey]* threads = &deref(it).second
        cdef vector[TKey] keys
        cdef TKey key
        cdef bint left
        for key in deref(threads):
            keys.push_back(key)
        for key in keys:
            dit = self.inflight.find(key)
            if dit == self.inflight.end() or deref(dit).second.empty():
                threads.erase(key)
                continue
            d = &deref(dit).second
            left = False  # reads of conn_id still open on this thread
            kit = d.begin()
            while kit != d.end():
                if deref(kit).first.first == conn_id:
                    if off <= deref(kit).first.second < end:
                        kit = d.erase(kit)
                        continue
                    left = True
                inc(kit)
            if not left:
                threads.erase(key)
            if d.empty():
                self.inflight.erase(dit)
        if threads.empty():
            self.inflight_threads.erase(it)

    # -- attribution ------------------------------------------------------------------
    cdef str _context_of_read(self, uint64_t conn_id, uint64_t offset, int64_t ts, int role,
                              int64_t now, int depth, int64_t pid):
        """"ok" (self._ri: the server item) / "pending" / a reason, for a read of pid."""
        cdef Item it = None
        cdef vector[REnt]* lst
        cdef Py_ssize_t i, j, lo
        self._ri = None
        if role == _ROLE_SHED:
            return _SHED_READ
        rit = self.ranges.find(conn_id)
        if rit != self.ranges.end() and deref(rit).second.size():
            lst = &deref(rit).second
            # the known messages holding offset (ranges are sorted by start)
            i = _rent_upper(lst, offset)
            lo = i - 8 if i > 8 else 0
            j = i - 1
            while j >= lo:
                if deref(lst)[j].start <= offset < deref(lst)[j].end:
                    if it is not None:
                        return "read spans several requests"
                    it = <Item>deref(lst)[j].item
                j -= 1
        if it is None:
            if role == _ROLE_CLIENT:
                return self._context_of_conn_read(conn_id, ts, now, depth, pid)
            if ts <= self.assembly.dropped_end:  # its span may be one dropped from memory
                return _HISTORY_DROPPED
            return "pending"
        if it.server:
            self._ri = it
            return "ok"
        if not it.thread_done:
            if role == _ROLE_CLIENT and it.out_ns > ts:
                # an earlier round trip of the same call (a statement prepared before it
                # is executed): the span's request write comes after this read
                return self._context_of_conn_read(conn_id, ts, now, depth, pid)
            return "pending"
        if it.parent is None:
            if it.link == "root":
                # the answer to a call the thread began on its own: not a lost context
                return "root"
            return "resumed context unknown"
        if it.link == "header":
            # its parent came from a propagated id: the call was handed off
            return "resumed context of a hand-off"
        self._ri = it.parent
        return "ok"

    cdef str _context_of_conn_read(self, uint64_t conn_id, int64_t ts, int64_t now,
                                   int depth, int64_t pid):
        """The context a read at ts by process pid on a client connection resumes: that
        of the writes on the connection just before it, all in one context and all of
        pid (stitcher.py), or a refusal."""
        cdef vector[CEv]* ev
        cdef Py_ssize_t i
        cdef CEv w
        cdef Item found = None
        cdef str status
        self._ri = None
        if depth >= _MAX_DEPTH:
            return "chain of calls too deep"
        cit = self.conn_events.find(conn_id)
        if cit == self.conn_events.end() or deref(cit).second.empty():
            return _NO_SPAN
        ev = &deref(cit).second
        i = _cev_lower(ev, ts) - 1
        while i >= 0 and deref(ev)[i].d == _INGRESS:  # earlier reads of the same answer
            i -= 1
        while i >= 0 and deref(ev)[i].d == _EGRESS:
            w = deref(ev)[i]
            if w.pid != pid:
                self._ri = None
                return _OTHER_PROCESS
            status = self._context_of_write(w.pid, w.tid, w.ts, now, depth + 1)
            if status != "ok":
                self._ri = None
                return status
            if found is not None and self._ri is not found:
                self._ri = None
                return "connection shared by several requests"
            found = self._ri
            i -= 1
        if found is None:
            self._ri = None
            return _NO_SPAN  # nothing written before it: not an answer
        self._via_conn = True
        self._ri = found
        return "ok"

    cdef str _context_of_write(self, int64_t pid, int64_t tid, int64_t t, int64_t now,
                               int depth):
        """The context a thread was in when it wrote at t (no span of its own)."""
        key = (pid, tid, t)
        hit = self._write_ctx.get(key)
        if hit is not None:
            if hit[0] == "ok":
                self._via_conn = True
            self._ri = hit[1]
            return hit[0]
        cdef str status = self._thread_context(pid, tid, t, t, now, None, depth)
        parent = self._ri
        if status == "root":
            status = _NO_SPAN  # a write with nothing read before it: whose, unknown
        if status != "pending":
            self._write_ctx[key] = (status, parent)
            self._write_keys.append(key)
        self._ri = parent
        return status

    cdef bint _decide_thread(self, Item item, int64_t now) except -1:
        """Decide a client span's parent in its process; False to wait."""
        s = item.span
        self._via_conn = False
        # the item (not its span) as the child: its payload tokens are computed once
        cdef str status = self._thread_context(item.pid, item.out_tid, item.out_ns,
                                               item.start_ns, now, item, 0)
        cdef Item parent = self._ri
        cdef str how = self._rhow
        cdef Item by_header
        if status == "pending":
            return False
        if status == "root":  # nothing read before it: the request starts here
            if s.trace_headers and header_keys(s):
                # ...unless the thread was handed the work: a propagated id may say whose
                parent = self._by_header(item)
                if parent is not None:
                    return self._link(item, parent, "header")
                if self._now - item.end_ns < self.max_wait_ns and \
                        self._server_inflight(item.pid, item.out_ns):
                    return False  # a request read before it may carry that id
            item.thread_done = True
            item.link = "root"
            _inc(self.per_process[item.pid], "root client (no read before it)")
            return True
        if status != "ok":
            return self._refuse(item, status)
        if s.trace_headers and header_keys(s):
            by_header = self._by_header(item)
            if by_header is not None and by_header is not parent:
                item.thread_done = True  # two kinds of evidence disagree: no link
                _inc(self.per_process[item.pid], "refused: thread and propagated id disagree")
                _inc(self.stats, "refused")
                s.attributes[_PARENT_UNKNOWN] = "thread and propagated id disagree"
                return True
        if self._via_conn and how == "thread":
            how = "thread via connection"
        return self._link(item, parent, how)

    cdef str _thread_context(self, int64_t pid, int64_t tid, int64_t t, int64_t start_ns,
                             int64_t now, object child, int depth):
        """The request whose context thread tid of pid was in when it wrote at t:
        "ok" (self._ri, self._rhow), "pending", "root" or a refusal reason."""
        cdef vector[TEv]* lst
        cdef Py_ssize_t i
        cdef int64_t last_write
        cdef TEv e
        cdef str status
        cdef list contexts, others, open_
        cdef Item parent, ctxt
        cdef str how
        self._ri = None
        mode = self._mode(pid)
        if mode == _MODE_GO or (mode == _MODE_GO_GOID and tid < _GOROUTINE_BASE):
            return "M:N runtime: thread is not the request"
        tit = self.threads.find(TKey(pid, tid))
        if tit == self.threads.end() or deref(tit).second.empty():
            return "no thread history (events lost?)"
        lst = &deref(tit).second
        i = _tev_lower(lst, t) - 1
        # skip back over writes (siblings written earlier in the same context)
        last_write = deref(lst)[i].ts if i >= 0 else 0
        while i >= 0 and deref(lst)[i].d == _EGRESS:
            i -= 1
        if i < 0:
            if self.handoffs is not None and mode == _MODE_GO_GOID:
                return self._handed_off(pid, tid, last_write, t, start_ns, now, child, depth)
            return "root"
        contexts = []
        while i >= 0 and deref(lst)[i].d == _INGRESS:
            e = deref(lst)[i]
            status = self._context_of_read(e.conn, e.off, e.ts, e.role, now, depth, pid)
            if status == _SHED_READ:
                return self._after_shed_read(pid, tid, t, start_ns, now, child, contexts)
            if status == "pending":
                self._ri = None
                if now - e.ts < self.max_wait_ns:
                    return "pending"
                return _NO_SPAN
            if status == "root" and not contexts and (i == 0 or deref(lst)[i - 1].d != _INGRESS):
                self._ri = None
                return "root"  # its only read answers a call of its own
            if status != "ok":
                self._ri = None
                return status
            ctxt = self._ri
            if ctxt not in contexts:
                contexts.append(ctxt)
            i -= 1
        self._ri = None
        if len(contexts) == 1:
            parent, how = contexts[0], "thread"
            # Event loops: if the thread read anything of another context since this
            # context's request, "last read" is not trustworthy: payload evidence or nothing.
            others = self._others_since(lst, parent, t, now, depth, pid)
            self._ri = None
            if others is None:
                return "pending"  # a read in the window is not attributable yet
            if others:
                parent = self._by_token(child, [parent] + others)
                if parent is None:
                    return "several requests in flight on the thread"
                how = "thread+token"
        else:
            parent = self._by_token(child, contexts)
            if parent is None:
                return "reads of several requests interleave"
            how = "thread+token"
        if how == "thread":
            # Requests still open on this thread when the call was written: more than
            # one means the thread multiplexes requests (an event loop).
            open_ = self._open_requests(pid, tid, t, now)
            if open_ is None:
                return "pending"
            others = [x for x in open_ if x is not parent]
            if others:
                parent = self._by_token(child, [parent] + others)
                if parent is None:
                    return "several requests in flight on the thread"
                how = "thread+token"
        return self._checked(parent, t, start_ns, how)

    cdef str _checked(self, Item parent, int64_t t, int64_t start_ns, str how):
        if parent.has_response and parent.out_ns < t:
            return "context already answered (hand-off?)"
        if not (parent.start_ns <= start_ns):
            return "child starts before parent"
        self._ri = parent
        self._rhow = how
        return "ok"

    cdef str _after_shed_read(self, int64_t pid, int64_t tid, int64_t t, int64_t start_ns,
                              int64_t now, object child, list contexts):
        """The reads just before a write at t include a request read left out by
        sampling: only a payload token shared with exactly one of the requests open on
        the thread (or resumed by those reads) links (stitcher.py)."""
        cdef Item x, parent
        self._ri = None
        cdef list open_ = self._open_requests(pid, tid, t, now)
        if open_ is None:
            return "pending"
        cdef list cands = [x for x in open_ if x.server]
        for x in contexts:
            if x not in cands:
                cands.append(x)
        parent = self._by_token(child, cands) if cands else None
        if parent is None:
            return _SHED_READ
        return self._checked(parent, t, start_ns, "thread+token")

    cdef str _handed_off(self, int64_t pid, int64_t tid, int64_t last_write, int64_t t,
                         int64_t start_ns, int64_t now, object child, int depth):
        """A goroutine that read nothing wrote at t: it works for the goroutine that
        woke it, if exactly one did since its previous write."""
        self._ri = None
        if depth >= _MAX_DEPTH:
            return "chain of calls too deep"
        w = self.handoffs.waker(pid, tid, last_write if last_write < t else 0, t)
        if w is None:
            why = self.handoffs.last_refusal
            # a goroutine that received nothing since its last write calls on its own;
            # anything else it received, from whom we cannot say: refused, and said
            if why == "" or why == _NOTHING_SEEN:
                return "root"
            return f"hand-off: {why}"
        cdef str status = self._thread_context(pid, w[0], w[1], start_ns, now, child,
                                               depth + 1)
        if status == "ok":
            self._rhow = "goroutine hand-off"
            return "ok"
        self._ri = None
        if status == "pending" or status == "root":
            return status
        return f"hand-off: {status}"

    cdef object _mode(self, int64_t pid):
        """classifier.mode(pid); for the pipeline's RuntimeClassifier, a pid already
        classified is read from its table without a Python call (what mode() returns
        for it first thing)."""
        cl = self.classifier
        if type(cl) is RuntimeClassifier:
            m = (<dict>cl._by_pid).get(pid)
            if m is not None:
                return m
        return cl.mode(pid)

    cdef bint _server_inflight(self, int64_t pid, int64_t t):
        """A server request of process pid read before t whose span is not known yet."""
        it = self.inflight.lower_bound(TKey(pid, INT64_MIN))
        while it != self.inflight.end() and deref(it).first.first == pid:
            for kv in deref(it).second:
                if kv.second < t:
                    return True
            inc(it)
        return False

    cdef list _open_requests(self, int64_t pid, int64_t tid, int64_t t, int64_t now):
        """Server requests read on this thread before t and not answered by t; None
        while such a request's span is not complete yet (it may be the real parent)."""
        cdef TKey key = TKey(pid, tid)
        cdef vector[SEnt]* servers
        cdef Py_ssize_t i
        cdef int64_t lo_ns, maxdur = 0
        cdef Item it
        dit = self.inflight.find(key)
        if dit != self.inflight.end():
            for kv in deref(dit).second:
                if kv.second < t and now - kv.second < self.max_wait_ns:
                    return None
        cdef list open_ = []
        # a request left out by sampling, or one whose span was dropped from memory,
        # may be open at t: an unknown context
        if self._hidden_at(key, t) or t <= self.assembly.dropped_end:
            open_.append(_UNKNOWN)
        sit = self.thread_servers.find(key)
        if sit != self.thread_servers.end() and deref(sit).second.size():
            servers = &deref(sit).second
            mit = self.thread_maxdur.find(key)
            if mit != self.thread_maxdur.end():
                maxdur = deref(mit).second
            lo_ns = t - maxdur - 1
            i = _sent_lower(servers, t) - 1
            while i >= 0 and deref(servers)[i].in_ns >= lo_ns:
                it = <Item>deref(servers)[i].item
                if not it.has_response or it.out_ns > t:
                    open_.append(it)
                i -= 1
        return open_

    cdef list _others_since(self, vector[TEv]* lst, Item parent, int64_t t, int64_t now,
                            int depth, int64_t pid):
        """Contexts other than parent's read on this thread between parent's request
        and t; None while one of those reads is not attributable yet."""
        cdef int64_t start = parent.in_ns if parent.server else parent.start_ns
        cdef Py_ssize_t lo = _tev_lower(lst, start), hi = _tev_lower(lst, t), k
        cdef list others = []
        # the thread's reads before the horizon are gone: what they were, unknown
        cdef bint unknown = start < self._history_from
        cdef TEv e
        cdef str status
        cdef Item ctxt
        for k in range(lo, hi):
            e = deref(lst)[k]
            if e.d != _INGRESS:
                continue
            status = self._context_of_read(e.conn, e.off, e.ts, e.role, now, depth, pid)
            ctxt = self._ri
            if status == "pending":
                if now - e.ts < self.max_wait_ns:
                    return None
                unknown = True
            elif status != "ok":
                unknown = True
            elif ctxt is not parent and ctxt not in others:
                others.append(ctxt)
        if unknown and not others:
            # something unattributable happened on the thread: treat as another context
            others.append(_UNKNOWN)
        return others

    cdef Item _by_token(self, child, list candidates):
        """The one candidate a rare payload token of child (an Item) points to, or None."""
        cdef Item x, ci
        if child is None:
            return None
        ci = <Item>child
        # a span's tokens do not change: cached on its item, as candidates'
        ct = _item_tokens(ci)
        if not ct:
            return None
        sets = []
        for x in candidates:
            tk = _item_tokens(x)
            if tk is None:
                return None  # tokens not kept (not expected: see _item_tokens)
            sets.append(tk)
        i = evidence.pick_by_token_sets(ct, sets)
        return None if i is None else candidates[i]

    cdef Item _by_header(self, Item item):
        """The one server span of the process, open when item's request was written,
        that carries one of item's propagated ids (X-Request-ID, traceparent trace)."""
        cdef list found = []
        cdef Item cand
        for hk in header_keys(item.span):
            for cand in self.by_header.get((item.pid, hk), ()):
                if cand in found or cand.start_ns > item.start_ns:
                    continue
                if cand.has_response and cand.out_ns < item.out_ns:
                    continue
                found.append(cand)
        return found[0] if len(found) == 1 else None

    cdef bint _link(self, Item item, Item parent, str how) except -1:
        item.parent, item.link = parent, how
        if parent.children is None:
            parent.children = [item]
        else:
            parent.children.append(item)
        item.thread_done = True
        keys = _LINK_KEYS.get(how)
        if keys is None:
            keys = _LINK_KEYS[how] = (f"linked by {how}", f"linked_{how}")
        _inc(self.per_process[item.pid], keys[0])
        _inc(self.stats, keys[1])
        return True

    cdef bint _refuse(self, Item item, str reason) except -1:
        """Refuse the thread-based link; a propagated id may still join the spans."""
        cdef Item parent
        if item.span.trace_headers and header_keys(item.span):
            parent = self._by_header(item)
            if parent is not None:
                return self._link(item, parent, "header")
            if self._now - item.end_ns < self.max_wait_ns:
                return False  # its parent may not have completed yet
        item.thread_done = True
        key = _REFUSED_KEYS.get(reason)
        if key is None:
            if len(_REFUSED_KEYS) < 1024:  # reasons are a few constants and hand-off texts
                key = _REFUSED_KEYS[reason] = f"refused: {reason}"
            else:
                key = f"refused: {reason}"
        _inc(self.per_process[item.pid], key)
        _inc(self.stats, "refused")
        # say so on the span, so a trace view shows why it is a root ("parent unknown")
        item.span.attributes[_PARENT_UNKNOWN] = reason
        return True

    # -- time -------------------------------------------------------------------------
    def tick(self, now=None, final: bool = False) -> None:
        cdef int64_t n = _clock_now() if now is None else now
        cdef bint fin = final
        cdef Item it
        cdef list pending, undecided, still
        cdef Py_ssize_t npass
        self._now = n if not fin else n + self.max_wait_ns
        cdef int64_t settled = n - self.settle_ns
        # Waiting decisions only change when spans arrive (or a wait times out): skip
        # the pass otherwise, which under load is most ticks.
        if not fin and not self._added and n < self._next_full:
            self.assembly.emit_quiet(n, fin, self.quiet_ns, self.emit, self.stats)
            self._prune(n)
            return
        self._added = 0
        self._next_full = n + 1000 * _MS
        self.pending_thread = [it for it in self.pending_thread if not it.thread_done]
        pending = [it for it in self.pending_thread if fin or it.end_ns <= settled]
        pending.sort(key=_out_ns)
        cdef int64_t tnow = n if not fin else n + self.max_wait_ns
        # A decision can unblock later ones (a resumed context, a parent that is now
        # known): repeat while there is progress, so a deep chain resolves in one tick.
        for npass in range(8):
            undecided = []
            for it in pending:
                if not it.thread_done and not self._decide_thread(it, tnow):
                    undecided.append(it)
            if len(undecided) == len(pending):
                break
            pending = undecided
        cdef int64_t rnow = n if not fin else n + self.quiet_ns
        self.remote.decide(settled, rnow, fin, self.quiet_ns, self.stats)
        self.assembly.emit_quiet(n, fin, self.quiet_ns, self.emit, self.stats)
        self._prune(n)

    cdef _prune(self, int64_t now):
        """Forget emitted spans past the late-joiner window, and old thread history."""
        if now < self._next_prune:
            return
        self._next_prune = now + 1000 * _MS
        cdef int64_t keep_after = now - self.max_wait_ns - self.quiet_ns
        cdef Item it
        cdef cset[uint64_t] t_ranges
        cdef cset[TKey] t_servers
        cdef dict t_py = {}  # header key -> None, in the order met
        cdef list gone = self.assembly.expire(keep_after, self.max_emitted, self.stats)
        for it in gone:
            it.gone = True
            if it.in_ranges:
                t_ranges.insert(it.conn_id)
            if it.in_servers:
                t_servers.insert(TKey(it.pid, it.in_tid))
            if it.hkeys is not None:
                for k in it.hkeys:
                    t_py[k] = None
            it.parent = None  # let the chain be collected
            it.children = None
            it._root = None
        cdef uint64_t conn
        cdef TKey key
        cdef vector[REnt]* rl
        cdef vector[SEnt]* sl
        cdef size_t i, j
        for conn in t_ranges:
            rit = self.ranges.find(conn)
            if rit == self.ranges.end():
                continue
            rl = &deref(rit).second
            j = 0
            for i in range(rl.size()):
                if (<Item>deref(rl)[i].item).gone:
                    Py_DECREF(<object>deref(rl)[i].item)
                else:
                    deref(rl)[j] = deref(rl)[i]
                    j += 1
            rl.resize(j)
            if j == 0:
                self.ranges.erase(rit)
        for key in t_servers:
            sit = self.thread_servers.find(key)
            if sit == self.thread_servers.end():
                continue
            sl = &deref(sit).second
            j = 0
            for i in range(sl.size()):
                if (<Item>deref(sl)[i].item).gone:
                    Py_DECREF(<object>deref(sl)[i].item)
                else:
                    deref(sl)[j] = deref(sl)[i]
                    j += 1
            sl.resize(j)
            if j == 0:
                self.thread_servers.erase(sit)
        self.remote.forget(gone)
        index = self.by_header
        for k in t_py:
            lst = index.get(k)
            if lst is None:
                continue
            lst[:] = [x for x in lst if not (<Item>x).gone]
            if not lst:
                del index[k]
        cdef int64_t horizon = now - self.horizon_ns
        cdef Py_ssize_t cut
        if horizon > self._history_from:
            self._history_from = horizon
        tit = self.threads.begin()
        while tit != self.threads.end():
            tl = &deref(tit).second
            if tl.size() and deref(tl)[0].ts < horizon:
                cut = _tev_lower(tl, horizon)
                tl.erase(tl.begin(), tl.begin() + cut)
            if tl.empty():
                self.thread_maxdur.erase(deref(tit).first)
                self.thread_stamp.erase(deref(tit).first)
                tit = self.threads.erase(tit)
            else:
                inc(tit)
        cit = self.conn_events.begin()
        while cit != self.conn_events.end():
            ce = &deref(cit).second
            if ce.size() and deref(ce)[0].ts < horizon:
                cut = _cev_lower(ce, horizon)
                ce.erase(ce.begin(), ce.begin() + cut)
            if ce.empty():
                cit = self.conn_events.erase(cit)
            else:
                inc(cit)
        # Memoised writes older than the horizon: their connection history is gone, so
        # no read can ask for them again.  Dropped in the order they were memoised
        # (near enough time order: a decision comes at most max_wait after its write),
        # not by rebuilding the dict every second (60 s of entries each time).
        wk = self._write_keys
        wc = self._write_ctx
        while wk and (<tuple>wk[0])[2] < horizon:
            wc.pop(wk.popleft(), None)
        cdef int64_t stale = now - self.horizon_ns
        dit = self.inflight.begin()
        while dit != self.inflight.end():
            d = &deref(dit).second
            kit = d.begin()
            while kit != d.end():
                if deref(kit).second < stale:
                    kit = d.erase(kit)
                else:
                    inc(kit)
            if d.empty():
                dit = self.inflight.erase(dit)
            else:
                inc(dit)

    def close(self) -> None:
        self.tick(final=True)

    def held(self) -> dict:
        """What the stitcher holds (diagnosis of its memory, issue 13): entries, and the
        bytes reserved by its C++ histories (vector capacity; map nodes not counted)."""
        cdef size_t n_t = 0, c_t = 0, n_c = 0, c_c = 0, n_r = 0, c_r = 0, n_s = 0
        cdef size_t c_s = 0, n_i = 0
        for tv in self.threads:
            n_t += tv.second.size()
            c_t += tv.second.capacity()
        for cv in self.conn_events:
            n_c += cv.second.size()
            c_c += cv.second.capacity()
        for rv in self.ranges:
            n_r += rv.second.size()
            c_r += rv.second.capacity()
        for sv in self.thread_servers:
            n_s += sv.second.size()
            c_s += sv.second.capacity()
        for iv in self.inflight:
            n_i += iv.second.size()
        return {"items": len(self.assembly.items), "emitted": len(self.assembly.emitted),
                "threads": self.threads.size(), "thread_events": n_t,
                "thread_events_bytes": c_t * sizeof(TEv),
                "conn_events": n_c, "conn_events_bytes": c_c * sizeof(CEv),
                "ranges": n_r, "ranges_bytes": c_r * sizeof(REnt),
                "thread_servers": n_s, "thread_servers_bytes": c_s * sizeof(SEnt),
                "inflight": n_i, "write_ctx": len(self._write_ctx),
                "by_header": len(self.by_header),
                "client_by_seq": len(self.remote.client_by_seq),
                "pending_thread": len(self.pending_thread),
                "pending_remote": len(self.remote.pending)}

    def process_report(self) -> list:
        """Per process: runtime mode, links made and refused by reason."""
        out = []
        for pid, c in sorted(self.per_process.items()):
            out.append({"pid": pid, "process": self.comm.get(pid, ""),
                        "mode": self.classifier.mode(pid), "counts": dict(c)})
        return out


def _out_ns(Item it):
    return it.out_ns


# Trace ids: 128 random-looking bits, as proto.span.new_trace_id, without its Python
# call and getrandom syscall a trace: two splitmix64 outputs of a counter seeded from
# os.urandom (reseeded in a forked child), as the connection core's span ids.  A
# bijection of the counter: no id repeats in one process; two agents' ids collide as
# random 128-bit values do.
cdef uint64_t _tid_state = 0
cdef const char* _HEX = b"0123456789abcdef"


def _seed_trace_ids() -> None:
    global _tid_state
    _tid_state = int.from_bytes(os.urandom(8), "little")


_seed_trace_ids()
os.register_at_fork(after_in_child=_seed_trace_ids)


cdef inline uint64_t _splitmix() noexcept:
    global _tid_state
    _tid_state += <uint64_t>0x9E3779B97F4A7C15ULL
    cdef uint64_t z = _tid_state
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef str _new_trace_id():
    cdef char buf[32]
    cdef uint64_t hi = _splitmix(), lo = _splitmix()
    cdef int i
    if hi == 0 and lo == 0:
        lo = 1  # all zeros is an invalid trace id (W3C)
    for i in range(15, -1, -1):
        buf[i] = _HEX[hi & 15]
        hi >>= 4
        buf[16 + i] = _HEX[lo & 15]
        lo >>= 4
    return PyUnicode_DecodeASCII(buf, 32, NULL)


def new_trace_id_compiled() -> str:
    """A trace id as the stitcher makes them (32 lower-case hex digits, never zero)."""
    return _new_trace_id()


cdef str _trace_id(list members):
    cdef Item m
    cdef bint any_tp = False
    for m in members:  # most traces carry no traceparent: no sort for those
        th = m.span.trace_headers
        if th and "traceparent" in th:
            any_tp = True
            break
    if not any_tp:
        return _new_trace_id()
    for m in sorted(members, key=_start_ns):
        tp = m.span.trace_headers.get("traceparent", "")
        parts = tp.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            return parts[1]  # join the W3C trace the application already carries
    return _new_trace_id()


def _start_ns(Item m):
    return m.start_ns
