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
