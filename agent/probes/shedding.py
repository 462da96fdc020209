"""Deliberate shedding under overload: the agent sets the probes' sampling rate from how
far behind it is, so that what it cannot follow is left out whole and counted (bpf/data.c
zt_sample: whole request/response exchanges, or whole connections of unknown role)
instead of random events lost when the ring buffer is full.

Signals, read every `interval` seconds: events the ring had no room for (any is an
overload), how full the ring is (the drain lag), and the agent's own CPU share against
its budget (`ZEROTRACE_CPU_BUDGET` cores, 0 for none: an agent that follows everything
by taking the node's CPU costs the traced applications more than the spans are worth).
Loss and fill act on one reading: events are being lost now.  CPU acts on its share over
the last CPU_WINDOW readings (2 s), and only once that window is full: a burst of a
fraction of a second (the first batch's export, a first sight of many processes) is not
load, and sampling it away split a third of the demo's traces for nothing.
Multiplicative decrease at once, increase (x1.5) only after three calm readings in a
row (hysteresis), so the rate does not oscillate around the edge.  Between readings the
ring's fill alone is checked every FAST_CHECK seconds: a ring filling up is cut at once
(at ~130 000 requests/s the 16 MiB ring fills in ~0.15 s, a third of an interval, and
waiting for the next reading lost 14-24 % of a run's events before sampling caught up).
And the probes themselves cut the rate (x1/4, at most every 20 ms) when a record finds
the ring full (bpf/maps.h zt_ring_full_cut: the agent may be stalled); a rate lower than
the shedder's is adopted at its next look, and raised from there once calm.  The spans
waiting in the agent to be stitched are checked with the ring: an agent that drains the
ring at full speed piles them up (~1.8 KB each for the ~0.6 s they wait), and the pile
of the load's first second was its memory for the rest of the run.
Sampling starting and stopping is logged once each, not every adjustment."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.probes import abi

log = logging.getLogger(__name__)

ALL = abi.KEEP_ALL
MIN_KEEP = ALL // 1024  # never below 1 in 1024: some spans keep showing what happens


def cpu_budget_from_env(default: float = 0.5) -> float:
    """Cores the agent may use before it sheds (`ZEROTRACE_CPU_BUDGET`; 0: no limit)."""
    try:
        return max(0.0, float(os.environ.get("ZEROTRACE_CPU_BUDGET", default)))
    except ValueError:
        return default


class Shedder:
    """Adjusts tracer.set_keep() from ring loss, ring fill and the agent's CPU share.

    `tracer` needs drops(), ring_fill(), stats(), keep and set_keep() (SocketTracer)."""

    HIGH_FILL = 0.25   # drain lag that calls for shedding
    LOW_FILL = 0.02    # ... and low enough to trace more again
    CALM_READINGS = 3  # calm readings in a row before each increase
    RAISE = 1.5        # ... by this factor
    CPU_WINDOW = 4     # readings whose CPU share is judged together
    FAST_CHECK = 0.02  # seconds between the ring checks between readings
    FAST_GAP = 0.05    # ... and at least this long between two cuts they make

    # spans waiting in the agent (stitcher) that call for shedding at once: ~1.8 KB each
    # until emitted, so a burst read at full speed is the agent's memory for the rest of
    # its run (Python's arenas stay fragmented); 16 384 is ~30 MB
    MAX_BACKLOG = 16_384

    def __init__(self, tracer, cpu_budget: float | None = None, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time,
                 backlog: Callable[[], int] | None = None,
                 max_backlog: int | None = None) -> None:
        self.tracer = tracer
        self.backlog = backlog  # spans waiting in the agent (None: not watched)
        self.max_backlog = max_backlog or self.MAX_BACKLOG
        self.cpu_budget = cpu_budget_from_env() if cpu_budget is None else cpu_budget
        self.interval = interval
        self.clock, self.cpu_clock = clock, cpu_clock
        self.keep = ALL
        self.calm = 0
        self.changes = 0
        self.last_reason = ""
        self._next = clock() + interval
        self._t, self._cpu = clock(), cpu_clock()
        self._lost = self._ring_lost()
        self._stats0: dict[str, int] = {}
        self._window: deque[tuple[float, float]] = deque(maxlen=self.CPU_WINDOW)
        self._fast_after = 0.0  # no fast cut before then
        self._fast_pressure = 0.0  # the pressure at the last fast cut (0: none while over)
        self._lock = threading.Lock()  # the shedder's thread and the agent's loop

    def start(self) -> None:
        """Measure from now: the CPU spent starting up (compiling, scanning processes)
        is not load to shed."""
        self._t, self._cpu = self.clock(), self.cpu_clock()
        self._lost = self._ring_lost()
        self._next = self._t + self.interval
        self._window.clear()

    def _ring_lost(self) -> int:
        return self.tracer.drops().get("ringbuf_full", 0)

    def run_in_thread(self) -> threading.Thread:
        """tick() on a thread of its own: the agent's loop can be busy with a large batch
        for seconds exactly when the rate must come down.  Stop with stop()."""
        self._stopped = threading.Event()

        def loop() -> None:
            while not self._stopped.wait(min(self.interval / 2, self.FAST_CHECK)):
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - probes closing; never kill the agent
                    log.debug("shedding tick failed", exc_info=True)
                    return

        t = threading.Thread(target=loop, name="zt-shedder", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        ev = getattr(self, "_stopped", None)
        if ev is not None:
            ev.set()

    def check_ring(self) -> None:
        """The ring's fill only (cheap: two positions read from its mapping), from the
        agent's loop between batches: the shedder's thread may wait for the GIL as long
        as the loop holds it in compiled code (a batch of 4 096 records and the
        stitching after it: tens of ms, the time the ring takes to fill at full rate)."""
        if self._lock.acquire(blocking=False):
            try:
                self._fast(self.clock())
            finally:
                self._lock.release()

    def tick(self) -> None:
        """Call often (every poll); acts once per interval."""
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        now = self.clock()
        if now < self._next:
            self._fast(now)
            return
        self._adopt()
        self._next = now + self.interval
        cpu = self.cpu_clock()
        self._window.append((max(now - self._t, 1e-6), cpu - self._cpu))
        self._t, self._cpu = now, cpu
        share = None  # judged only over a full window
        if len(self._window) == self.CPU_WINDOW:
            share = sum(c for _, c in self._window) / sum(w for w, _ in self._window)
        lost = self._ring_lost()
        new_lost, self._lost = lost - self._lost, lost
        keep = self.keep
        if self.decide(new_lost, self.tracer.ring_fill(), share) != keep:
            # the readings before a change describe another rate: judge the new one
            # on readings of its own (no second cut for the same burst)
            self._window.clear()

    def _adopt(self) -> None:
        """The probes cut the keep rate themselves when the ring was full (bpf/maps.h
        zt_ring_full_cut): a rate lower than ours is theirs, and decisions go on from
        it (a raise from where they left it, not from ours)."""
        read = getattr(self.tracer, "keep", None)
        if read is None or read >= self.keep:
            return
        self.calm = 0
        self._window.clear()
        self._apply(read, "the probes cut it: ring full", write=False)

    def _held(self) -> int:
        return self.backlog() if self.backlog is not None else 0

    def _fast(self, now: float) -> None:
        """Between readings: the ring over HIGH_FILL, or more than max_backlog spans
        waiting in the agent, is cut at once (x1/4, as a loss; x1/16 over twice that),
        and again only if still rising FAST_GAP later (the agent drains what the ring
        holds already: a fill still high but falling is the cut working)."""
        fill = self.tracer.ring_fill()
        held = self._held()
        pressure = max(fill / self.HIGH_FILL, held / self.max_backlog)
        if pressure <= 1.0:
            self._fast_pressure = 0.0
            return
        self._adopt()
        if now < self._fast_after or pressure <= self._fast_pressure:
            return
        self._fast_pressure, self._fast_after = pressure, now + self.FAST_GAP
        self.calm = 0
        keep = max(MIN_KEEP, self.keep // (16 if pressure > 2.0 else 4))
        if keep != self.keep:
            self._apply(keep, f"ring {fill:.0%} full" if fill > self.HIGH_FILL
                        else f"{held} spans waiting in the agent")
            self._window.clear()  # the CPU share of the old rate is not the new one's

    def decide(self, new_lost: int, fill: float, cpu_share: float | None) -> int:
        """The keep rate for one reading: lost events, ring fill (0..1), CPU cores used
        (None: not known yet, neither over the budget nor calm)."""
        over_cpu = (self.cpu_budget > 0 and cpu_share is not None
                    and cpu_share > self.cpu_budget)
        keep = self.keep
        if new_lost or fill > self.HIGH_FILL or over_cpu:
            self.calm = 0
            if new_lost or fill > 2 * self.HIGH_FILL:
                keep //= 4  # events are being lost: cut hard
            elif over_cpu:
                # proportional: aim just under the budget
                keep = int(keep * max(0.25, min(0.9, 0.9 * self.cpu_budget / cpu_share)))
            else:
                keep //= 2
            keep = max(MIN_KEEP, keep)
            why = (f"{new_lost} events lost in the ring" if new_lost else
                   f"ring {fill:.0%} full" if fill > self.HIGH_FILL else
                   f"agent at {cpu_share:.2f} cores, budget {self.cpu_budget:.2f}")
        elif keep < ALL and fill < self.LOW_FILL and self._held() < self.max_backlog // 2 and (
                self.cpu_budget <= 0 or (cpu_share is not None
                                         and cpu_share < 0.8 * self.cpu_budget)):
            self.calm += 1
            if self.calm < self.CALM_READINGS:
                return keep
            self.calm = 0
            keep = min(ALL, int(keep * self.RAISE) + MIN_KEEP)
            why = "load fell"
        else:
            self.calm = 0
            return keep
        self._apply(keep, why)
        return keep

    def _apply(self, keep: int, why: str, write: bool = True) -> None:
        """Take keep as the rate (write: tell the probes; not when it is theirs)."""
        if keep == self.keep:
            return
        before, self.keep = self.keep, keep
        self.changes += 1
        self.last_reason = why
        if write:
            self.tracer.set_keep(keep)
        if before == ALL:
            self._stats0 = self.tracer.stats()
            log.warning("overload (%s): sampling on, tracing %.1f%% of request/response "
                        "exchanges; the rest is left out whole and counted "
                        "(zerotrace_shed_exchanges_total, zerotrace_shed_connections_total)",
                        why, 100 * keep / ALL)
        elif keep == ALL:
            s = self.tracer.stats()
            log.warning("sampling off (%s): every exchange traced again; %d exchanges and %d "
                        "connections were left out meanwhile", why,
                        s["shed_exchanges"] - self._stats0.get("shed_exchanges", 0),
                        s["shed_connections"] - self._stats0.get("shed_connections", 0))
        else:
            log.debug("sampling: tracing %.1f%% of exchanges (%s)", 100 * keep / ALL, why)

    def summary(self) -> str:
        """One line for the agent's exit report."""
        if not self.changes:
            return "sampling never needed"
        return (f"sampling changed {self.changes} times, ended at {self.keep_ratio:.1%} of "
                f"exchanges (last: {self.last_reason})")

    @property
    def keep_ratio(self) -> float:
        return self.keep / ALL
