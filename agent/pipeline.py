"""The agent's stages after the probes: spans from events, then traces, tags, export.

    events -> SpanAssembler (conn + protocols) -> on_span / Stitcher -> on_trace
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from agent.conn.assembler import SpanAssembler
from agent.conn.spans import SpanContext
from agent.probes.events import SocketEvent


class Pipeline:
    """Wires the stages; each stage only knows the callable it hands results to."""

    def __init__(self, agent_name: str = "") -> None:
        self.on_span: Callable[[SpanContext], None] | None = None
        self.on_trace: Callable[[str], None] | None = None
        self.assembler = SpanAssembler(self._span, agent_name)
        self.tracker = self.assembler.tracker
        self._next_tick = 0.0
        self.spans = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pipeline:
        return cls()

    def _span(self, ctx: SpanContext) -> None:
        self.spans += 1
        if self.on_span is not None:
            self.on_span(ctx)

    def process(self, events: list[SocketEvent]) -> None:
        handle = self.assembler.handle
        for e in events:
            handle(e)

    def tick(self) -> None:
        """Periodic work (expiry), at most once a second."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + 1.0
        self.assembler.expire(time.time_ns())

    def close(self) -> None:
        self.assembler.close()

    def summary(self) -> str:
        st = self.assembler.stats
        parts = [f"{self.spans} spans"] + [f"{k}={v}" for k, v in sorted(st.items())
                                            if k != "spans"]
        return ", ".join(parts)
