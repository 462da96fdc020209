"""Which goroutine handed work to which: Go wake records (bpf/gowake.c), by process.

Go's pooled HTTP client writes a request on the connection's `writeLoop` goroutine,
which never read the request that caused it: the handler goroutine sends the request
on a channel the writeLoop receives from.  The value reaches the writeLoop in one of
three ways, each recorded exactly by the probes:
- hand-off: the writeLoop was parked on the channel; runtime.send copies the value to
  it and runtime.ready wakes it on the sender's thread ("G1 handed a value to G2");
- buffer: the writeLoop was not parked (a new connection's first request: its writeLoop
  had not run yet), so the value waited in the channel's buffer and nothing woke
  anyone.  Every copy into or out of a buffer slot is recorded (ENQ, DEQ; SWAP when a
  receiver takes the head of a full buffer and a parked sender's value takes its place)
  under the channel's lock, so a slot's records arrive in the order the values went
  through it: the sender of a dequeued value is the goroutine of the slot's previous
  record, if that record is an ENQ and no record was lost in between;
- direct: the sender was parked on an unbuffered channel and the receiver took its
  value (runtime.recv).
Every other wake-up is recorded too (runtime.ready for mutexes, closes, timers, GC:
"other"), and every receive G2 starts (runtime.chanrecv, selectgo).
`HandoffIndex.waker` names G1 for a write of G2 only when that write was preceded, since
G2's previous write, by exactly one receive, satisfied by exactly one known value (a
hand-off, a dequeued value whose sender is known, a direct receive) and nothing else
woke G2; anything less certain (several wakes or values, a wake by the scheduler, a
slot whose previous record is not an ENQ or is forgotten, a select that both sends and
receives, lost records, forgotten history) answers None.

Memory is bounded per process: at most PER_GOROUTINE records per goroutine and
MAX_GOROUTINES goroutines, none older than MAX_AGE_NS past the newest record, and the
last record of at most MAX_SLOTS buffer slots.  What is forgotten raises a floor under
which the index answers None rather than guess."""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable

from agent.probes import abi
from agent.stitch.runtime import GOROUTINE_BASE

# Channel-buffer record kinds (bpf/gowake.c; abi.WAKE_* are 1-3).  For these the record's
# `waker` field is a buffer slot's address (a goid for DIRECT) and `thread_goid` carries
# the parked sender's goid (SWAP) or the second address (MIXED).
WAKE_ENQ, WAKE_DEQ, WAKE_SWAP, WAKE_DIRECT, WAKE_MIXED = (
    abi.WAKE_ENQ, abi.WAKE_DEQ, abi.WAKE_SWAP, abi.WAKE_DIRECT, abi.WAKE_MIXED)
KIND_NAMES = abi.WAKE_KIND_NAMES

# A connection's writeLoop gathers a receive and a hand-off per request: at 16 records
# a busy connection kept 70-140 ms of history, less than the agent's lag plus the
# stitcher's wait, and most questions found their records gone (bench_fidelity: 8.65 %
# end to end).  1024 keeps seconds; MAX_PER_PROCESS bounds the total (~80 B a record).
PER_GOROUTINE = 1024
MAX_PER_PROCESS = 262_144
MAX_GOROUTINES = 20_000
MAX_SLOTS = 16_384  # buffer slots per process whose last record is kept (~200 B each):
# a DEQ is resolved as its record arrives, microseconds to milliseconds after its ENQ
MAX_AGE_NS = 30 * 10**9  # > the stitcher's max_wait (5 s): queries come that late
MAX_PROCESSES = 1024
_PRUNE_EVERY = 4096
_INF = float("inf")
# Why waker() found no hand-off when nothing at all was recorded for the goroutine in
# the interval: the write is a call of its own (a root), not a refused link.
NOTHING_SEEN = "nothing received"
# what satisfies a receive: exactly one of these, with a known sender, links
_SOURCES = (abi.WAKE_HANDOFF, WAKE_DEQ, WAKE_DIRECT)


class _Goroutine:
    __slots__ = ("floor", "recs")

    def __init__(self, floor: int) -> None:
        self.floor = floor  # records at or before floor may be missing
        # (ts, kind, waker goid, at): at is when the waker's context counts (the moment
        # of the hand-off, or of the ENQ of a dequeued value); ts order
        self.recs: list[tuple[int, int, int, int]] = []


