"""Which goroutine handed work to which: Go wake records (bpf/gowake.c), by process.

Go's pooled HTTP client writes a request on the connection's `writeLoop` goroutine,
which never read the request that caused it: the handler goroutine sends the request
on a channel the writeLoop is parked on.  The probes record that hand-off (runtime.send
then runtime.ready on the sender's thread: "G1 handed a value to G2"), every other
wake-up (runtime.ready for mutexes, closes, timers, GC: "other"), and every receive G2
starts (runtime.chanrecv, selectgo).  `HandoffIndex.waker` names G1 for a write of G2
only when that write was preceded, since G2's previous write, by exactly one receive,
satisfied by exactly one hand-off, and nothing else woke G2; anything less certain
(several wakes, a buffered receive that needed no wake, a wake by the scheduler, lost
records, forgotten history) answers None.

Memory is bounded per process: at most PER_GOROUTINE records per goroutine and
MAX_GOROUTINES goroutines, none older than MAX_AGE_NS past the newest record.  What is
forgotten raises a floor under which the index answers None rather than guess."""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable

from agent.probes import abi
from agent.stitch.runtime import GOROUTINE_BASE

# A connection's writeLoop gathers a receive and a hand-off per request: at 16 records
# a busy connection kept 70-140 ms of history, less than the agent's lag plus the
# stitcher's wait, and most questions found their records gone (bench_fidelity: 8.65 %
# end to end).  1024 keeps seconds; MAX_PER_PROCESS bounds the total (~80 B a record).
PER_GOROUTINE = 1024
MAX_PER_PROCESS = 262_144
MAX_GOROUTINES = 20_000
MAX_AGE_NS = 30 * 10**9  # > the stitcher's max_wait (5 s): queries come that late
MAX_PROCESSES = 1024
_PRUNE_EVERY = 4096
_INF = float("inf")


class _Goroutine:
    __slots__ = ("floor", "recs")

    def __init__(self, floor: int) -> None:
        self.floor = floor  # records at or before floor may be missing
        self.recs: list[tuple[int, int, int]] = []  # (ts, kind, waker goid), ts order


class _Process:
    __slots__ = ("gs", "horizon", "forgot_below", "max_goid", "newest", "total")

    def __init__(self) -> None:
        # goid -> history, least recently woken first (eviction order)
        self.gs: OrderedDict[int, _Goroutine] = OrderedDict()
        self.horizon = 0       # newest record of any goroutine forgotten whole
        self.forgot_below = 0  # goids <= this may have been forgotten (goids only grow)
        self.max_goid = 0
        self.newest = 0
        self.total = 0  # records held, over all goroutines

    def forget(self, goid: int, g: _Goroutine) -> None:
        if g.recs:
            self.horizon = max(self.horizon, g.recs[-1][0])
        self.forgot_below = max(self.forgot_below, self.max_goid)
        self.total -= len(g.recs)
        del self.gs[goid]


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
        self._since_prune = 0
        self._newest = 0  # newest record of any process: the clock pruning goes by
        self.stats = {"records": 0, "answered": 0, "refused": 0}

    def add_all(self, wakes: Iterable) -> None:
        """Feed WakeEvents (agent/probes/events.py), in any order."""
        for w in wakes:
            self.add(w.pid, w.goid, w.kind, w.waker, w.ts, w.lost)

    def add(self, pid: int, goid: int, kind: int, waker: int, ts: int, lost: int = 0) -> None:
        """One record: goroutine goid woken by waker (kind HANDOFF/OTHER; waker 0 is the
        scheduler) or starting a receive (kind RECV), at ts."""
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
        if goid > p.max_goid:
            p.max_goid = goid
        if waker > p.max_goid:
            p.max_goid = waker
        if ts > p.newest:
            p.newest = ts
            if ts > self._newest:
                self._newest = ts
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
        rec = (ts, kind, waker)
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
            if not p.gs:
                del self._procs[pid]

    def _drop_oldest_process(self) -> None:
        oldest = min(self._procs, key=lambda pid: self._procs[pid].newest)
        del self._procs[oldest]

    def waker(self, pid: int, wakee_tid: int, after_ns: int,
              before_ns: int) -> tuple[int, int] | None:
        """(waker_tid, wake_ts) when exactly one goroutine of pid woke wakee_tid in
        (after_ns, before_ns); None for none or several (or an excluded wake).

        Tids are the pipeline's goroutine keys (GOROUTINE_BASE + goid).  Stricter than
        "one wake": the one wake must be a channel hand-off from a goroutine (not the
        scheduler), the wakee must have started exactly one receive in the interval,
        before it, and the interval must lie wholly in what the index remembers."""
        got = self._waker(pid, wakee_tid, after_ns, before_ns)
        self.stats["answered" if got else "refused"] += 1
        return got

    def _waker(self, pid: int, wakee_tid: int, after_ns: int,
               before_ns: int) -> tuple[int, int] | None:
        p = self._procs.get(pid)
        if p is None or wakee_tid <= GOROUTINE_BASE or after_ns < self._lost_horizon:
            return None
        g = p.gs.get(wakee_tid - GOROUTINE_BASE)
        if g is None or after_ns < g.floor:
            return None
        wake = recv = None
        recs = g.recs
        for ts, kind, waker in recs[bisect_right(recs, (after_ns, _INF)):]:
            if ts >= before_ns:
                break
            if kind == abi.WAKE_RECV:
                if recv is not None:
                    return None  # two receives: which one's value was written?
                recv = ts
            else:
                if wake is not None:
                    return None  # woken twice
                if kind != abi.WAKE_HANDOFF or not waker:
                    return None  # woken by a mutex, timer, close, GC or the scheduler
                wake = (GOROUTINE_BASE + waker, ts)
        if wake is None or recv is None or recv > wake[1]:
            return None
        return wake

    def __len__(self) -> int:
        return sum(len(g.recs) for p in self._procs.values() for g in p.gs.values())
