"""Collecting events from a real SocketTracer in tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.probes.events import SocketEvent
from agent.probes.loader import SocketTracer


def collect(tracer: SocketTracer, done: Callable[[list[SocketEvent]], bool],
            timeout: float = 10.0) -> list[SocketEvent]:
    """Poll until done(events so far) or timeout; returns all events seen."""
    events: list[SocketEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += tracer.poll(0.05)
        if done(events):
            events += tracer.poll(0.01)
            return events
    return events


class Draining:
    """Feeds a tracer's events into pipelines on a background thread while a test
    sends traffic; on exit, drains what is still in the ring (until `quiet` empty
    polls in a row) and closes the pipelines, so that a loaded machine, where the agent
    lags behind the traffic, delays the result instead of losing its tail.

        with Draining([(tracer, pipeline)]):
            ...send requests...
    """

    def __init__(self, pairs: list, settle_s: float = 1.0, quiet: int = 5,
                 timeout_s: float = 60.0) -> None:
        import threading

        self.pairs = pairs
        self.settle_s, self.quiet, self.timeout_s = settle_s, quiet, timeout_s
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=pair, daemon=True)
                         for pair in pairs]

    def _run(self, tracer: SocketTracer, pipeline) -> None:
        while not self._stop.is_set():
            pipeline.process(tracer.poll(0.05))
            pipeline.tick()

    def __enter__(self) -> Draining:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.settle_s)  # the last responses' events reach the ring
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        deadline = time.monotonic() + self.timeout_s
        for tracer, pipeline in self.pairs:
            empty = 0
            while empty < self.quiet and time.monotonic() < deadline:
                events = tracer.poll(0.05)
                empty = 0 if events else empty + 1
                pipeline.process(events)
                pipeline.tick()
            pipeline.close()
