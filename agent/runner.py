"""The agent's main loop: load probes, drain events in batches, hand them on, stop
cleanly on SIGINT/SIGTERM/--duration with every probe detached."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from agent import check
from agent.conn.tracker import ConnTracker
from agent.printer import event_line
from agent.probes.abi import EV_CONN, SYS_CLOSE, SYS_STATE_CLOSE
from agent.probes.loader import ProbeConfig, ProbeError, SocketTracer, netns_inode

log = logging.getLogger("zerotrace.agent")


def netns_path(name: str) -> str:
    """`ip netns` names live in /run/netns; anything with a slash is a path already."""
    return name if "/" in name else f"/run/netns/{name}"


def probe_config(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(
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
    try:
        tracer = SocketTracer(cfg)
    except ProbeError as e:
        print(f"zerotrace: {e}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.duration if args.duration else None
    out = sys.stdout
    n_events = 0
    tracker = ConnTracker()
    try:
        with tracer:
            log.info("tracing; stop with Ctrl-C")
            while not stop.stopped and (deadline is None or time.monotonic() < deadline):
                events = tracer.poll(0.05)
                for e in events:
                    tracker.update(e)
                    if e.type == EV_CONN and e.syscall in (SYS_CLOSE, SYS_STATE_CLOSE):
                        tracker.closed(e.sock_id)
                n_events += len(events)
                if args.print_what == "events" and events:
                    out.write("\n".join(event_line(e) for e in events) + "\n")
                    out.flush()
            drops = tracer.drops()
    except BrokenPipeError:
        return 0
    lost = sum(drops.values())
    print(f"zerotrace: {n_events} events; lost in kernel: {lost} "
          f"({', '.join(f'{k}={v}' for k, v in drops.items())})", file=sys.stderr)
    return 0
