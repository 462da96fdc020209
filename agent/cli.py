"""The `zerotrace` command: agent commands here, server and query commands from
server.cli (looked up by name, so the agent package itself never depends on it)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from agent import check as checks_mod
from proto.credentials import add_client_options


def cmd_check(args: argparse.Namespace) -> int:
    results = checks_mod.run_checks(with_fentry=not args.quick)
    reason = checks_mod.blocking_reason(results)
    if args.output == "json":
        print(json.dumps({
            "checks": [c.__dict__ for c in results],
            "probe_set": checks_mod.probe_set(results) if reason is None else None,
            "can_run": reason is None, "reason": reason}, indent=2))
    else:
        for c in results:
            mark = "yes" if c.ok else "no "
            req = " (required)" if c.required and not c.ok else ""
            print(f"{c.name:<22} {mark}  {c.detail}{req}")
        if reason is None:
            print(f"\nprobe set: {checks_mod.probe_set(results)}")
    if reason is not None:
        print(f"zerotrace: the agent cannot run here: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from agent import config, runner

    if not args.interfaces:  # the flag wins over the configuration file
        try:
            args.interfaces = config.load(args.config).get("interfaces") or None
        except config.ConfigError:
            pass  # said, with its reason, when the pipeline reads the file
    return runner.run(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zerotrace")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


EXIT_USAGE = 2  # as argparse; the codes are listed in docs/cli.md


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`zerotrace: ...`), exit 2, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        print(f"zerotrace: {self.prog.removeprefix('zerotrace ')}: {message} (see --help)",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="zerotrace", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    p.add_argument("--version", action="version", version=f"zerotrace {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="what this host offers the agent")
    # table (alias text, its old name) or json, as the query commands
    c.add_argument("-o", "--output", choices=["table", "text", "json"], default="table")
    c.add_argument("--out", metavar="FILE", help="write the output to FILE, not stdout")
    c.add_argument("--quick", action="store_true", help="skip the fentry load test (~3 s)")
    c.set_defaults(func=cmd_check)

    a = sub.add_parser("agent", help="run the node agent")
    a.add_argument("--print", dest="print_what", choices=["events", "spans", "traces", "none"],
                   default="none", help="print what the agent sees, one line each")
    a.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    a.add_argument("--pid", type=int, action="append", default=[], help="trace only this pid")
    a.add_argument("--port", type=int, action="append", default=[],
                   help="trace only sockets with this local or remote port")
    a.add_argument("--netns", action="append", default=[],
                   help="trace only sockets of this network namespace (name or path)")
    a.add_argument("--interfaces", metavar="REGEX",
                   help="network hops: TC probes on interfaces matching REGEX in the host "
                   "and each --netns (N spans; docs/network.md)")
    a.add_argument("--cgroup", action="append", default=[],
                   help="trace only processes of this cgroup v2 directory")
    a.add_argument("--payload-bytes", type=int, default=1024,
                   help="payload prefix captured per syscall (rounded up to a power of two)")
    a.add_argument("--server", help="send spans to this zerotrace server (HOST:PORT; "
                   "default: config, else $ZEROTRACE_SERVER)")
    a.add_argument("--otlp", help="also send spans to this OTLP/gRPC collector (HOST:PORT)")
    a.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics here (default: config, else 9464 when "
                   "printing nothing, off otherwise; 0 = off)")
    a.add_argument("--node", help="this node's name (default: ZEROTRACE_NODE, else host name)")
    a.add_argument("--config", help="agent configuration file (default: $ZEROTRACE_CONFIG)")
    # TLS/mTLS and a bearer token towards --server and --otlp (proto/credentials.py)
    add_client_options(a)
    a.set_defaults(func=cmd_agent)

    _register_optional(sub, "server.cli")
    _register_optional(sub, "agent.demo.cli")
    return p


def _register_optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Add the sub-commands of another module when it is present."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    register = getattr(mod, "register", None)
    if register is not None:
        register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # server.cli.run gives every command --out FILE and one-line errors; it is there
    # whenever the server package is (registered above), else run the command bare.
    server_cli = sys.modules.get("server.cli")
    if server_cli is not None:
        return server_cli.run(args)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
