"""The shedding controller's decisions (agent/probes/shedding.py): cut at once on loss,
fill or CPU over budget, raise only after calm readings, log start and stop once each.
The tracer here records what it is told (the kernel side is tested with real probes in
test_records_and_shedding.py)."""

from __future__ import annotations

import logging

from agent.probes import abi
from agent.probes.shedding import MIN_KEEP, Shedder

ALL = abi.KEEP_ALL


class Recorder:
    def __init__(self) -> None:
        self.keeps: list[int] = []
        self.shed = 0

    def set_keep(self, keep: int) -> None:
        self.keeps.append(keep)

    def stats(self) -> dict:
        return {"shed_exchanges": self.shed, "shed_connections": 0}

    def drops(self) -> dict:
        return {"ringbuf_full": 0}

    def ring_fill(self) -> float:
        return 0.0


def test_loss_cuts_hard_then_calm_raises_slowly_back_to_all(caplog):
    t = Recorder()
    s = Shedder(t, cpu_budget=0.5)
    with caplog.at_level(logging.WARNING, logger="agent.probes.shedding"):
        assert s.decide(100, 0.0, 0.1) == ALL // 4
        assert s.decide(0, 0.6, 0.1) == ALL // 16  # ring over half full: hard again
        assert s.decide(0, 0.3, 0.1) == ALL // 32  # over the high mark: halve
        assert s.decide(0, 0.1, 0.1) == ALL // 32  # between the marks: hold
        t.shed = 1234
        raised = []
        for _ in range(60):
            raised.append(s.decide(0, 0.0, 0.1))
    assert raised[0] == raised[1] == ALL // 32  # not before three calm readings
    assert raised[2] > ALL // 32
    assert raised[-1] == ALL and s.keep_ratio == 1.0
    assert t.keeps[-1] == ALL
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2  # on, off: not every step
    assert "sampling on" in msgs[0] and "100 events lost" in msgs[0]
    assert "sampling off" in msgs[1] and "1234 exchanges" in msgs[1]


def test_cpu_over_budget_aims_under_it_and_never_below_the_floor():
    t = Recorder()
    s = Shedder(t, cpu_budget=0.5)
    assert s.decide(0, 0.0, 1.0) == int(ALL * 0.45)
    for _ in range(40):
        s.decide(0, 0.0, 5.0)
    assert s.keep == MIN_KEEP
    s2 = Shedder(Recorder(), cpu_budget=0)  # no budget: CPU alone never sheds
    assert s2.decide(0, 0.0, 2.0) == ALL


def test_calm_readings_need_cpu_under_the_budget_too():
    s = Shedder(Recorder(), cpu_budget=0.5)
    s.decide(1, 0.0, 0.1)
    for _ in range(10):
        s.decide(0, 0.0, 0.45)  # under budget but above 80 % of it: hold
    assert s.keep == ALL // 4


class Clocks:
    """Wall and CPU clocks the test moves: `step(cores)` is one interval at that load."""

    def __init__(self, interval: float) -> None:
        self.interval, self.wall, self.cpu = interval, 0.0, 0.0

    def step(self, cores: float) -> None:
        self.wall += self.interval
        self.cpu += cores * self.interval


def _shedder(budget: float = 0.5) -> tuple[Shedder, Clocks]:
    c = Clocks(0.5)
    s = Shedder(Recorder(), cpu_budget=budget, interval=0.5,
                clock=lambda: c.wall, cpu_clock=lambda: c.cpu)
    s.start()
    return s, c


def test_a_burst_shorter_than_the_cpu_window_sheds_nothing():
    s, c = _shedder()
    for cores in (0.05, 0.07, 1.2, 0.14, 0.01, 0.03, 0.02, 0.05):
        c.step(cores)
        s.tick()
    assert s.keep == ALL and s.changes == 0


def test_cpu_over_budget_for_a_full_window_cuts_once_then_judges_afresh():
    s, c = _shedder()
    keeps = []
    for _ in range(Shedder.CPU_WINDOW + 2):
        c.step(1.0)
        s.tick()
        keeps.append(s.keep)
    # nothing before the window is full; one proportional cut; then the readings of
    # the old rate are not held against the new one
    assert keeps[:Shedder.CPU_WINDOW - 1] == [ALL] * (Shedder.CPU_WINDOW - 1)
    assert keeps[Shedder.CPU_WINDOW - 1] == int(ALL * 0.45)
    assert keeps[-2:] == [int(ALL * 0.45)] * 2
    # and an unknown CPU share (window refilling) is not a calm reading either
    for _ in range(Shedder.CPU_WINDOW - 1):
        c.step(0.0)
        s.tick()
    assert s.keep == int(ALL * 0.45)


