# -- trace assembly (one of the stitcher's three jobs; included by _stitcher.pyx) -------
# The spans waiting, grouped by root: a trace goes out whole once every member's links
# are decided and its newest span is quiet; emitted spans are kept for late joiners
# until their window passes.  As agent/stitch/stitcher.py's _emit_quiet.


from dataclasses import fields as _dc_fields

if tuple(f.name for f in _dc_fields(Trace)) != ("trace_id", "spans", "root") or \
        hasattr(Trace, "__slots__"):
    raise ImportError("stitcher.Trace changed: update _new_trace in _assembly.pxi")
cdef object _TraceT = Trace
cdef object _object_new = object.__new__


cdef object _new_trace(str tid, list spans, root):
    """Trace(tid, spans, root) without its dataclass __init__ (a Python frame a trace):
    the same instance dict, filled directly."""
    t = _object_new(_TraceT)
    d = t.__dict__
    d["trace_id"] = tid
    d["spans"] = spans
    d["root"] = root
    return t


cdef class TraceAssembler:
    """The spans not emitted yet (items) and those emitted but kept (emitted)."""

    cdef list items
    cdef object emitted  # deque
    cdef int64_t _next_emit
    cdef uint64_t _epoch
    cdef int64_t dropped_end  # see expire

    def __cinit__(self):
        self.items = []
        self.emitted = deque()

    cdef void add(self, Item item) except *:
        self.items.append(item)

    cdef void emit_quiet(self, int64_t now, bint final, int64_t quiet_ns, emit,
                         stats) except *:
        if not final and now < self._next_emit:
            return
        self._next_emit = now + 250 * _MS
        # Group the waiting items by root, as the reference does with two dicts, with
        # the marks on the items instead: _ep == this pass means _root is known, _gep
        # == this pass means the root's _group is this pass's (no hashing an item)
        self._epoch += 1
        cdef uint64_t ep = self._epoch
        cdef list roots = []  # in order of first appearance, as the reference's dict
        cdef Item it, cur, root, m, x
        cdef list members
        cdef Py_ssize_t n, k
        for it in self.items:
            if it._ep == ep:  # known when a child's walk passed through it
                root = it._root
            else:
                cur = it.parent
                if cur is None:
                    root = it
                elif cur._ep == ep:
                    root = cur._root
                else:
                    # walk up until an item whose root is known (bounded: a parent cycle
                    # must not hang the agent), then mark the path with its root
                    n = 1
                    while cur.parent is not None and cur._ep != ep and n < 1000:
                        n += 1
                        cur = cur.parent
                    root = cur._root if cur._ep == ep else cur
                    x = it
                    for k in range(n):
                        x._ep = ep
                        x._root = root
                        x = x.parent
                    cur._ep = ep
                    cur._root = root
                it._ep = ep
                it._root = root
            if root._gep != ep:
                root._gep = ep
                root._group = [it]
                roots.append(root)
            else:
                root._group.append(it)
        cdef int64_t quiet_before = now - quiet_ns
        cdef bint emitted = False, ok
        cdef int64_t mx
        for root in roots:
            members = root._group
            root._group = None
            if not final:
                ok = True
                mx = INT64_MIN
                for m in members:
                    if not (m.thread_done and m.remote_done):
                        ok = False
                        break
                    if m.end_ns > mx:
                        mx = m.end_ns
                if not ok or mx > quiet_before:
                    continue
            tid = root.trace_id or _trace_id(members)
            spans = []
            for m in members:
                m.emitted = True
                m.trace_id = tid
                sp = m.span
                _sput(sp, _S_TRACE, "trace_id", tid)
                _sput(sp, _S_PARENT, "parent_span_id",
                      _span_id(m.parent) if m.parent is not None else "")
                spans.append(sp)
            emitted = True
            _inc(stats, "traces")
            rs = root.span  # a root emitted before has let its span go: its ids
            emit(_new_trace(tid, spans, rs if rs is not None else SpanRef(root.sid, tid)))
            # after emit: what the pipeline changed on the spans (enrichment's scrub of a
            # pod switched off) is what a late joiner's payload tokens see, as in the
            # reference, which reads the span when asked
            for m in members:
                _let_go(m)
        if emitted:
            self.emitted.extend([it for it in self.items if it.emitted])
            self.items = [it for it in self.items if not it.emitted]

    cdef list expire(self, int64_t keep_after, Py_ssize_t max_kept, stats):
        """The emitted spans no longer kept: those that ended before keep_after, then the
        oldest beyond max_kept (the memory bound, counted as emitted_dropped_early);
        dropped_end is the latest end of the latter, the time up to which late joiners'
        decisions miss history."""
        cdef list gone = []
        cdef Item it
        em = self.emitted
        while em and (<Item>em[0]).end_ns < keep_after:
            gone.append(em.popleft())
        while len(em) > max_kept:
            it = <Item>em.popleft()
            if it.end_ns > self.dropped_end:
                self.dropped_end = it.end_ns
            _inc(stats, "emitted_dropped_early")
            gone.append(it)
        return gone
