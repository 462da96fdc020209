"""The agent compares "now" with event times on one clock (agent/clock.py): a wall
clock slewed or stepped by NTP while the agent runs must not move the pipeline's now
against the events' times, or the stitcher's waits end early and links are lost."""

from __future__ import annotations

import time

from agent import clock
from agent.pipeline import Pipeline


def test_the_offset_is_measured_once() -> None:
    first = clock.wall_offset()
    assert clock.wall_offset() == first
    assert abs(clock.now_ns() - time.time_ns()) < 50 * 10**6  # no step on this machine


def test_a_stepped_wall_clock_does_not_move_the_pipeline_clock(monkeypatch) -> None:
    pipeline = Pipeline()
    before = pipeline.clock()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 5 * 10**9)  # NTP steps +5 s
    pipeline.process([])  # the ring seen empty: caught up to now
    after = pipeline.clock()
    assert 0 <= after - before < 10**9, f"now moved {(after - before) / 1e9:.2f} s"
    pipeline.close()
