"""The agent's stages after the probes: spans from events, then traces, tags, export.

    events -> SpanAssembler (conn + protocols) -> on_span / Stitcher -> on_trace
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from agent.conn.assembler import SpanAssembler
from agent.conn.spans import SpanContext
from agent.probes import abi
from agent.probes.events import SocketEvent
from agent.probes.loader import ProbeConfig
from agent.stitch.runtime import GOROUTINE_BASE, MODE_GO
from agent.stitch.stitcher import Stitcher, Trace
from agent.stitch.tree import render


class Pipeline:
    """Wires the stages; each stage only knows the callable it hands results to."""

    def __init__(self, agent_name: str = "") -> None:
        self.on_span: Callable[[SpanContext], None] | None = None
        self.on_trace: Callable[[str], None] | None = None
        self.on_trace_obj: Callable[[Trace], None] | None = None
        self.assembler = SpanAssembler(self._span, agent_name)
        self.tracker = self.assembler.tracker
        self.stitcher = Stitcher(self._trace)
        self.classifier = self.stitcher.classifier
        # Called with the pid of each Go process seen; returns True when its events
        # will carry goroutine ids (the probes' uprobe on runtime.execute).
        self.follow_go: Callable[[int], bool] | None = None
        self._pids: set[int] = set()
        self._next_tick = 0.0
        self.spans = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pipeline:
        return cls()

    def _span(self, ctx: SpanContext) -> None:
        self.spans += 1
        self.stitcher.add(ctx)
        if self.on_span is not None:
            self.on_span(ctx)

    def _trace(self, trace: Trace) -> None:
        if self.on_trace_obj is not None:
            self.on_trace_obj(trace)
        if self.on_trace is not None:
            self.on_trace(render(trace))

    def process(self, events: list[SocketEvent]) -> None:
        handle = self.assembler.handle
        observe = self.stitcher.observe
        data = abi.EV_DATA
        pids = self._pids
        for e in events:
            if e.pid not in pids:
                self._new_pid(e.pid)
            if e.goid:
                e.tid = GOROUTINE_BASE + e.goid  # the goroutine is the unit of work
            handle(e)
            if e.type == data:
                observe(e)

    def prescan(self, cfg: ProbeConfig) -> None:
        """Classify the processes in scope now (pid and netns filters honoured)."""
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == os.getpid() or (cfg.pids and pid not in cfg.pids):
                continue
            if cfg.netns:
                try:
                    if os.stat(f"/proc/{pid}/ns/net").st_ino not in cfg.netns:
                        continue
                except OSError:
                    continue
            self._new_pid(pid)

    def _new_pid(self, pid: int) -> None:
        self._pids.add(pid)
        if pid and self.classifier.mode(pid) == MODE_GO and self.follow_go is not None:
            if self.follow_go(pid):
                self.classifier.following_goroutines(pid)

    def tick(self) -> None:
        """Periodic work (stitching decisions, expiry), every 0.2 s at most."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + 0.2
        wall = time.time_ns()
        self.stitcher.tick(wall)
        self.assembler.expire(wall)

    def close(self) -> None:
        self.assembler.close()
        self.stitcher.close()

    def summary(self) -> str:
        st = self.assembler.stats
        parts = [f"{self.spans} spans"] + [f"{k}={v}" for k, v in sorted(st.items())
                                            if k != "spans"]
        parts += [f"stitch {k}={v}" for k, v in sorted(self.stitcher.stats.items())]
        return ", ".join(parts)
