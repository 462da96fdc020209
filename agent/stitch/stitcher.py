"""Spans into traces: parents within a process (by causality on a thread) and across
processes (client span -> server span of the same request), never by guessing.

Within a process, a client span's parent is the request whose context its thread was
in when it wrote the request: the context of the last read on that thread, where a
read of a server request opens that request's context and a read of a response on a
client connection resumes the context that wrote on that connection last, whether or
not its bytes made a span (design.md: this also links sequential calls in event loops;
following the connection makes unknown protocols and the intermediate round trips of
multi-round-trip calls transparent).  A Go goroutine that read nothing (the pooled HTTP
client's `writeLoop`) takes the context of the goroutine that woke it just before its
first write, when a `HandoffIndex` names exactly one.  The link is refused, and counted, when:
  - the reads just before it (with no write between them) belong to more than one
    context, unless a rare payload token picks exactly one (evidence.py);
  - the context had already answered its request (work handed off, or a later reuse);
  - the last read belongs to no known span, or to a client span that has no parent;
  - the process is an M:N runtime (Go) whose thread ids do not follow requests;
  - a request read on the thread was left out by sampling (the probes count, per thread,
    where shed server exchanges' requests are read and answered, and stamp the counters
    on every kept record, abi.F_SHED_STAMP): that read, and that request while open,
    are of unknown context, so only a payload token that picks exactly one open request
    links.
Across processes, a server span's parent is the client span with the same TCP
sequence numbers (and, when only the request's is known, the mirrored tuple); for
UDP the mirrored tuple, operation and time containment.  More than one candidate:
no link.

Decisions wait until the read they hinge on is attributable (its span completed) or
give up after `max_wait_ns`.  Traces are emitted once quiet for `quiet_ns`."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.clock import now_ns as _clock_now
from agent.conn.spans import SpanContext
from agent.probes import abi
from agent.probes.events import SocketEvent
from agent.stitch import evidence
from agent.stitch.handoff import NOTHING_SEEN
from agent.stitch.runtime import GOROUTINE_BASE, MODE_GO, MODE_GO_GOID, RuntimeClassifier
from proto import links
from proto.span import KIND_SERVER, PARENT_UNKNOWN, Span, new_trace_id

_MS = 10**6
_INGRESS = abi.DIR_INGRESS
_EGRESS = abi.DIR_EGRESS
_ROLE_SERVER = abi.ROLE_SERVER
_ROLE_CLIENT = abi.ROLE_CLIENT
_EV_CONN = abi.EV_CONN
_F_SHED_STAMP = abi.F_SHED_STAMP
_READS_MASK = abi.STAMP_READS_MASK
_ANSWERS_SHIFT = abi.STAMP_ANSWERS_SHIFT
_OPEN_SHIFT = abi.STAMP_OPEN_SHIFT
_OPEN_MASK = abi.STAMP_OPEN_MASK
_LAST_READ = abi.STAMP_LAST_READ
# A thread-history role of the stitcher's own (not a kernel role): a request read (or
# answer) the probes left out by sampling and only counted (bpf/data.c zt_shed_turn).
ROLE_SHED = 3
SHED_READ = "a request read left out by sampling"
# Emitted spans kept for late joiners at most (the oldest go first beyond it, before
# their max_wait + quiet window ends): the agent's memory stays bounded under load
# (~0.8 KB a kept span; at 10k spans/s the 5.5 s window alone held 55k).  A decision
# that would need history dropped this way is refused with HISTORY_DROPPED.
MAX_EMITTED = 10_000
HISTORY_DROPPED = "history dropped to bound memory"
OTHER_PROCESS = "connection written by another process"
# How many connection or hand-off steps one attribution may follow back: a chain is
# as deep as the calls a request makes one after another through unparsed round trips.
_MAX_DEPTH = 16
NO_SPAN = "read before it belongs to no span"
_INF = float("inf")
_insort = bisect.insort
_bisect_left = bisect.bisect_left
_bisect_right = bisect.bisect_right


def _add_sorted(tl: list, entry: tuple) -> None:
    """Append to a history (a thread's, a client connection's), kept sorted (insort
    when out of order: rare)."""
    if tl and tl[-1][0] > entry[0]:
        _insort(tl, entry)
    else:
        tl.append(entry)


# Item.keys: which of the stitcher's indexes an entry is in
_IX_RANGES, _IX_THREAD_SERVERS, _IX_BY_HEADER, _IX_CLIENT_BY_SEQ, _IX_UDP_CLIENTS = range(5)


class Item:
    """A span in the stitcher: its context, its parent link and the decisions made."""

    __slots__ = ("ctx", "span", "parent", "children", "thread_done", "remote_done",
                 "emitted", "trace_id", "link", "keys", "tokens")

    def __init__(self, ctx: SpanContext) -> None:
        self.ctx = ctx
        self.span: Span = ctx.span  # a plain attribute: read ~13 times per span
        self.parent: Item | None = None
        self.children: list[Item] | None = None  # a list once it has one
        self.thread_done = False  # client: thread-based parent decided (linked or refused)
        self.remote_done = False  # server: cross-process parent decided
        self.emitted = False
        self.trace_id = ""
        self.link = ""  # how the parent was found
        # (index number, key) of the index entries to drop on prune: numbers, not the
        # dicts, so that these tuples hold no container and the GC stops visiting them
        self.keys: tuple = ()
        self.tokens: frozenset[str] | None = None  # payload tokens, once asked for


@dataclass
class Trace:
    trace_id: str
    spans: list[Span]
    root: Span


# The link rules (propagated ids, mirrored tuple, sequence numbers, UDP tuple) are
# proto/links.py's, shared with the server's join; the compiled stitcher imports
# `header_keys` from here.
header_keys = links.propagated_ids


class Stitcher:
    """Links SpanContexts into traces; `observe` every data event, `add` every span."""

    def __init__(self, emit: Callable[[Trace], None], *, settle_ns: int = 100 * _MS,
                 quiet_ns: int = 500 * _MS, max_wait_ns: int = 5000 * _MS,
                 horizon_ns: int = 60_000 * _MS, max_emitted: int = MAX_EMITTED,
                 classifier: RuntimeClassifier | None = None) -> None:
        self.emit = emit
        self.settle_ns, self.quiet_ns = settle_ns, quiet_ns
        self.max_wait_ns, self.horizon_ns = max_wait_ns, horizon_ns
        self.max_emitted = max_emitted
        self.dropped_end_ns = 0  # the latest end of an emitted span dropped early
        self.history_from_ns = 0  # thread histories before it may have been pruned
        self.classifier = classifier or RuntimeClassifier()
        # (pid, tid) -> time-ordered [(ts, direction, conn_id, offset, role)]
        self.threads: dict[tuple[int, int], list] = defaultdict(list)
        # (conn_id, direction) -> [(start_off, end_off, id, item)] of known messages
        self.ranges: dict[tuple[int, int], list] = defaultdict(list)
        self.items: list[Item] = []  # not yet emitted
        self.emitted: deque[Item] = deque()  # kept a while for late joiners
        self._next_prune = 0
        self._next_emit = 0
        self._added = 0  # spans added since the last decision pass
        self._next_full = 0  # a pass even without new spans, for waits that time out
        self.client_by_seq: dict[int, list[Item]] = defaultdict(list)
        self.udp_clients: dict[tuple, list[Item]] = defaultdict(list)
        # (pid, tid) -> {(conn_id, offset): ts} of request reads whose span is not known
        self.inflight: dict[tuple[int, int], dict] = defaultdict(dict)
        self.inflight_threads: dict[int, set] = defaultdict(set)  # conn_id -> thread keys
        # (pid, tid) -> completed server items by request-read time, and the longest one
        self.thread_servers: dict[tuple[int, int], list] = defaultdict(list)
        self.thread_maxdur: dict[tuple[int, int], int] = {}
        self.pending_thread: list[Item] = []
        # (pid, header key) -> server items carrying it (x-request-id, traceparent's trace)
        self.by_header: dict[tuple[int, tuple], list[Item]] = defaultdict(list)
        self._now = 0
        self.pending_remote: list[Item] = []
        self.stats: Counter = Counter()
        self.per_process: dict[int, Counter] = defaultdict(Counter)
        self.comm: dict[int, str] = {}
        # conn_id -> time-ordered [(ts, direction, pid, tid)] of client connections: a
        # read there resumes the context of the writes just before it (context follows
        # the connection, whether or not the bytes parse into a span)
        self.conn_events: dict[int, list] = defaultdict(list)
        # (pid, tid, ts) -> final (status, item, how) of a write that made no span
        self._write_ctx: dict[tuple[int, int, int], tuple] = {}
        # Go hand-offs (agent/stitch/handoff.py): who woke a goroutine before it wrote
        self.handoffs = None
        self._via_conn = False  # set while an attribution followed a connection
        # (pid, tid) -> the shed stamp of its latest record (abi.F_SHED_STAMP), while
        # the thread has a history: server exchanges left out by sampling, counted
        self.thread_stamp: dict[tuple[int, int], int] = {}
        self._indexes = (self.ranges, self.thread_servers, self.by_header,
                         self.client_by_seq, self.udp_clients)  # in _IX_* order

    # -- input ------------------------------------------------------------------------
    def observe(self, e: SocketEvent) -> None:
        """Record a data event's moment on its thread (call for every data event).
        Entries: (ts, direction, conn_id, offset, role, open), open being the shed
        requests open on the thread at the syscall's entry (its stamp), -1 unknown."""
        if getattr(e, "type", 0) == _EV_CONN:
            return
        d = e.direction
        ts = e.ts_exit if d == _INGRESS else e.ts_enter
        key = (e.pid, e.tid)
        conn_id = e.conn_id
        role = e.role
        tl = self.threads[key]
        open_ = -1
        if getattr(e, "flags", 0) & _F_SHED_STAMP:
            stamp = e.stamp
            open_ = (stamp >> _OPEN_SHIFT) & _OPEN_MASK
            self._shed_turns(key, tl, stamp, e.ts_enter, not tl or tl[-1][0] <= ts)
        entry = (ts, d, conn_id, e.offset, role, open_)
        if d == _INGRESS and role == _ROLE_SERVER:
            # a request read: open on this thread until its server span completes
            self.inflight[key][(conn_id, e.offset)] = ts
            self.inflight_threads[conn_id].add(key)
        _add_sorted(tl, entry)
        if role == _ROLE_CLIENT:
            ce = self.conn_events[conn_id]
            _add_sorted(ce, (ts, d, e.pid, e.tid))

    def _shed_turns(self, key: tuple[int, int], tl: list, stamp: int, ts0: int,
                    latest: bool) -> None:
        """Server exchanges left out by sampling that turned on the thread since its
        previous stamped record (the counters of `stamp` moved), as history entries of
        role SHED just before this record (entered at ts0): a request read (of unknown
        context) and/or an answer (a write: it ends the reads before it), the thread's
        last turn last.  Between two records the order of several turns is not known,
        but only the last tells: the walk back from a write stops at the first shed read
        it meets, and a run of reads ends at the first write.  A record older than the
        thread's latest (rare) is compared with nothing: any turn the thread ever had
        counts as just before it."""
        prev = 0
        if latest:
            prev = self.thread_stamp.get(key, 0)
            self.thread_stamp[key] = stamp
        changed = stamp ^ prev
        reads = bool(changed & _READS_MASK)
        answers = bool((changed >> _ANSWERS_SHIFT) & _READS_MASK)
        if not (reads or answers):
            return
        last = _INGRESS if (stamp & _LAST_READ) else _EGRESS
        if reads and answers:
            first = _EGRESS if last == _INGRESS else _INGRESS
            _add_sorted(tl, (ts0 - 2, first, 0, 0, ROLE_SHED, -1))
        else:
            last = _INGRESS if reads else _EGRESS
        _add_sorted(tl, (ts0 - 1, last, 0, 0, ROLE_SHED, -1))

    def _hidden_at(self, key: tuple[int, int], t: int) -> bool:
        """A request read on thread key and left out by sampling was open at t (read
        before, not answered by then): the stamp of the thread's record at t says (the
        probes stamp it at the syscall's entry); with none, what is around t says, and
        an unknown counts as open."""
        if not self.thread_stamp.get(key, 0):
            return False  # no request of the thread was ever shed
        lst = self.threads.get(key)
        if not lst:
            return True
        n = len(lst)
        i = j = _bisect_left(lst, (t,))
        while j < n and lst[j][0] == t:
            if lst[j][5] >= 0:
                return lst[j][5] > 0
            j += 1
        j = i - 1  # back to the last stamped record before t
        while j >= 0 and lst[j][5] < 0:
            if lst[j][4] == ROLE_SHED and lst[j][1] == _INGRESS:
                return True
            j -= 1
        if j >= 0 and lst[j][5] > 0:
            return True
        j = i  # shed reads told by the next stamped record may come before t
        while j < n and lst[j][5] < 0:
            if lst[j][4] == ROLE_SHED and lst[j][1] == _INGRESS:
                return True
            j += 1
        return j == n  # nothing stamped after t yet: not known

    def add(self, ctx: SpanContext) -> None:
        self._added += 1
        item = Item(ctx)
        s = ctx.span
        pid = s.pid
        keys = []
        self.items.append(item)
        self.comm[pid] = s.process
        conn_id = ctx.conn_id
        server = s.kind == KIND_SERVER
        # The range of what this side reads, the request of a server or the response
        # of a client: a read of it opens (server) or resumes (client) the context.
        off, n = (s.req_offset, s.req_bytes) if server else (s.resp_offset, s.resp_bytes)
        if off is not None:
            rkey = (conn_id, _INGRESS)
            _insort(self.ranges[rkey], (off, off + (n if n > 1 else 1), id(item), item))
            keys.append((_IX_RANGES, rkey))
        if server:
            item.thread_done = True
            self.pending_remote.append(item)
            key = (pid, ctx.in_tid)
            dur = ctx.out_ns - ctx.in_ns
            if dur > self.thread_maxdur.get(key, 0):
                self.thread_maxdur[key] = dur
            _insort(self.thread_servers[key], (ctx.in_ns, id(item), item))
            keys.append((_IX_THREAD_SERVERS, key))
            if s.trace_headers:
                for hk in header_keys(s):
                    self.by_header[(pid, hk)].append(item)
                    keys.append((_IX_BY_HEADER, (pid, hk)))
            if off is not None and conn_id in self.inflight_threads:
                self._settle_inflight(conn_id, off, s.req_bytes)
        else:
            item.remote_done = True
            self.pending_thread.append(item)
            if s.transport == "tcp" and s.req_seq is not None:
                self.client_by_seq[s.req_seq].append(item)
                keys.append((_IX_CLIENT_BY_SEQ, s.req_seq))
            elif s.transport == "udp":
                k = self._udp_key(s)
                self.udp_clients[k].append(item)
                keys.append((_IX_UDP_CLIENTS, k))
        item.keys = tuple(keys)

    def _settle_inflight(self, conn_id: int, off: int | None, size: int) -> None:
        """The request at [off, off+size) of conn_id is known now: no longer in flight."""
        if off is None:
            return
        end = off + (size if size > 1 else 1)
        threads = self.inflight_threads.get(conn_id)
        if not threads:
            return
        inflight = self.inflight
        for key in list(threads):
            d = inflight.get(key)
            if not d:
                threads.discard(key)
                continue
            left = False  # reads of conn_id still open on this thread
            for k in list(d):
                if k[0] == conn_id:
                    if off <= k[1] < end:
                        del d[k]
                    else:
                        left = True
            if not left:
                threads.discard(key)
            if not d:
                del inflight[key]
        if not threads:
            del self.inflight_threads[conn_id]

    _udp_key = staticmethod(links.udp_key)

    # -- attribution ------------------------------------------------------------------
    def _context_of_read(self, conn_id: int, offset: int, ts: int, role: int, now: int,
                         depth: int, pid: int) -> tuple[str, Item | None]:
        """("ok", server item) / ("pending", None) / (reason, None) for a read of
        process pid."""
        if role == ROLE_SHED:
            return SHED_READ, None
        lst = self.ranges.get((conn_id, _INGRESS))
        it = None
        if lst:
            # the known messages holding offset (ranges are sorted by start)
            i = _bisect_right(lst, (offset, _INF, 0, None))
            for j in range(i - 1, max(0, i - 8) - 1, -1):
                start, end, _, cand = lst[j]
                if start <= offset < end:
                    if it is not None:
                        return "read spans several requests", None
                    it = cand
        if it is None:
            if role == _ROLE_CLIENT:
                return self._context_of_conn_read(conn_id, ts, now, depth, pid)
            if ts <= self.dropped_end_ns:  # its span may be one dropped from memory
                return HISTORY_DROPPED, None
            return "pending", None
        if it.span.kind == KIND_SERVER:
            return "ok", it
        if not it.thread_done:
            if role == _ROLE_CLIENT and it.ctx.out_ns > ts:
                # an earlier round trip of the same call (a statement prepared before it
                # is executed): the span's request write comes after this read
                return self._context_of_conn_read(conn_id, ts, now, depth, pid)
            return "pending", None
        if it.parent is None:
            if it.link == "root":
                # the answer to a call the thread began on its own (a client, a periodic
                # job): what it writes next begins anew too, it is not a lost context
                return "root", None
            return "resumed context unknown", None
        if it.link == "header":
            # Its parent came from a propagated id, not from a thread's history: the
            # call was handed off (a pool thread wrote it), and the thread reading its
            # answer is not known to work for that request afterwards.
            return "resumed context of a hand-off", None
        return "ok", it.parent

    def _context_of_conn_read(self, conn_id: int, ts: int, now: int, depth: int,
                              pid: int) -> tuple[str, Item | None]:
        """The context a read at ts by process pid on a client connection resumes: that
        of the writes on the connection just before it (the request it answers), parsed
        or not.  All of them must be in one context: writes of several (pipelining, a
        connection shared by requests) refuse; so do writes of another process (one
        connection id for two processes' sockets when the ring lost a close and the
        next connect at that address, or a socket shared after fork)."""
        if depth >= _MAX_DEPTH:
            return "chain of calls too deep", None
        ev = self.conn_events.get(conn_id)
        if not ev:
            return NO_SPAN, None
        i = _bisect_left(ev, (ts,)) - 1
        while i >= 0 and ev[i][1] == _INGRESS:  # earlier reads of the same answer
            i -= 1
        found: Item | None = None
        n = 0
        while i >= 0 and ev[i][1] == _EGRESS:
            wts, _d, wpid, tid = ev[i]
            if wpid != pid:
                return OTHER_PROCESS, None
            status, ctxt = self._context_of_write(wpid, tid, wts, now, depth + 1)
            if status != "ok":
                return status, None
            if found is not None and ctxt is not found:
                return "connection shared by several requests", None
            found = ctxt
            n += 1
            i -= 1
        if found is None:
            return NO_SPAN, None  # nothing written before it: not an answer
        self._via_conn = True
        return "ok", found

    def _context_of_write(self, pid: int, tid: int, t: int, now: int,
                          depth: int) -> tuple[str, Item | None]:
        """The context a thread was in when it wrote at t (no span of its own)."""
        key = (pid, tid, t)
        hit = self._write_ctx.get(key)
        if hit is not None:
            if hit[0] == "ok":
                self._via_conn = True
            return hit[0], hit[1]
        status, parent, _how = self._thread_context(pid, tid, t, t, now, None, depth)
        if status == "root":
            status = NO_SPAN  # a write with nothing read before it: whose, unknown
        if status != "pending":
            self._write_ctx[key] = (status, parent)
        return status, parent

    def _decide_thread(self, item: Item, now: int) -> bool:
        """Decide a client span's parent in its process; False to wait."""
        c = item.ctx
        s = c.span
        pc = self.per_process[s.pid]
        self._via_conn = False
        status, parent, how = self._thread_context(s.pid, c.out_tid, c.out_ns, s.start_ns,
                                                   now, s, 0)
        if status == "pending":
            return False
        if status == "root":  # nothing read before it: the request starts here
            if header_keys(s):
                # ...unless the thread was handed the work (a pool's first job): a
                # propagated id may still say whose it is.
                parent = self._by_header(item)
                if parent is not None:
                    return self._link(item, parent, "header")
                if self._now - s.end_ns < self.max_wait_ns and \
                        self._server_inflight(s.pid, c.out_ns):
                    return False  # a request read before it may carry that id
            item.thread_done = True
            item.link = "root"
            pc["root client (no read before it)"] += 1
            return True
        if status != "ok":
            return self._refuse(item, status)
        if header_keys(s):
            by_header = self._by_header(item)
            if by_header is not None and by_header is not parent:
                item.thread_done = True  # two kinds of evidence disagree: no link
                pc["refused: thread and propagated id disagree"] += 1
                self.stats["refused"] += 1
                item.span.attributes[PARENT_UNKNOWN] = \
                    "thread and propagated id disagree"
                return True
        if self._via_conn and how == "thread":
            how = "thread via connection"
        return self._link(item, parent, how)

    def _thread_context(self, pid: int, tid: int, t: int, start_ns: int, now: int,
                        child: Span | None, depth: int) -> tuple[str, Item | None, str]:
        """The request whose context thread tid of pid was in when it wrote at t:
        ("ok", item, how), ("pending", None, ""), ("root", None, "") when nothing was
        read before it, or (refusal reason, None, "").  child (the span written, if
        any) lends its payload tokens where several requests are candidates."""
        mode = self.classifier.mode(pid)
        if mode == MODE_GO or (mode == MODE_GO_GOID and tid < GOROUTINE_BASE):
            return "M:N runtime: thread is not the request", None, ""
        key = (pid, tid)
        tl = self.threads.get(key)
        if not tl:
            return "no thread history (events lost?)", None, ""
        lst = tl
        i = _bisect_left(lst, (t, -1, 0, 0, 0)) - 1
        # skip back over writes (siblings written earlier in the same context)
        last_write = lst[i][0] if i >= 0 else 0
        while i >= 0 and lst[i][1] == _EGRESS:
            i -= 1
        if i < 0:
            if self.handoffs is not None and mode == MODE_GO_GOID:
                return self._handed_off(pid, tid, last_write, t, start_ns, now, child,
                                        depth)
            return "root", None, ""
        contexts: list[Item] = []
        while i >= 0 and lst[i][1] == _INGRESS:
            rts, _, sock, off, role, _open = lst[i]
            status, ctxt = self._context_of_read(sock, off, rts, role, now, depth, pid)
            if status == SHED_READ:
                return self._after_shed_read(lst, pid, tid, t, start_ns, now, child,
                                             contexts)
            if status == "pending":
                if now - rts < self.max_wait_ns:
                    return "pending", None, ""
                return NO_SPAN, None, ""
            if status == "root" and not contexts and (i == 0 or lst[i - 1][1] != _INGRESS):
                return "root", None, ""  # its only read answers a call of its own
            if status != "ok":
                return status, None, ""
            if ctxt not in contexts:
                contexts.append(ctxt)
            i -= 1
        if len(contexts) == 1:
            parent, how = contexts[0], "thread"
            # Event loops: if the thread read anything of another context since this
            # context's request, "last read" is not trustworthy (a queued call may be
            # written from another request's callback); payload evidence or nothing.
            others = self._others_since(lst, parent, t, now, depth, pid)
            if others is None:
                return "pending", None, ""  # a read in the window is not attributable yet
            if others:
                parent = self._by_token(child, [parent] + others)
                if parent is None:
                    return "several requests in flight on the thread", None, ""
                how = "thread+token"
        else:
            parent = self._by_token(child, contexts)
            if parent is None:
                return "reads of several requests interleave", None, ""
            how = "thread+token"
        if how == "thread":
            # Requests still open on this thread when the call was written: more than
            # one means the thread multiplexes requests (an event loop), where a call
            # queued by one request can be written in another's callback.
            open_ = self._open_requests(lst, pid, tid, t, now)
            if open_ is None:
                return "pending", None, ""
            others = [x for x in open_ if x is not parent]
            if others:
                parent = self._by_token(child, [parent] + others)
                if parent is None:
                    return "several requests in flight on the thread", None, ""
                how = "thread+token"
        return self._checked(parent, t, start_ns, how)

    @staticmethod
    def _checked(parent: Item, t: int, start_ns: int,
                 how: str) -> tuple[str, Item | None, str]:
        ps = parent.ctx
        if ps.has_response and ps.out_ns < t:
            return "context already answered (hand-off?)", None, ""
        if not (parent.span.start_ns <= start_ns):
            return "child starts before parent", None, ""
        return "ok", parent, how

    def _after_shed_read(self, lst: list, pid: int, tid: int, t: int, start_ns: int,
                         now: int, child: Span | None,
                         contexts: list[Item]) -> tuple[str, Item | None, str]:
        """The reads just before a write at t include a request read left out by
        sampling: whose context the thread was in is unknown.  Only a payload token
        shared with exactly one of the requests open on the thread (or resumed by those
        reads) links; the shed request, of unknown tokens, is among them."""
        open_ = self._open_requests(lst, pid, tid, t, now)
        if open_ is None:
            return "pending", None, ""
        cands = [x for x in open_ if x.span.kind == KIND_SERVER]
        for x in contexts:
            if x not in cands:
                cands.append(x)
        parent = self._by_token(child, cands) if cands else None
        if parent is None:
            return SHED_READ, None, ""
        return self._checked(parent, t, start_ns, "thread+token")

    def _handed_off(self, pid: int, tid: int, last_write: int, t: int, start_ns: int,
                    now: int, child: Span | None,
                    depth: int) -> tuple[str, Item | None, str]:
        """A goroutine that read nothing wrote at t: it works for the goroutine that
        woke it, if exactly one did since its previous write (Go's pooled HTTP client:
        the request's goroutine hands the request to the connection's writeLoop)."""
        if depth >= _MAX_DEPTH:
            return "chain of calls too deep", None, ""
        w = self.handoffs.waker(pid, tid, last_write if last_write < t else 0, t)
        if w is None:
            why = self.handoffs.last_refusal
            # a goroutine that received nothing since its last write calls on its own;
            # anything else it received, from whom we cannot say: refused, and said
            return ("root", None, "") if why in ("", NOTHING_SEEN) else \
                (f"hand-off: {why}", None, "")
        status, parent, _how = self._thread_context(pid, w[0], w[1], start_ns, now, child,
                                                    depth + 1)
        if status == "ok":
            return "ok", parent, "goroutine hand-off"
        if status in ("pending", "root"):
            return status, None, ""
        return f"hand-off: {status}", None, ""

    def _server_inflight(self, pid: int, t: int) -> bool:
        """A server request of process pid read before t whose span is not known yet."""
        for (p, _tid), reads in self.inflight.items():
            if p == pid and any(ts < t for ts in reads.values()):
                return True
        return False

    def _open_requests(self, lst: list, pid: int, tid: int, t: int,
                       now: int) -> list[Item] | None:
        """Server requests read on this thread before t and not answered by t; None
        while such a request's span is not complete yet (it may be the real parent)."""
        key = (pid, tid)
        for (_conn, _off), ts in self.inflight.get(key, {}).items():
            if ts < t and now - ts < self.max_wait_ns:
                return None
        open_: list[Item] = []
        # a request left out by sampling, or one whose span was dropped from memory,
        # may be open at t: an unknown context
        if self._hidden_at(key, t) or t <= self.dropped_end_ns:
            open_.append(Item(SpanContext(Span(), 0, 0, 0, 0, 0, False)))
        servers = self.thread_servers.get(key)
        if servers:
            lo_ns = t - self.thread_maxdur.get(key, 0) - 1
            i = _bisect_left(servers, (t,)) - 1
            while i >= 0 and servers[i][0] >= lo_ns:
                it = servers[i][2]
                if not it.ctx.has_response or it.ctx.out_ns > t:
                    open_.append(it)
                i -= 1
        return open_

    def _others_since(self, lst: list, parent: Item, t: int, now: int,
                      depth: int, pid: int) -> list[Item] | None:
        """Contexts other than parent's read on this thread between parent's request
        and t; None while one of those reads is not attributable yet."""
        start = parent.ctx.in_ns if parent.span.kind == KIND_SERVER else parent.span.start_ns
        lo = _bisect_left(lst, (start,))
        hi = _bisect_left(lst, (t,))
        others: list[Item] = []
        # the thread's reads before the horizon are gone: what they were, unknown
        unknown = start < self.history_from_ns
        for ts, d, conn, off, role, _open in lst[lo:hi]:
            if d != _INGRESS:
                continue
            status, ctxt = self._context_of_read(conn, off, ts, role, now, depth, pid)
            if status == "pending":
                if now - ts < self.max_wait_ns:
                    return None
                unknown = True
            elif status != "ok":
                unknown = True
            elif ctxt is not parent and ctxt not in others:
                others.append(ctxt)
        if unknown and not others:
            # something unattributable happened on the thread: treat as another context
            others.append(Item(SpanContext(Span(), 0, 0, 0, 0, 0, False)))
        return others

    @staticmethod
    def _by_token(child: Span | None, candidates: list[Item]) -> Item | None:
        """The one candidate a rare payload token of child points to, or None.
        (evidence.pick_by_tokens, with each candidate's tokens extracted once.)"""
        if child is None:
            return None
        ct = evidence.tokens(child)
        if not ct:
            return None
        sets = []
        for x in candidates:
            t = x.tokens
            if t is None:
                t = x.tokens = evidence.tokens(x.span)
            sets.append(t)
        i = evidence.pick_by_token_sets(ct, sets)
        return None if i is None else candidates[i]

    def _by_header(self, item: Item) -> Item | None:
        """The one server span of the process, open when item's request was written,
        that carries one of item's propagated ids (X-Request-ID, traceparent trace)."""
        s = item.span
        found: list[Item] = []
        for hk in header_keys(s):
            for cand in self.by_header.get((s.pid, hk), ()):
                c = cand.ctx
                if cand in found or cand.span.start_ns > s.start_ns:
                    continue
                if c.has_response and c.out_ns < item.ctx.out_ns:
                    continue
                found.append(cand)
        return found[0] if len(found) == 1 else None

    def _link(self, item: Item, parent: Item, how: str) -> bool:
        item.parent, item.link = parent, how
        if parent.children is None:
            parent.children = [item]
        else:
            parent.children.append(item)
        item.thread_done = True
        self.per_process[item.span.pid][f"linked by {how}"] += 1
        self.stats[f"linked_{how}"] += 1
        return True

    def _refuse(self, item: Item, reason: str) -> bool:
        """Refuse the thread-based link; a propagated id may still join the spans."""
        if header_keys(item.span):
            parent = self._by_header(item)
            if parent is not None:
                return self._link(item, parent, "header")
            if self._now - item.span.end_ns < self.max_wait_ns:
                return False  # its parent may not have completed yet
        item.thread_done = True
        self.per_process[item.span.pid][f"refused: {reason}"] += 1
        self.stats["refused"] += 1
        # say so on the span, so a trace view shows why it is a root ("parent unknown")
        item.span.attributes[PARENT_UNKNOWN] = reason
        return True

    def _decide_remote(self, item: Item, now: int) -> bool:
        """Find the client span of a server span's request; False to wait."""
        s = item.span
        if s.transport == "tcp" and s.req_seq is not None:
            cands = [c for c in self.client_by_seq.get(s.req_seq, ()) if c.span.pid != s.pid
                     or c.ctx.conn_id != item.ctx.conn_id]
            keep = links.pick_by_seq([links.seq_strength(c.span, s) for c in cands])
            cands = [cands[i] for i in keep]
        elif s.transport == "udp":
            cands = [c for c in self.udp_clients.get(self._udp_key(s), ())
                     if links.udp_within(c.span, s)]
        else:
            cands = []
        if len(cands) == 1:
            c = cands[0]
            item.parent, item.link = c, "tcp seq" if s.transport == "tcp" else "udp tuple"
            if c.children is None:
                c.children = [item]
            else:
                c.children.append(item)
            item.remote_done = True
            self.stats["linked_remote"] += 1
            return True
        if len(cands) > 1:
            self.stats["remote_ambiguous"] += 1
            item.remote_done = True
            s.attributes[PARENT_UNKNOWN] = \
                f"{len(cands)} client spans match the request"
            return True
        if now - s.end_ns < self.quiet_ns:
            return False  # the client side may still be on its way
        item.remote_done = True
        self.stats["roots"] += 1
        return True

    # -- time -------------------------------------------------------------------------
    def tick(self, now: int | None = None, final: bool = False) -> None:
        now = _clock_now() if now is None else now
        self._now = now if not final else now + self.max_wait_ns
        settled = now - self.settle_ns
        # Waiting decisions only change when spans arrive (or a wait times out): skip
        # the pass otherwise, which under load is most ticks.
        if not final and not self._added and now < self._next_full:
            self._emit_quiet(now, final)
            self._prune(now)
            return
        self._added = 0
        self._next_full = now + 1000 * _MS
        self.pending_thread = [it for it in self.pending_thread if not it.thread_done]
        pending = sorted((it for it in self.pending_thread
                          if final or it.span.end_ns <= settled),
                         key=lambda it: it.ctx.out_ns)
        # A decision can unblock later ones (a resumed context, a parent that is now
        # known): repeat while there is progress, so a deep chain resolves in one tick.
        for _ in range(8):
            undecided = [it for it in pending if not it.thread_done
                         and not self._decide_thread(it, now if not final
                                                     else now + self.max_wait_ns)]
            if len(undecided) == len(pending):
                break
            pending = undecided
        still = []
        for it in self.pending_remote:
            if not (final or it.span.end_ns <= settled) or not self._decide_remote(
                    it, now if not final else now + self.quiet_ns):
                still.append(it)
        self.pending_remote = still
        self._emit_quiet(now, final)
        self._prune(now)

    def _emit_quiet(self, now: int, final: bool) -> None:
        if not final and now < self._next_emit:
            return
        self._next_emit = now + 250 * _MS
        groups: dict[Item, list[Item]] = {}
        root_of: dict[Item, Item] = {}  # items hash by identity
        for it in self.items:
            root = root_of.get(it)  # known when a child's walk passed through it
            if root is None:
                cur = it.parent
                if cur is None:
                    root = it
                elif cur in root_of:
                    root = root_of[cur]
                else:
                    # walk up until an item whose root is known; remember the path's root
                    path = [it]
                    while (cur.parent is not None and cur not in root_of
                           and len(path) < 1000):
                        path.append(cur)  # bounded: a parent cycle must not hang the agent
                        cur = cur.parent
                    root = root_of.get(cur, cur)
                    for x in path:
                        root_of[x] = root
                    root_of[cur] = root
                root_of[it] = root
            g = groups.get(root)
            if g is None:
                groups[root] = [it]
            else:
                g.append(it)
        quiet_before = now - self.quiet_ns
        emitted = False
        for root, members in groups.items():
            if not final:
                if not all(m.thread_done and m.remote_done for m in members):
                    continue
                if max(m.span.end_ns for m in members) > quiet_before:
                    continue
            tid = root.trace_id or self._trace_id(members)
            spans = []
            for m in members:
                m.emitted = True
                m.trace_id = tid
                sp = m.span
                sp.trace_id = tid
                sp.parent_span_id = m.parent.span.span_id if m.parent else ""
                spans.append(sp)
            emitted = True
            self.stats["traces"] += 1
            self.emit(Trace(tid, spans, root.span))
        if emitted:
            self.emitted.extend(it for it in self.items if it.emitted)
            self.items = [it for it in self.items if not it.emitted]

    @staticmethod
    def _trace_id(members: list[Item]) -> str:
        for m in sorted(members, key=lambda m: m.span.start_ns):
            tp = m.span.trace_headers.get("traceparent", "")
            parts = tp.split("-")
            if len(parts) >= 3 and len(parts[1]) == 32:
                return parts[1]  # join the W3C trace the application already carries
        return new_trace_id()

    def _prune(self, now: int) -> None:
        """Forget emitted spans past the late-joiner window, and old thread history."""
        if now < self._next_prune:
            return
        self._next_prune = now + 1000 * _MS
        keep_after = now - self.max_wait_ns - self.quiet_ns
        em = self.emitted
        gone: set[Item] = set()
        touched: dict[tuple[int, object], None] = {}  # (index number, key)
        while em and (em[0].span.end_ns < keep_after or len(em) > self.max_emitted):
            it = em.popleft()
            if it.span.end_ns >= keep_after:  # dropped early: the memory bound
                self.dropped_end_ns = max(self.dropped_end_ns, it.span.end_ns)
                self.stats["emitted_dropped_early"] += 1
            gone.add(it)
            for ik in it.keys:
                touched[ik] = None
            it.parent = None  # let the chain be collected
            it.children = None
        indexes = self._indexes
        for ix, key in touched:
            index = indexes[ix]
            lst = index.get(key)
            if lst is None:
                continue
            lst[:] = [x for x in lst if (x[-1] if type(x) is tuple else x) not in gone]
            if not lst:
                del index[key]
        horizon = now - self.horizon_ns
        self.history_from_ns = max(self.history_from_ns, horizon)
        for k in list(self.threads):
            tl = self.threads[k]
            if tl and tl[0][0] < horizon:
                del tl[:_bisect_left(tl, (horizon,))]
            if not tl:
                del self.threads[k]
                self.thread_maxdur.pop(k, None)
                self.thread_stamp.pop(k, None)
        for k in list(self.conn_events):
            ce = self.conn_events[k]
            if ce and ce[0][0] < horizon:
                del ce[:_bisect_left(ce, (horizon,))]
            if not ce:
                del self.conn_events[k]
        if self._write_ctx:
            self._write_ctx = {k: v for k, v in self._write_ctx.items() if k[2] >= horizon}
        stale = now - self.horizon_ns
        for k in list(self.inflight):
            d = self.inflight[k]
            for kk in [kk for kk, ts in d.items() if ts < stale]:
                del d[kk]
            if not d:
                del self.inflight[k]

    def close(self) -> None:
        self.tick(final=True)

    def process_report(self) -> list[dict]:
        """Per process: runtime mode, links made and refused by reason."""
        out = []
        for pid, c in sorted(self.per_process.items()):
            out.append({"pid": pid, "process": self.comm.get(pid, ""),
                        "mode": self.classifier.mode(pid), "counts": dict(c)})
        return out
