"""The one way the agent's pipeline is built: `zerotrace agent`, `zerotrace demo` and the
benchmarks all call `build()` and then `attach()`, so what the demo shows and a benchmark
measures is what the agent runs (issue 13).  What may differ between them is said in
`Options` (tags, export, metrics, shedding), never in the wiring of the stages.

    opts = Options(...)  or  options_from_args(args)       # what this run wants
    pipeline = build(opts)                                  # stages after the probes
    probes = attach(pipeline, tracer, cfg, opts)            # kernel side wired to it
    probes.start()                                          # memory trimmed, GC tuned,
    while ...: probes.pump(0.05)                            #   processes scanned
    probes.stop(); pipeline.close()

`composition()` describes what was built (stage types and how they are wired), so a test
can check that the runner, the demo and the benchmarks get the same thing.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.pipeline import DEFAULT_METRICS_PORT, Pipeline, export_ports, tune_gc

log = logging.getLogger(__name__)


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1") != "0"


@dataclass
class Options:
    """What one run of the pipeline wants; everything else is the same everywhere."""

    agent_name: str = ""
    # tags on every span: an object with enrich(span), counters() and close()
    # (agent.enrich.Enricher, or the demo's wrapper of one); None: no tags
    enricher: Any = None
    exporters: list[tuple[str, Any]] = field(default_factory=list)  # (name, BatchExporter)
    metrics_port: int = 0  # Prometheus /metrics; 0: none
    # local ports of the servers spans are exported to: never traced (pipeline.py)
    ignore_ports: frozenset[int] = frozenset()
    # Overload: shed whole exchanges on purpose, counted, rather than lose random events
    # in the ring (agent/probes/shedding.py).  ZEROTRACE_SHEDDING=0: never sample (the
    # ring then loses what the agent cannot follow, counted as ringbuf_full).
    shedding: bool = field(default_factory=lambda: _env_on("ZEROTRACE_SHEDDING"))
    cpu_budget: float | None = None  # cores; None: ZEROTRACE_CPU_BUDGET or its default
    # memory bounds (config `limits:`); None: the stitcher's and the shedder's defaults
    max_emitted: int | None = None  # emitted spans kept for late joiners
    max_backlog: int | None = None  # spans waiting to be stitched before a cut at once
    # bodies parsers skip by length stay out of the ring (agent/probes/skiphints.py)
    skip_hints: bool = field(default_factory=lambda: _env_on("ZEROTRACE_SKIP_HINTS"))


def options_from_args(args: argparse.Namespace) -> Options:
    """The options the `zerotrace agent` command line and its config file ask for
    (tags, exporters, metrics port); shedding and skip hints from the environment."""
    from agent import config
    from agent.enrich import EnrichConfig, Enricher
    from agent.export import BatchExporter

    conf = config.load(getattr(args, "config", None))
    node = getattr(args, "node", None) or config.node_name(conf)
    enricher = Enricher(EnrichConfig.from_env(conf.get("enrich"), payload=conf.get("payload")))
    server = (getattr(args, "server", None) or conf.get("server")
              or os.environ.get("ZEROTRACE_SERVER"))
    otlp = getattr(args, "otlp", None) or conf.get("otlp")
    exporters: list[tuple[str, Any]] = []
    if server or otlp:
        from proto.credentials import ClientSecurity

        # TLS/token flags, else the config file's settings of the same names.
        opt = {k: getattr(args, k, None) or conf.get(k) for k in (
            "tls_ca", "tls_cert", "tls_key", "tls_server_name", "token_file")}
        sec = ClientSecurity.from_options(
            ca=opt["tls_ca"], cert=opt["tls_cert"], key=opt["tls_key"],
            server_name=opt["tls_server_name"], token_file=opt["token_file"])
    if server:
        from agent.export import GrpcSpanExporter
        exporters.append(("server", BatchExporter(
            GrpcSpanExporter(server, agent=node, security=sec))))
    if otlp:
        from agent.export import OtlpSpanExporter
        exporters.append(("otlp", BatchExporter(OtlpSpanExporter(otlp, security=sec))))
    port = getattr(args, "metrics_port", None)
    if port is None:
        # a daemon (nothing printed) serves metrics by default; a terminal session not
        daemon = getattr(args, "print_what", "none") == "none"
        port = conf.get("metrics_port", DEFAULT_METRICS_PORT if daemon else 0)
    return Options(agent_name=node, enricher=enricher, exporters=exporters,
                   metrics_port=int(port or 0),
                   ignore_ports=frozenset(export_ports(server, otlp)),
                   cpu_budget=config.limit(conf, "cpu_budget", "ZEROTRACE_CPU_BUDGET"),
                   max_emitted=config.limit(conf, "emitted_spans"),
                   max_backlog=config.limit(conf, "backlog_spans"))


def build(opts: Options | None = None) -> Pipeline:
    """The pipeline's stages (pipeline.Pipeline) with the options' tags, exporters and
    metrics."""
    opts = opts or Options()
    p = Pipeline(agent_name=opts.agent_name)
    p.enricher = opts.enricher
    p.exporters = list(opts.exporters)
    p.ignore_ports = frozenset(opts.ignore_ports)
    if opts.max_emitted:
        p.stitcher.max_emitted = opts.max_emitted
    if opts.metrics_port:
        p.serve_metrics(opts.metrics_port)
    return p


class Attached:
    """The probes wired to a pipeline: shedding, skip hints, Go goroutine following, the
    kernel's counters in the pipeline's metrics.  `pump()` is the agent's loop body."""

    def __init__(self, pipeline: Pipeline, tracer: Any, cfg: Any, opts: Options) -> None:
        from agent.probes.shedding import Shedder
        from agent.probes.skiphints import SkipHints

        self.pipeline, self.tracer, self.cfg = pipeline, tracer, cfg
        # spans waiting to be stitched count as load too (the agent's memory)
        self.shedder = Shedder(tracer, opts.cpu_budget,
                               backlog=lambda: len(pipeline.stitcher.items),
                               max_backlog=opts.max_backlog) if opts.shedding else None
        self.hints = (SkipHints(tracer, pipeline.assembler, pipeline.tracker)
                      if opts.skip_hints else None)
        self.memory: dict[str, int] = {}  # what memtrim.release() did
        self._next_trim = 0.0
        self.started = False
        pipeline.kernel_drops = tracer.drops
        pipeline.follow_go = lambda pid: tracer.follow_go(pid).startswith("goroutine")
        # pods whose payload capture is off (config `payload:`, pod annotation): their
        # cgroups go to the probes' map, checked before any byte is copied
        from agent.probes import capture

        self.capture = capture.bind(pipeline.enricher, tracer)  # None: nothing to switch
        if pipeline.metrics is not None:
            # the pipeline served its metrics before the probes were there to count losses
            shedder = self.shedder
            pipeline.metrics.add_source("kernel", tracer.drops)
            pipeline.metrics.add_kernel(tracer.stats,
                                        lambda: shedder.keep_ratio if shedder else 1.0,
                                        tracer.ring_fill)
            if getattr(tracer, "tls", None) is not None:
                from agent.probes.tls import TlsCollector

                pipeline.metrics.add_tls(TlsCollector(tracer.tls.process_counters))

    def start(self, prescan: bool = True) -> None:
        """Every probe is compiled (call after any later compile, such as the TC hop
        probes): give back what clang/LLVM left in this process (agent/probes/memtrim.py),
        tune the collector for the per-event path, follow the Go processes already
        running (before their first request rather than after: DWARF takes seconds per
        binary), then start shedding, measured from now."""
        from agent.probes import memtrim

        self.memory = memtrim.release()
        tune_gc()
        if prescan:
            t0 = time.monotonic()
            self.pipeline.prescan(self.cfg)
            go = getattr(self.tracer, "go_processes", lambda: 0)()
            log.info("processes scanned in %.1fs (%d Go processes followed)",
                     time.monotonic() - t0, go)
        if self.shedder is not None:
            ready = getattr(self.tracer, "ready_to_shed", None)
            if ready is not None:  # a recorded stream's tracer has no probes
                ready()
            self.shedder.start()
            self.shedder.run_in_thread()
        self.started = True

    def tick(self) -> None:
        """The loop's periodic work: the pipeline's (stitching, expiry) and skip hints."""
        self.pipeline.tick()
        if self.hints is not None:
            self.hints.tick()

    def pump(self, timeout_s: float = 0.05,
             on_events: Callable[[list], None] | None = None) -> int:
        """One turn of the agent's loop: wait up to timeout_s, hand every waiting event
        to the pipeline (or to on_events instead), do the periodic work.  Returns the
        number of events."""
        events = self.tracer.poll(timeout_s)
        shedder = self.shedder
        if shedder is not None:
            shedder.check_ring()
        if on_events is None:
            self.pipeline.process(events)
        else:
            on_events(events)
        if shedder is not None:
            shedder.check_ring()
        self.tick()
        if not events:
            self._trim()
        return len(events)

    TRIM_INTERVAL_S = 10.0

    def _trim(self) -> None:
        """The ring found empty: give the heap's free pages back (malloc_trim), at most
        every TRIM_INTERVAL_S.  A trim takes up to ~50 ms on a fragmented heap, so it
        waits for a moment with nothing to read rather than run on a timer."""
        now = time.monotonic()
        if now < self._next_trim:
            return
        from agent.probes import memtrim

        self._next_trim = now + self.TRIM_INTERVAL_S
        memtrim.trim_heap()

    def stop(self) -> None:
        """Stop shedding (the probes stay attached until the tracer is closed)."""
        if self.shedder is not None:
            self.shedder.stop()


