"""The agent's stages after the probes: spans from events, then traces, tags, export.

    events -> SpanAssembler (conn + protocols) -> Stitcher -> traces
           traces -> Enricher (tags) -> RED metrics -> exporters (server, OTLP) -> print

Built by agent/factory.py (build, then attach to the probes) wherever a pipeline runs:
the agent command, the demo, the benchmarks.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import time
from collections.abc import Callable

from agent import clock
from agent.conn._core import process_events
from agent.conn.assembler import SpanAssembler
from agent.conn.listeners import ListenerRoles
from agent.conn.spans import SpanContext
from agent.probes.events import SocketEvent
from agent.probes.loader import ProbeConfig
from agent.protocols.dns import bound_peer_sessions
from agent.stitch._stitcher import Stitcher  # compiled; stitcher.py is the reference
from agent.stitch.handoff import HandoffIndex
from agent.stitch.runtime import MODE_GO
from agent.stitch.stitcher import Trace
from agent.stitch.tree import render

log = logging.getLogger(__name__)
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses too


def tune_gc() -> None:
    """Fewer young-generation collections: the pipeline allocates per event and keeps
    little.  Measured on the recorded demo stream: 21.8k -> 24.3k events/s (default
    700 vs 20 000).  Objects alive at start (modules, config) are frozen out of it."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


def _protocol_stats() -> dict:
    from agent.protocols.registry import STATS

    return {f"{proto}_{k}": v for proto, c in STATS.items() for k, v in c.items()}


def export_ports(*addresses: str | None) -> set[int]:
    """The ports of the export destinations (HOST:PORT, [V6]:PORT, URLs), so the agent
    never traces a server's side of its own pushes (the span of every push would be
    pushed in turn).  Any local socket bound to such a port is that server's, or
    another trace collector's: neither is worth a span."""
    out = set()
    for a in addresses:
        if not a:
            continue
        tail = a.rstrip("/").rsplit(":", 1)
        if len(tail) == 2 and tail[1].isdigit() and 0 < int(tail[1]) < 65536:
            out.add(int(tail[1]))
    return out


