# -- remote linking (one of the stitcher's three jobs; included by _stitcher.pyx) ------
# A server span's parent is the client span of the same request seen by another process
# or host: by TCP sequence numbers (both directions when known, else with the mirrored
# tuple), or for UDP by the tuple and operation within 50 ms.  Several matches: refused
# and said on the span.  Rules as agent/stitch/stitcher.py's _decide_remote.


cdef class RemoteLinker:
    """The client spans by sequence number and UDP tuple, and the server spans whose
    client is not decided yet."""

    cdef dict client_by_seq, udp_clients
    cdef list pending  # server items waiting for their client span

    def __cinit__(self):
        self.client_by_seq = {}
        self.udp_clients = {}
        self.pending = []

    cdef void add_client(self, Item item, s) except *:
        """Index a client span by its request's sequence number or UDP tuple."""
        transport = s.transport
        if transport == "tcp" and s.req_seq is not None:
            k = s.req_seq
            lst = self.client_by_seq.get(k)
            if lst is None:
                self.client_by_seq[k] = [item]
            else:
                lst.append(item)
            item.seq_key = k
        elif transport == "udp":
            k = _udp_key(s)
            lst = self.udp_clients.get(k)
            if lst is None:
                self.udp_clients[k] = [item]
            else:
                lst.append(item)
            item.udp_key = k

    cdef void add_server(self, Item item) except *:
        self.pending.append(item)

    cdef void decide(self, int64_t settled, int64_t now, bint final, int64_t quiet_ns,
                     stats) except *:
        """Decide the server spans settled by now (all of them when final)."""
        cdef Item it
        cdef list still = []
        for it in self.pending:
            if not (final or it.end_ns <= settled) or not self._decide(it, now, quiet_ns,
                                                                          stats):
                still.append(it)
        self.pending = still

    cdef bint _decide(self, Item item, int64_t now, int64_t quiet_ns, stats) except -1:
        """Find the client span of a server span's request; False to wait."""
        cdef list cands, strong
        cdef Item c
        s = item.span
        transport = s.transport
        if transport == "tcp" and s.req_seq is not None:
            cands = []
            for c in self.client_by_seq.get(s.req_seq, ()):
                if c.pid != item.pid or c.conn_id != item.conn_id:
                    cands.append(c)
            resp_seq = s.resp_seq
            if resp_seq is not None:
                cands = [c for c in cands if _resp_seq(c) is None
                         or _resp_seq(c) == resp_seq]
            strong = [c for c in cands if _resp_seq(c) is not None and resp_seq is not None]
            if len(strong) == 1:
                cands = strong
            elif not strong:
                cands = [c for c in cands if _mirrors(c, s)]
        elif transport == "udp":
            cands = [c for c in self.udp_clients.get(_udp_key(s), ())
                     if c.start_ns <= item.start_ns + 50 * _MS
                     and item.end_ns <= c.end_ns + 50 * _MS]
        else:
            cands = []
        if len(cands) == 1:
            c = cands[0]
            item.parent, item.link = c, "tcp seq" if transport == "tcp" else "udp tuple"
            if c.children is None:
                c.children = [item]
            else:
                c.children.append(item)
            item.remote_done = True
            _inc(stats, "linked_remote")
            return True
        if len(cands) > 1:
            _inc(stats, "remote_ambiguous")
            item.remote_done = True
            s.attributes[_PARENT_UNKNOWN] = f"{len(cands)} client spans match the request"
            return True
        if now - item.end_ns < quiet_ns:
            return False  # the client side may still be on its way
        item.remote_done = True
        _inc(stats, "roots")
        return True

    cdef void forget(self, list gone) except *:
        """Drop spans past the late-joiner window (marked gone) from the indexes."""
        cdef Item it
        for it in gone:
            if it.seq_key is not None:
                _drop_gone(self.client_by_seq, it.seq_key)
            if it.udp_key is not None:
                _drop_gone(self.udp_clients, it.udp_key)


cdef inline object _resp_seq(Item c):
    """The client span's response sequence number (kept when it let its span go)."""
    return c.rseq if c.span is None else c.span.resp_seq


cdef bint _mirrors(Item c, s) except -1:
    """Client c's tuple is server span s's, mirrored (stitcher.py's _mirror)."""
    if c.span is not None:
        return _mirror(c.span, s)
    loc, rem = c.loc, c.rem
    return (loc.addr, loc.port, rem.addr, rem.port) == (
        s.remote.addr, s.remote.port, s.local.addr, s.local.port)


cdef inline void _drop_gone(dict index, k) except *:
    """Index entry k without the items marked gone (the entry goes when none is left).
    Most entries hold one item: dropped without building a new list."""
    cdef list lst = index.get(k)
    if lst is None:
        return
    if len(lst) == 1:
        if (<Item>lst[0]).gone:
            del index[k]
        return
    lst[:] = [x for x in lst if not (<Item>x).gone]
    if not lst:
        del index[k]
