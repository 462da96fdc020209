"""The agent's main loop: load probes, drain events in batches, hand them down the
pipeline, stop cleanly on SIGINT/SIGTERM/--duration with every probe detached."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from agent import check, factory
from agent.printer import event_line, span_line
from agent.probes import memtrim
from agent.probes.loader import (
    ProbeConfig,
    ProbeError,
    SocketTracer,
    netns_inode,
    ring_pages_from_env,
)

log = logging.getLogger("zerotrace.agent")


def netns_path(name: str) -> str:
    """`ip netns` names live in /run/netns; anything with a slash is a path already."""
    return name if "/" in name else f"/run/netns/{name}"


# The agent's ring: 8 MiB (ZEROTRACE_RING_MB sets it).  Under overload the ring is
# what the agent reads in one burst before its cuts hold, and that burst sets its
# memory for the rest of the run (Python's arenas stay fragmented); with the probes'
# own cut on a full ring, a smaller ring loses no more (bench_live, docs/benchmarks.md:
# 16 MiB: RSS steady 160 MB, 8 MiB: 123 MB, loss 0.002 / 0.004 %).
AGENT_RING_MB = 8


def _ring_mb(args: argparse.Namespace) -> int:
    """The config file's limits.ring_mb, else AGENT_RING_MB ($ZEROTRACE_RING_MB over both,
    in ring_pages_from_env).  A file that does not load is said by the pipeline's
    options, read next: here it leaves the default."""
    from agent import config

    try:
        return int(config.limit(config.load(getattr(args, "config", None)), "ring_mb")
                   or AGENT_RING_MB)
    except config.ConfigError:
        return AGENT_RING_MB


def probe_config(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(
        ring_pages=ring_pages_from_env(_ring_mb(args)),
        payload_bytes=args.payload_bytes,
        pids=set(args.pid),
        ports=set(args.port),
        netns={netns_inode(netns_path(n)) for n in args.netns},
        cgroups={os.stat(c).st_ino for c in args.cgroup},
    )


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its batch and exits."""

    def __init__(self) -> None:
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._set)

    def _set(self, signum: int, _frame: object) -> None:
        self.stopped = True