class _Process:
    __slots__ = ("gs", "horizon", "forgot_below", "max_goid", "newest", "total", "slots")

    def __init__(self) -> None:
        # goid -> history, least recently woken first (eviction order)
        self.gs: OrderedDict[int, _Goroutine] = OrderedDict()
        self.horizon = 0       # newest record of any goroutine forgotten whole
        self.forgot_below = 0  # goids <= this may have been forgotten (goids only grow)
        self.max_goid = 0
        self.newest = 0
        self.total = 0  # records held, over all goroutines
        # buffer slot address -> its last record (ts, kind, goid, lost count), least
        # recently used first.  A forgotten slot has no previous record: a value
        # dequeued from it then has no known sender.
        self.slots: OrderedDict[int, tuple[int, int, int, int]] = OrderedDict()

    def forget(self, goid: int, g: _Goroutine) -> None:
        if g.recs:
            self.horizon = max(self.horizon, g.recs[-1][0])
        self.forgot_below = max(self.forgot_below, self.max_goid)
        self.total -= len(g.recs)
        del self.gs[goid]

    def set_slot(self, addr: int, rec: tuple[int, int, int, int]) -> None:
        self.slots[addr] = rec
        self.slots.move_to_end(addr)
        if len(self.slots) > MAX_SLOTS:
            self.slots.popitem(last=False)

    def sender(self, addr: int, ts: int, lost: int) -> tuple[int, int]:
        """(goid, ts) of the ENQ whose value a DEQ of slot addr at ts took; (0, 0) when
        the slot's previous record is not a known ENQ before ts with no loss since.
        (A runtime.recv recorded twice puts two DEQs in its receiver's history: that
        receive refuses, and the slot holds the sender's value either way.)"""
        prev = self.slots.get(addr)
        if prev is None:
            return 0, 0  # never seen, or forgotten
        pts, kind, goid, plost = prev
        if kind != WAKE_ENQ or not goid or plost != lost or pts >= ts:
            return 0, 0
        return goid, pts