def attach(pipeline: Pipeline, tracer: Any, cfg: Any, opts: Options | None = None) -> Attached:
    """Wire a loaded SocketTracer (`cfg`: its ProbeConfig) to the pipeline."""
    return Attached(pipeline, tracer, cfg, opts or Options())


def _kind(obj: Any) -> str | None:
    if obj is None:
        return None
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def composition(pipeline: Pipeline, probes: Attached | None = None) -> dict[str, Any]:
    """What was built and how it is wired: stage types, shared indexes, GC settings,
    and (given the attachment) what runs on the kernel side."""
    p = pipeline
    out: dict[str, Any] = {
        "pipeline": _kind(p),
        "assembler": _kind(p.assembler),
        "tracker": _kind(p.tracker),
        "tracker_is_assembler's": p.tracker is p.assembler.tracker,
        "midstream_roles": _kind(p.tracker.roles),
        "stitcher": _kind(p.stitcher),
        "classifier_is_stitcher's": p.classifier is p.stitcher.classifier,
        "handoffs": _kind(p.handoffs),
        "handoffs_shared": p.stitcher.handoffs is p.handoffs,
        "assembler_emits_to_pipeline": _assembler_feeds(p),
        "stitcher_emits_to_pipeline": _emits_to(p.stitcher, p),
        "enricher": _kind(p.enricher),
        "exporters": [name for name, _ in p.exporters],
        "metrics": p.metrics is not None,
        "ignore_ports": sorted(p.ignore_ports),
    }
    if probes is not None:
        out.update({
            "shedding": probes.shedder is not None,
            "skip_hints": probes.hints is not None,
            "kernel_drops": p.kernel_drops == probes.tracer.drops,
            "follows_go": p.follow_go is not None,
            "gc_threshold": gc.get_threshold() if probes.started else None,
        })
    return out


def _assembler_feeds(p: Pipeline) -> bool:
    """Whether the assembler's spans go to this pipeline's stitcher: straight to its add
    (the per-span path, no Python frame), or through Pipeline._span when spans are
    watched (on_span)."""
    emit = p.assembler.emit
    if getattr(emit, "__func__", None) is Pipeline._span:
        return emit.__self__ is p
    add = getattr(p.stitcher, "add", None)
    return add is not None and emit == add


def _emits_to(stitcher: Any, p: Pipeline) -> bool | None:
    """Whether the stitcher hands its traces to the pipeline (None: not visible)."""
    emit = getattr(stitcher, "emit", None)
    if emit is None:
        return None
    return getattr(emit, "__func__", None) is Pipeline._trace and emit.__self__ is p