class Pipeline:
    """Wires the stages; each stage only knows the callable it hands results to."""

    def __init__(self, agent_name: str = "") -> None:
        self._on_span: Callable[[SpanContext], None] | None = None
        self.on_trace: Callable[[str], None] | None = None
        self.on_trace_obj: Callable[[Trace], None] | None = None
        self.assembler = SpanAssembler(None, agent_name)
        self.tracker = self.assembler.tracker
        # connections open before the agent: their role from listening ports, so a
        # pool's pre-existing client connections carry context (docs/stitching.md)
        self.tracker.roles = ListenerRoles()
        self._stitcher = None
        self.stitcher = Stitcher(self._trace)  # wires the assembler to it (_wire)
        self.classifier = self.stitcher.classifier
        # Go: who handed work to which goroutine (fed with the probes' wake records), so
        # the stitcher can follow a pooled http.Client's call to the request behind it.
        self.handoffs = HandoffIndex()
        self.stitcher.handoffs = self.handoffs
        # Called with the pid of each Go process seen; returns True when its events
        # will carry goroutine ids (the probes' uprobe on runtime.execute).
        self.follow_go: Callable[[int], bool] | None = None
        self._pids: set[int] = set()
        self._next_tick = 0.0
        self._next_expiry = 0.0
        # The stitcher's clock: how far the agent has read, not the wall clock.  When the
        # agent lags (a loaded node), "no client span yet 0.5 s after the server span"
        # must mean 0.5 s of events read, or a client span still in the ring is given
        # up on and the trace split (seen at load 17: 1-7 of 160 chains cut, no reason).
        self._read_ns = 0      # newest event timestamp processed
        self._caught_up_ns = 0  # wall time of the last poll that found the ring empty
        self.enricher = None  # agent.enrich.Enricher: tags on every span
        self.exporters: list[tuple[str, object]] = []  # (name, BatchExporter)
        self.metrics = None  # agent.metrics.AgentMetrics
        self.kernel_drops: Callable[[], dict] | None = None
        # Local ports of the servers this agent exports to: events of sockets bound
        # to them (that server's side of our pushes) are dropped and counted
        self.ignore_ports: frozenset[int] = frozenset()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pipeline:
        """Build the stages the command line and config file ask for (agent/factory.py,
        which every pipeline is built by)."""
        from agent import factory

        return factory.build(factory.options_from_args(args))

    def serve_metrics(self, port: int) -> None:
        """Prometheus /metrics on port; a port in use is said once, not fatal."""
        from agent.metrics import AgentMetrics

        m = AgentMetrics()
        m.add_source("assembler", lambda: dict(self.assembler.stats))
        m.add_source("connections", lambda: dict(self.tracker.stats))
        m.add_source("midstream_roles", lambda: dict(self.tracker.roles.stats))
        m.add_source("stitcher", lambda: dict(self.stitcher.stats))
        m.add_source("protocols", _protocol_stats)
        if self.enricher is not None:
            m.add_source("enrich", self.enricher.counters)
        for name, b in self.exporters:
            m.add_exporter(name, b.metrics)
        if self.kernel_drops is not None:
            m.add_source("kernel", self.kernel_drops)
        try:
            m.serve(port)
        except OSError as e:
            log.warning("metrics: cannot listen on port %d (%s); continuing without", port,
                        e.strerror)
            return
        self.metrics = m

    # The assembler hands each span straight to the stitcher's add (compiled: a C call,
    # no Python frame a span); only when someone watches spans (on_span: the runner's
    # span printing, tests) does a span go through _span.  Setting either re-wires.
    @property
    def stitcher(self):  # noqa: ANN201 - the compiled Stitcher or a stand-in
        return self._stitcher

    @stitcher.setter
    def stitcher(self, st) -> None:  # noqa: ANN001
        self._stitcher = st
        self._wire()

    @property
    def on_span(self) -> Callable[[SpanContext], None] | None:
        return self._on_span

    @on_span.setter
    def on_span(self, fn: Callable[[SpanContext], None] | None) -> None:
        self._on_span = fn
        self._wire()

    def _wire(self) -> None:
        add = getattr(self._stitcher, "add", None)
        self.assembler.emit = self._span if self._on_span is not None or add is None else add

    @property
    def spans(self) -> int:
        """Spans made so far (each handed to the stitcher)."""
        return self.assembler.stats["spans"]

    def _span(self, ctx: SpanContext) -> None:
        add = getattr(self._stitcher, "add", None)
        if add is not None:
            add(ctx)
        if self._on_span is not None:
            self._on_span(ctx)

    def _trace(self, trace: Trace) -> None:
        enrich = self.enricher.enrich if self.enricher is not None else None
        record = self.metrics.record if self.metrics is not None else None
        for s in trace.spans:
            if enrich is not None:
                try:
                    enrich(s)
                except Exception:  # tags are best effort; the span still goes out
                    self.assembler.stats["enrich_errors"] += 1
            if record is not None:
                record(s)
        for _name, b in self.exporters:
            b.submit(trace.spans)
        if self.on_trace_obj is not None:
            self.on_trace_obj(trace)
        if self.on_trace is not None:
            self.on_trace(render(trace))

    def process(self, events: list[SocketEvent]) -> None:
        observe = self.stitcher.observe
        pids = self._pids
        if events:
            last = events[-1].ts_exit  # the ring is in time order, near enough
            if last > self._read_ns:
                self._read_ns = last
        else:
            self._caught_up_ns = clock.now_ns()
        wakes = getattr(events, "wakes", None)  # an EventBatch from SocketTracer.poll
        if wakes:
            self.handoffs.add_all(wakes)
        # Compiled loop (agent/conn/_core.pyx): events of our own server's ingest port
        # dropped (tracing it would make a span of every push), new pids classified,
        # Go events keyed by goroutine (the goroutine is the unit of work), then the
        # assembler and, for data events, the stitcher.
        # (the assembler itself: its handle is called as C, no Python call an event)
        process_events(events, self.assembler, observe, pids, self._new_pid,
                       self.ignore_ports,
                       self.assembler.stats)

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
        """Periodic work: stitching decisions every 0.1 s at most; once a second, idle
        sessions ended (a walk over every session: at 120 s idle, once a second is
        exact enough) and DNS's per-client-port sessions bounded (protocols/dns.py)."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + 0.1
        wall = self.clock()
        self.stitcher.tick(wall)
        if now >= self._next_expiry:
            self._next_expiry = now + 1.0
            self.assembler.expire(wall)
            bound_peer_sessions(self.assembler, wall)

    def clock(self) -> int:
        """Unix ns up to which events have been read: the newest event processed, or
        the last time the ring was seen empty, whichever is later (now before anything
        was processed, as for callers that never poll).  Now is read on the events'
        clock (agent/clock.py), never time.time_ns(): NTP slewing the wall clock must
        not end the stitcher's waits early."""
        wall = clock.now_ns()
        read = max(self._read_ns, self._caught_up_ns)
        return min(read, wall) if read else wall

    def close(self) -> None:
        self.assembler.close()
        self.stitcher.close()
        for _name, b in self.exporters:
            b.shutdown()
        if self.enricher is not None:
            self.enricher.close()

    def summary(self) -> str:
        st = self.assembler.stats
        parts = [f"{self.spans} spans"] + [f"{k}={v}" for k, v in sorted(st.items())
                                            if k != "spans"]
        parts += [f"stitch {k}={v}" for k, v in sorted(self.stitcher.stats.items())]
        return ", ".join(parts)
