"""The TC hop probes in a running agent: a thread drains hop records into a HopIndex
(compiled: agent/net/_hops.pyx reads the ring in place, no Python object per record),
and every trace the stitcher emits gets, before it leaves, the N spans of each of its
client S spans (agent/net/hops.py) — so exporters, metrics and `zerotrace trace` see
them like any span.

Nothing in the stitcher changes: `install` wraps `pipeline.stitcher.emit`.  A server S
span the stitcher already made a child of a client span, for the same request (same
req_seq), is re-parented to the request's last N span: the network path sits between
the two.  Any other server span is left as the stitcher decided.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.net.hops import NO_PODS, HopIndex, client_hops, server_hops
from agent.net.metrics import HopMetrics
from agent.net.pods import HookPods, enricher_tags
from agent.probes.tc import TcConfig, TcTracer
from proto.span import KIND_CLIENT, KIND_SERVER, SOURCE_SYSCALL, Span

log = logging.getLogger(__name__)

BUSY_DRAIN = 1000  # records in one drain (~1/10 of the ring) that make the next one sooner


def place(spans: list[Span], index: HopIndex, hooks: dict, wall_offset: int,
          pods=NO_PODS) -> list[Span]:
    """N spans for the client S spans of one trace (re-parenting their server spans),
    and for server S spans whose client is on another node."""
    added: list[Span] = []
    servers = {}
    clients = {}
    for s in spans:
        if s.source != SOURCE_SYSCALL:
            continue
        if s.kind == KIND_SERVER and s.parent_span_id:
            servers.setdefault(s.parent_span_id, []).append(s)
        elif s.kind == KIND_CLIENT:
            clients[s.span_id] = s
    # a server span whose client is on this node gets its hops through the client
    remote_client = [s for s in spans if s.kind == KIND_SERVER and s.source == SOURCE_SYSCALL
                     and s.parent_span_id not in clients]
    for c in clients.values():
        ns = client_hops(index, c, hooks, wall_offset, pods)
        if not ns:
            continue
        added += ns
        last_req = [n for n in ns if n.attributes["zerotrace.net.leg"] == "request"]
        for srv in servers.get(c.span_id, ()):
            if last_req and srv.req_seq is not None and srv.req_seq == c.req_seq:
                srv.parent_span_id = last_req[-1].span_id
    for s in remote_client:
        added += server_hops(index, s, hooks, wall_offset, pods)
    return added


class NetHops:
    """TC probes + hop index for one agent; close() detaches everything.

    `pods` names hooks by their pods (agent/net/pods.py); by default `install` makes one
    from the pipeline's enricher when that one watches Kubernetes pods."""

    def __init__(self, config: TcConfig, pods: HookPods | None = None) -> None:
        self.tc = TcTracer(config)
        self.index = HopIndex()
        self.pods = pods
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.records = 0
        self.spans = 0
        self.metrics: HopMetrics | None = None
        self._thread = threading.Thread(target=self._run, name="zt-tc-hops", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        got = 0
        next_adapt = time.monotonic() + 1.0
        while not self._stop.is_set():
            # a busy ring is drained sooner: 50 ms of records at the budget fill a
            # tenth of the ring, a burst before the sampling adapts can fill it
            if self.tc.wait(0.005 if got > BUSY_DRAIN else 0.05):
                with self._lock:  # compiled, without the GIL (agent/net/_hops.pyx)
                    got = self.tc.drain_into(self.index)
                    self.records += got
            else:
                got = 0
            now = time.monotonic()
            if now >= next_adapt:  # ~1 s: the sampling for the next second
                next_adapt = now + 1.0
                shift = self.tc.adapt(now)
                if self.metrics is not None:
                    self.metrics.sampling.set(1.0 / (1 << shift))
            if n % 20 == 0 and self.pods is not None:  # ~1 s: pods of new hooks
                try:
                    self.pods.update(self.tc.hooks)
                except Exception as e:  # a /proc or netlink hiccup: tried again later
                    log.debug("hook pods: %s", e)
            n += 1
            if n % 100 == 0:  # ~5 s: interfaces that appeared since (new pods)
                try:
                    self.tc.refresh()
                except Exception as e:  # a namespace going away mid-scan
                    log.debug("TC refresh: %s", e)

    def drain(self) -> None:
        """Take what is in the ring now (before the last traces are emitted)."""
        with self._lock:
            self.records += self.tc.drain_into(self.index)

    def counters(self) -> dict[str, int]:
        """Stage counters (zerotrace_stage_events_total{stage="network"})."""
        return {"hop_records": self.records, "hop_spans": self.spans,
                "ring_full": self.tc.lost()}

    def install(self, pipeline) -> None:
        """Add N spans to every trace `pipeline`'s stitcher emits; with the pipeline's
        Prometheus metrics on, per-hop histograms and the stage counters too."""
        inner: Callable = pipeline.stitcher.emit
        enricher = getattr(pipeline, "enricher", None)
        if self.pods is None and enricher is not None and enricher.pods is not None:
            self.pods = HookPods(enricher_tags(enricher))
        agent_metrics = getattr(pipeline, "metrics", None)
        if agent_metrics is not None:
            self.metrics = HopMetrics(agent_metrics.registry)
            agent_metrics.add_source("network", self.counters)

        def emit(trace) -> None:
            with self._lock:
                added = place(trace.spans, self.index, self.tc.hooks, self.tc.wall_offset,
                              self.pods or NO_PODS)
            trace.spans.extend(added)
            self.spans += len(added)
            if self.metrics is not None and added:
                self.metrics.observe(added)
            inner(trace)

        pipeline.stitcher.emit = emit

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.tc.close()


def start(args, pipeline) -> NetHops | None:
    """NetHops for `zerotrace agent --interfaces REGEX` (host + each --netns), or None."""
    regex = getattr(args, "interfaces", None)
    if not regex:
        return None
    net = NetHops(TcConfig(interfaces=regex, netns=list(getattr(args, "netns", []) or [])))
    net.install(pipeline)
    return net