class ProbeLoad:
    """SocketTracer(cfg) built on a thread; result() waits for it."""

    def __init__(self, cfg: ProbeConfig) -> None:
        self._tracer: SocketTracer
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._load, args=(cfg,), name="zt-probes",
                                        daemon=True)
        self._thread.start()

    def _load(self, cfg: ProbeConfig) -> None:
        try:
            self._tracer = SocketTracer(cfg)
        except BaseException as e:  # handed to the caller of result()
            self._error = e

    def result(self) -> SocketTracer:
        """The tracer, or the loader's exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._tracer


def _writer(out):
    def write_lines(lines: list[str]) -> None:
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
    return write_lines


def run(args: argparse.Namespace) -> int:
    try:
        cfg = probe_config(args)
    except OSError as e:
        print(f"zerotrace: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    # Cheap required checks first, so a host that cannot run says why in one line
    # instead of a bcc compiler trace.
    reason = check.blocking_reason(check.run_checks(with_fentry=False, with_tc=False))
    if reason is not None:
        print(f"zerotrace: the agent cannot run here: {reason}", file=sys.stderr)
        return 1
    stop = StopFlag()
    # Compiling the probes is most of the start-up (clang inside bcc, which releases the
    # GIL): it runs on a thread while this one builds the pipeline (configuration,
    # enrichment, exporters and their imports).
    probes = ProbeLoad(cfg)
    write = _writer(sys.stdout)
    what = args.print_what
    try:
        opts = factory.options_from_args(args)
    except ValueError as e:  # config errors: unknown keys, bad mappings
        try:
            probes.result().close()
        except ProbeError:
            pass  # the configuration error is the one to fix first
        print(f"zerotrace: configuration: {e}", file=sys.stderr)
        return 2
    pipeline = factory.build(opts)
    try:
        tracer = probes.result()
    except ProbeError as e:
        print(f"zerotrace: {e}", file=sys.stderr)
        return 1
    # the same wiring as the demo and the benchmarks (agent/factory.py): shedding and
    # skip hints (ZEROTRACE_SHEDDING, ZEROTRACE_SKIP_HINTS), Go following, kernel counters
    attached = factory.attach(pipeline, tracer, cfg, opts)
    shedder = attached.shedder
    net = None
    if getattr(args, "interfaces", None):
        from agent.net import live

        try:
            net = live.start(args, pipeline)  # TC hop probes: N spans (docs/network.md)
        except Exception as e:  # no clsact, no BTF for the skb offsets, a bad regex ...
            print(f"zerotrace: network spans off: {e}", file=sys.stderr)
    # every probe is compiled now (the TC programs too): the compiler's memory given back,
    # the collector tuned, running processes scanned, shedding started
    attached.start()
    mem_top = int(os.environ.get("ZEROTRACE_MEMORY_REPORT", "0") or 0)
    if mem_top and os.environ.get("ZEROTRACE_TRACEMALLOC", "0") != "0":
        import tracemalloc

        tracemalloc.start()
    report_now = threading.Event()
    if mem_top:
        memtrim.report(mem_top, "ready")
        # and whenever asked (bench_live --smaps asks under load)
        signal.signal(signal.SIGUSR1, lambda _s, _f: report_now.set())
    if what == "spans":
        pipeline.on_span = lambda ctx: write([span_line(ctx.span)])
    elif what == "traces":
        pipeline.on_trace = lambda text: write([text])
    deadline = time.monotonic() + args.duration if args.duration else None
    n_events = 0
    on_events = None
    if what == "events":
        def on_events(events: list) -> None:
            pipeline.tracker.update_all(events)
            write([event_line(e) for e in events])
    try:
        with tracer:
            log.info("tracing; stop with Ctrl-C")
            while not stop.stopped and (deadline is None or time.monotonic() < deadline):
                n_events += attached.pump(0.05, on_events)
                if report_now.is_set():
                    report_now.clear()
                    memtrim.report(mem_top, "asked", pipeline)
            attached.stop()
            if mem_top:
                memtrim.report(mem_top, "end", pipeline)
            drops = tracer.drops()
            kernel_stats = tracer.stats()
            if net is not None:
                net.drain()  # hop records of the last requests, before their traces go
            pipeline.close()
    except BrokenPipeError:
        return 0
    finally:
        if net is not None:
            net.close()
    lost = sum(drops.values())
    print(f"zerotrace: {n_events} events; lost in kernel: {lost} "
          f"({', '.join(f'{k}={v}' for k, v in drops.items())})", file=sys.stderr)
    ks = kernel_stats
    print(f"zerotrace: ring: {ks['ring_records']} records, {ks['ring_bytes']} bytes; left out "
          f"on purpose: {ks['shed_exchanges']} exchanges and {ks['shed_connections']} "
          f"connections sampled out ({ks['shed_syscalls']} syscalls), "
          f"{ks['skipped_syscalls']} syscalls of skipped bodies"
          + (f"; {shedder.summary()}" if shedder is not None else ""), file=sys.stderr)
    print(f"zerotrace: {pipeline.summary()}", file=sys.stderr)
    for name, b in pipeline.exporters:
        m = b.metrics()
        print(f"zerotrace: export to {name}: {m['zerotrace_export_sent_total']} spans sent, "
              f"{m['zerotrace_export_dropped_total']} dropped", file=sys.stderr)
    for p in pipeline.stitcher.process_report():
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(p["counts"].items()))
        print(f"zerotrace: stitching pid {p['pid']} ({p['process']}, {p['mode']}): {counts}",
              file=sys.stderr)
    return 0