class HandoffIndex:
    """Go wake records per process, answering "who handed this goroutine its work"."""

    def __init__(self, per_goroutine: int = PER_GOROUTINE,
                 max_goroutines: int = MAX_GOROUTINES, max_age_ns: int = MAX_AGE_NS) -> None:
        self.per_goroutine = per_goroutine
        self.max_goroutines = max_goroutines
        self.max_age_ns = max_age_ns
        self._procs: dict[int, _Process] = {}
        self._lost_seen = 0
        self._lost_horizon = 0  # records lost in the kernel before this time
        self.last_refusal = ""  # why the last waker() call answered None
        self._since_prune = 0
        self._newest = 0  # newest record of any process: the clock pruning goes by
        self.stats = {"records": 0, "answered": 0, "refused": 0,
                      "answered by buffer": 0, "answered direct": 0}

    def add_all(self, wakes: Iterable) -> None:
        """Feed WakeEvents (agent/probes/events.py) in the order the ring gave them
        (buffer slot records must come in that order; the others may come in any)."""
        for w in wakes:
            self.add(w.pid, w.goid, w.kind, w.waker, w.ts, w.lost, w.thread_goid)

    def add(self, pid: int, goid: int, kind: int, waker: int, ts: int, lost: int = 0,
            other: int = 0) -> None:
        """One record: goroutine goid woken by waker (kind HANDOFF/OTHER; waker 0 is the
        scheduler), starting a receive (RECV), or copying a value into / out of buffer
        slot waker (ENQ / DEQ; SWAP: out of it, parked sender `other`'s value into it),
        receiving directly from parked sender waker (DIRECT), or copying between waker
        and other in a select of sends and receives (MIXED), at ts."""
        self.stats["records"] += 1
        if lost > self._lost_seen:
            # the kernel lost records (ring full) somewhere before this one (a record of
            # another CPU may still arrive with the older count: that says nothing new)
            self._lost_seen = lost
            self._lost_horizon = max(self._lost_horizon, ts)
        p = self._procs.get(pid)
        if p is None:
            if len(self._procs) >= MAX_PROCESSES:
                self._drop_oldest_process()
            p = self._procs[pid] = _Process()
        if ts > p.newest:
            p.newest = ts
            if ts > self._newest:
                self._newest = ts
        if goid > p.max_goid:
            p.max_goid = goid
        at = ts
        if kind == WAKE_ENQ:
            p.set_slot(waker, (ts, WAKE_ENQ, goid, lost))
            return  # the sender's own history is not changed by sending
        if kind in (WAKE_DEQ, WAKE_SWAP):
            addr = waker
            waker, at = p.sender(addr, ts, lost)
            p.set_slot(addr, (ts, WAKE_DEQ, goid, lost))
            if kind == WAKE_SWAP:
                p.set_slot(addr, (ts, WAKE_ENQ, other, lost))
                p.max_goid = max(p.max_goid, other)
            kind = WAKE_DEQ
        elif kind == WAKE_MIXED:
            # which address was the slot is unknown: neither holds a known value now
            for addr in (waker, other):
                p.set_slot(addr, (ts, WAKE_MIXED, 0, lost))
            waker = 0
        if not goid:
            return  # the goroutine acting was not known: nothing to ask about it
        if waker > p.max_goid:
            p.max_goid = waker
        g = p.gs.get(goid)
        if g is None:
            # goids only grow: one above every goid known when history was last forgotten
            # cannot have lost any; an older one may have
            g = p.gs[goid] = _Goroutine(p.horizon if goid <= p.forgot_below else 0)
            if len(p.gs) > self.max_goroutines:
                old, og = next(iter(p.gs.items()))
                p.forget(old, og)
        else:
            p.gs.move_to_end(goid)
        recs = g.recs
        rec = (ts, kind, waker, at)
        if not recs or recs[-1][0] <= ts:
            recs.append(rec)
        else:  # records of several CPUs may arrive slightly out of order
            i = len(recs)
            while i > 0 and recs[i - 1][0] > ts:
                i -= 1
            recs.insert(i, rec)
        p.total += 1
        if len(recs) > self.per_goroutine:
            # drop the oldest quarter at once: amortised O(1) per record
            k = max(1, len(recs) // 4)
            g.floor = max(g.floor, recs[k - 1][0])
            del recs[:k]
            p.total -= k
        while p.total > MAX_PER_PROCESS and len(p.gs) > 1:
            old, og = next(iter(p.gs.items()))  # least recently woken first
            p.forget(old, og)
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self.prune()

    def prune(self) -> None:
        """Forget goroutines not woken for max_age_ns, and processes with nothing left
        (gone, or quiet)."""
        self._since_prune = 0
        cutoff = self._newest - self.max_age_ns
        for pid in list(self._procs):
            p = self._procs[pid]
            while p.gs:
                goid, g = next(iter(p.gs.items()))
                if g.recs and g.recs[-1][0] >= cutoff:
                    break
                p.forget(goid, g)
            while p.slots:
                _addr, rec = next(iter(p.slots.items()))
                if rec[0] >= cutoff:
                    break
                p.slots.popitem(last=False)
            if not p.gs and not p.slots:
                del self._procs[pid]

    def _drop_oldest_process(self) -> None:
        oldest = min(self._procs, key=lambda pid: self._procs[pid].newest)
        del self._procs[oldest]

    def waker(self, pid: int, wakee_tid: int, after_ns: int,
              before_ns: int) -> tuple[int, int] | None:
        """(waker_tid, ts) when exactly one goroutine of pid gave wakee_tid the value it
        received in (after_ns, before_ns); ts is when that goroutine's context counts
        (the hand-off, or its ENQ of a buffered value).  None for none or several (or
        an excluded wake).

        Tids are the pipeline's goroutine keys (GOROUTINE_BASE + goid).  Stricter than
        "one wake": the wakee must have started exactly one receive in the interval,
        satisfied by one channel hand-off from a goroutine (not the scheduler), one
        buffered value whose sender is known, or one direct receive, with nothing else
        waking it; and the interval must lie wholly in what the index remembers."""
        got = self._waker(pid, wakee_tid, after_ns, before_ns)
        if isinstance(got, str):
            self.stats["refused"] += 1
            self.last_refusal = got
            return None
        self.last_refusal = ""
        self.stats["answered"] += 1
        if got[2] == WAKE_DEQ:
            self.stats["answered by buffer"] += 1
        elif got[2] == WAKE_DIRECT:
            self.stats["answered direct"] += 1
        return got[0], got[1]

    def _waker(self, pid: int, wakee_tid: int, after_ns: int,
               before_ns: int) -> tuple[int, int, int] | str:
        """The hand-off, or why there is none: NOTHING_SEEN when the index remembers
        the whole interval and the goroutine received nothing in it (a call of its own),
        any other string when something was there that could not be attributed."""
        p = self._procs.get(pid)
        if p is None:
            return "no wake records for the process"
        if wakee_tid <= GOROUTINE_BASE:
            return "not a goroutine"
        if after_ns < self._lost_horizon:
            return "wake records lost"
        g = p.gs.get(wakee_tid - GOROUTINE_BASE)
        if g is None:
            # never woken through a channel: forgotten (its goid is old) or never seen
            return "history forgotten" if wakee_tid - GOROUTINE_BASE <= p.forgot_below \
                else NOTHING_SEEN
        if after_ns < g.floor:
            return "history forgotten"
        src = None
        recv = None
        recs = g.recs
        for ts, kind, waker, at in recs[bisect_right(recs, (after_ns, _INF)):]:
            if ts >= before_ns:
                break
            if kind == abi.WAKE_RECV:
                if recv is not None:
                    return "two receives"  # which one's value was written?
                recv = ts
            else:
                if src is not None:
                    return "woken twice"  # or two values
                if kind not in _SOURCES or not waker:
                    # woken by a mutex, timer, close, GC or the scheduler; a value of
                    # unknown sender or direction
                    return "woken by the runtime, not a sender"
                src = (GOROUTINE_BASE + waker, at, kind, ts)
        if src is None and recv is None:
            return NOTHING_SEEN
        if src is None:
            return "a receive with no sender seen"
        if recv is None or recv > src[3]:
            return "a wake with no receive before it"
        return src[0], src[1], src[2]

    def __len__(self) -> int:
        return sum(len(g.recs) for p in self._procs.values() for g in p.gs.values())