class Filling(Recorder):
    """A ring whose fill the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.fill = 0.0

    def ring_fill(self) -> float:
        return self.fill


def test_a_ring_filling_between_readings_is_cut_at_once_and_again_only_if_still_filling():
    c = Clocks(0.5)
    t = Filling()
    s = Shedder(t, cpu_budget=0.5, interval=0.5, clock=lambda: c.wall,
                cpu_clock=lambda: c.cpu)
    s.start()

    def at(dt: float, fill: float) -> int:
        c.wall += dt
        t.fill = fill
        s.tick()
        return s.keep

    # all within the first interval (0.5 s): no full reading
    assert at(0.05, 0.1) == ALL  # under the mark: nothing
    assert at(0.05, 0.4) == ALL // 4  # filling, well before the next reading: cut now
    assert at(0.02, 0.45) == ALL // 4  # not twice within FAST_GAP
    assert at(0.05, 0.35) == ALL // 4  # under the cut's fill: the cut works
    assert at(0.05, 0.45) == ALL // 16  # past the cut's fill: still filling, again
    assert at(0.05, 0.2) == ALL // 16  # under the mark: forgotten
    assert at(0.05, 0.6) == ALL // 256  # over twice the mark: x1/16 at once
    assert t.keeps == [ALL // 4, ALL // 16, ALL // 256]


def test_spans_piling_up_in_the_agent_are_cut_like_a_filling_ring(caplog):
    # the ring drains fine (the agent reads at full speed) but the spans it makes wait
    # to be stitched: over max_backlog, cut at once; the raise waits for half of it
    c = Clocks(0.5)
    held = [0]
    t = Filling()
    s = Shedder(t, cpu_budget=0.5, interval=0.5, clock=lambda: c.wall,
                cpu_clock=lambda: c.cpu, backlog=lambda: held[0], max_backlog=1000)
    s.start()

    def at(dt: float, n: int) -> int:
        c.wall += dt
        held[0] = n
        s.check_ring()
        return s.keep

    with caplog.at_level(logging.WARNING, logger="agent.probes.shedding"):
        assert at(0.02, 900) == ALL
        assert at(0.02, 1500) == ALL // 4
        assert at(0.06, 1400) == ALL // 4  # falling: the cut works
        assert at(0.06, 2500) == ALL // 64  # over twice the mark: x1/16
    assert "1500 spans waiting in the agent" in caplog.records[0].getMessage()
    for _ in range(8):  # calm readings, but 600 spans still wait: no raise
        c.step(0.0)
        held[0] = 600
        s.tick()
    assert s.keep == ALL // 64
    for _ in range(3):
        c.step(0.0)
        held[0] = 100
        s.tick()
    assert s.keep > ALL // 64


class CutByProbes(Recorder):
    """A tracer whose probes cut the keep rate on their own (a full ring)."""

    def __init__(self) -> None:
        super().__init__()
        self.keep = ALL

    def set_keep(self, keep: int) -> None:
        super().set_keep(keep)
        self.keep = keep


def test_the_probes_own_cut_is_adopted_and_raised_from(caplog):
    c = Clocks(0.5)
    t = CutByProbes()
    s = Shedder(t, cpu_budget=0.5, interval=0.5, clock=lambda: c.wall,
                cpu_clock=lambda: c.cpu)
    s.start()
    t.keep = ALL // 64  # the probes: ring full, sampling on
    with caplog.at_level(logging.WARNING, logger="agent.probes.shedding"):
        for _ in range(3 * Shedder.CALM_READINGS + Shedder.CPU_WINDOW):
            c.step(0.05)
            s.tick()
    assert "sampling on" in caplog.text and "the probes cut it" in caplog.text
    # raised from the probes' rate, never written back above it in between
    assert t.keeps and t.keeps[0] > ALL // 64 and t.keeps[0] < ALL // 16
    assert s.keep == t.keep == t.keeps[-1]
