"""The agent's one clock for comparing "now" with event times.

Probe records carry bpf_ktime_get_ns() (CLOCK_MONOTONIC); spans carry Unix time: the
record's time plus one offset, measured once per process and shared by every tracer.
Anything that asks "how long ago was this event" (the stitcher's waits, the pipeline's
caught-up clock) must read now in the same terms: CLOCK_MONOTONIC plus that offset.
Reading time.time_ns() instead mixes two clocks, and a wall clock slewed or stepped
by NTP (up to 83 ms a second under chrony, whole seconds on a fresh VM) then ends
waits early or late: links refused that the events would have made.

The cost of one offset for the agent's life: after a step of the wall clock, span
times stay on the old offset until the agent restarts (the order and the durations of
spans stay exact; only their absolute time is off by the step)."""

from __future__ import annotations

import time

_offset: int | None = None


def _measure() -> int:
    best = None
    for _ in range(5):  # the tightest bracket wins
        a = time.time_ns()
        m = time.monotonic_ns()
        b = time.time_ns()
        if best is None or b - a < best[0]:
            best = (b - a, (a + b) // 2 - m)
    return best[1]


def wall_offset() -> int:
    """Nanoseconds to add to a CLOCK_MONOTONIC time (bpf_ktime_get_ns) for Unix time;
    the same value for the whole process."""
    global _offset
    if _offset is None:
        _offset = _measure()
    return _offset


def now_ns() -> int:
    """Now, as Unix ns on the events' clock (monotonic + the shared offset)."""
    return time.monotonic_ns() + wall_offset()
