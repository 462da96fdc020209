"""Server-side CLI: `server`, `services`, `traces`, `trace`, `flamegraph`, `dependencies`.

`register(subparsers)` adds them to the `zerotrace` entry point (agent/cli.py);
`python -m server.cli ...` runs them alone.  Query commands reach the server at
`--server HOST:PORT` (default $ZEROTRACE_SERVER or 127.0.0.1:4317, the port the
server listens on by default) and print rich tables/trees, or JSON with `-o json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from proto.span import PARENT_UNKNOWN

DEFAULT_SERVER = os.environ.get("ZEROTRACE_SERVER", "127.0.0.1:4317")
DEFAULT_DATA = os.environ.get("ZEROTRACE_DATA", "./zerotrace-data")

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_SIZE = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration_ns(text: str, default_unit: str = "s") -> int:
    """'15m' -> ns; '100ms', '2h', '1.5s', '7d'; a bare number uses `default_unit`."""
    m = _DUR.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 100ms, 15m, 2h)")
    ns = int(float(m.group(1)) * _UNITS_NS[m.group(2) or default_unit])
    if ns >= 2**63:  # beyond what the wire (and the store) can hold
        raise argparse.ArgumentTypeError(f"duration {text!r} is too large (e.g. 100ms, 15m, 2h)")
    return ns


def parse_size(text: str) -> int:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", text)
    if not m or m.group(2).lower() not in _SIZE:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 500MB, 10GiB)")
    return int(float(m.group(1)) * _SIZE[m.group(2).lower()])


def _tag(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"bad tag {text!r}: use key=value")
    return k, v


def fmt_ns(ns: int) -> str:
    from server.flamegraph.svg import fmt_ns as f

    return f(int(ns))


# -- plumbing --------------------------------------------------------------------


def _security(args: argparse.Namespace):
    """TLS and token options of a query command (proto/credentials.py)."""
    from proto.credentials import ClientSecurity, CredentialsError

    try:
        return ClientSecurity.from_options(
            ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
            token_file=args.token_file, server_name=args.tls_server_name)
    except CredentialsError as e:
        print(f"zerotrace: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _stub(args: argparse.Namespace):
    from proto.zerotrace.v1 import query_pb2_grpc

    sec = _security(args)
    # gRPC's default 4 MiB receive limit failed on larger traces; the server sends up
    # to its own limit (server.app.MAX_MESSAGE_BYTES, 32 MiB).
    ch = sec.channel(args.server, options=[("grpc.max_receive_message_length", 32 << 20)])
    return ch, query_pb2_grpc.QueryServiceStub(ch), sec.metadata()


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """Call a QueryService method; gRPC errors become a one-line message, exit 1."""
    import grpc

    ch, stub, metadata = _stub(args)
    try:
        return getattr(stub, method)(request, timeout=args.timeout, metadata=metadata)
    except grpc.RpcError as e:
        code = e.code()
        details = e.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and _tls_failure(details):
            msg = (f"TLS with the zerotrace server at {args.server} failed: check --tls-ca "
                   "(the CA that signed the server), --tls-cert/--tls-key (when it asks for a "
                   "client certificate), and whether it speaks TLS at all")
        elif code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
            msg = f"cannot reach the zerotrace server at {args.server} (--server HOST:PORT)"
        else:
            msg = f"{code.name.lower()}: {e.details()}"
        print(f"zerotrace: {msg}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        ch.close()


def _tls_failure(details: str) -> bool:
    d = details.lower()
    return any(w in d for w in ("ssl", "tls", "handshake", "certificate", "socket closed"))


def _since_ns(args: argparse.Namespace) -> int:
    if not args.since:
        return 0
    now = time.time_ns()
    if args.since >= now:
        # Checked here, not by the server: a negative time was a traceback before.
        print(f"zerotrace: --since reaches back before 1970 ({args.since / 86_400e9:.0f} days); "
              "give e.g. 15m, 2h, 7d, or 0 for all time", file=sys.stderr)
        raise SystemExit(2)
    return now - args.since


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _console():
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    # Piped: rich would wrap at 80 columns and cut trace ids; use $COLUMNS or wide.
    return Console(width=int(os.environ.get("COLUMNS") or 160))


# -- commands --------------------------------------------------------------------


def _port_in_use(listen: str) -> str:
    """Why listen (HOST:PORT) cannot be bound now, or "" (port 0 is always free)."""
    import socket

    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or int(port) == 0:
        return ""
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as e:
        return f"cannot resolve {host} ({e.strerror or e})"
    fam, _t, _p, _c, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            s.bind(addr)
        except OSError as e:
            return e.strerror or str(e)
    return ""


def cmd_server(args: argparse.Namespace) -> int:
    import logging

    from server.app import ZerotraceServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from server.auth import AuthConfigError, TokenTable, exposure_problem, server_credentials

    problem = exposure_problem(args.listen, bool(args.tls_cert), bool(args.token_file),
                               args.insecure)
    if not problem and args.http:  # the HTTP API has tokens but no TLS of its own
        problem = exposure_problem(args.http, False, bool(args.token_file), args.insecure)
    if problem:
        print(f"zerotrace: {problem}", file=sys.stderr)
        return 2
    try:
        tokens = TokenTable(args.token_file) if args.token_file else None
        if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
            raise AuthConfigError("TLS needs --tls-cert and --tls-key (and --tls-ca for mTLS)")
        if args.tls_cert:
            server_credentials(args.tls_cert, args.tls_key, args.tls_ca or "")  # readable?
    except AuthConfigError as e:
        print(f"zerotrace: {e}", file=sys.stderr)
        return 2
    busy = _port_in_use(args.listen)
    if busy:  # said before the store opens: nothing to shut down, nothing to corrupt
        print(f"zerotrace: cannot listen on {args.listen}: {busy}", file=sys.stderr)
        return 1
    busy = _port_in_use(args.http) if args.http else ""
    if busy:  # an explicit --http, likewise (the default's port may be taken: see below)
        print(f"zerotrace: cannot serve HTTP on {args.http}: {busy}", file=sys.stderr)
        return 1
    store = None
    if args.clickhouse:
        from server.storage.clickhouse_store import ClickHouseStore

        host, _, port = args.clickhouse.rpartition(":")
        store = ClickHouseStore(host=host or "127.0.0.1", port=int(port or 8123))
    srv = ZerotraceServer(
        args.listen,
        data_dir=args.data,
        store=store,
        retention_s=(args.retention or 0) / 1e9,
        max_bytes=args.max_size or 0,
        metrics_listen=args.metrics,
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        tls_ca=args.tls_ca or "",
        tokens=tokens,
        max_inflight_bytes=args.max_inflight_bytes,
    )
    try:
        port = srv.start()
    except (OSError, RuntimeError) as e:  # grpcio raises RuntimeError when bind fails
        print(f"zerotrace: cannot listen on {args.listen} (in use, or not an address of "
              f"this host): {e}", file=sys.stderr)
        return 1
    print(
        f"zerotrace server listening on {args.listen.rpartition(':')[0]}:{port} "
        f"data={args.data if store is None else args.clickhouse}"
        + (f" metrics=http://{args.metrics.rpartition(':')[0]}:{srv.metrics_port}/metrics"
           if args.metrics else "")
        + f" tls={'mtls' if args.tls_ca else 'on' if args.tls_cert else 'off'}"
        + f" tokens={len(tokens) if tokens is not None else 'off'}",
        flush=True,
    )
    try:
        http_api = _start_http(args, srv.store, tokens)
    except OSError as e:  # taken since the check: stop cleanly (chDB dislikes exit())
        print(f"zerotrace: cannot serve HTTP on {args.http}: {e}", file=sys.stderr)
        srv.stop()
        return 1
    stop = {"now": False}

    def _on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if tokens is not None:
        # Rotating tokens needs no restart: edit the file, `kill -HUP` the server.
        signal.signal(signal.SIGHUP, lambda *_: tokens.reload())
    while not stop["now"]:
        time.sleep(0.2)
    if http_api is not None:
        http_api.stop()
    srv.stop()
    return 0


def _start_http(args: argparse.Namespace, store: Any, tokens: Any) -> Any:
    """The Tempo/Jaeger HTTP API (server/http/), or None when off or, at the default
    address only, when the port is taken (a second local server still starts)."""
    from server.http import DEFAULT_HTTP, HttpApi

    listen = DEFAULT_HTTP if args.http is None else args.http
    if not listen:
        return None
    api = HttpApi(store, listen, tokens=tokens)
    try:
        port = api.start()
    except OSError as e:
        if args.http is not None:
            raise
        print(f"zerotrace: HTTP API off: {listen} is taken ({e}); use --http", file=sys.stderr)
        return None
    print(f"zerotrace HTTP API (Tempo, Jaeger) on http://{listen.rpartition(':')[0]}:{port}",
          flush=True)
    return api


def cmd_services(args: argparse.Namespace) -> int:
    from proto.zerotrace.v1 import query_pb2

    resp = _call(args, "Services", query_pb2.ServicesRequest(since_ns=_since_ns(args)))
    rows = [
        {
            "service": s.service,
            "requests": s.requests,
            "rate_per_s": round(s.rate_per_s, 3),
            "error_rate": round(s.error_rate, 4),
            "p50_ns": s.p50_ns,
            "p99_ns": s.p99_ns,
        }
        for s in resp.services
    ]
    if args.output == "json":
        _print_json(rows)
        return 0
    from rich.table import Table

    t = Table(title="services")
    for col in ("service", "requests", "req/s", "errors", "p50", "p99"):
        t.add_column(col, justify="left" if col == "service" else "right")
    for r in rows:
        t.add_row(
            r["service"],
            str(r["requests"]),
            f"{r['rate_per_s']:.2f}",
            f"{100 * r['error_rate']:.1f}%",
            fmt_ns(r["p50_ns"]),
            fmt_ns(r["p99_ns"]),
        )
    _console().print(t)
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    from proto.zerotrace.v1 import query_pb2

    req = query_pb2.SearchTracesRequest(
        service=args.service or "",
        operation=args.operation or "",
        since_ns=_since_ns(args),
        min_duration_ns=args.min_duration or 0,
        status=args.status or "",
        tags=dict(args.tag or []),
        limit=args.limit,
    )
    resp = _call(args, "SearchTraces", req)
    rows = [
        {
            "trace_id": t.trace_id,
            "root_service": t.root_service,
            "root_operation": t.root_operation,
            "start_ns": t.start_ns,
            "duration_ns": t.duration_ns,
            "spans": t.span_count,
            "errors": t.error_count,
            "services": list(t.services),
        }
        for t in resp.traces
    ]
    if args.output == "json":
        _print_json(rows)
        return 0
    from rich.table import Table

    t = Table(title=f"{len(rows)} traces, newest first")
    t.add_column("trace id", no_wrap=True, min_width=32)
    for col in ("start", "root", "duration", "spans", "errors", "services"):
        t.add_column(col, justify="right" if col in ("duration", "spans", "errors") else "left")
    for r in rows:
        start = time.strftime("%H:%M:%S", time.localtime(r["start_ns"] / 1e9))
        t.add_row(
            r["trace_id"],
            start,
            f"{r['root_service']}: {r['root_operation']}",
            fmt_ns(r["duration_ns"]),
            str(r["spans"]),
            f"[red]{r['errors']}[/]" if r["errors"] else "0",
            ", ".join(r["services"]),
        )
    _console().print(t)
    return 0


def _fetch_trace(args: argparse.Namespace):
    from proto.convert import span_from_pb
    from proto.zerotrace.v1 import query_pb2

    resp = _call(
        args, "GetTrace", query_pb2.GetTraceRequest(trace_id=args.trace_id, no_join=args.no_join)
    )
    return [span_from_pb(m) for m in resp.spans], resp.join


def trace_tree_rows(spans: Sequence) -> list[dict[str, Any]]:
    """Depth-first rows of a trace with offset, duration and self time (ns)."""
    from server.flamegraph.stacks import walk

    t0 = min(s.start_ns for s in spans)
    return [
        {
            "depth": d,
            "source": s.source or "S",
            "kind": s.kind,
            "service": s.service,
            "process": s.process,
            "operation": s.operation,
            "status": s.status,
            "status_code": s.status_code,
            "offset_ns": s.start_ns - t0,
            "duration_ns": s.duration_ns,
            "self_ns": st,
            "span_id": s.span_id,
            "agent": s.agent,
            # why the agent left this span without a parent (it refuses to guess)
            "parent_unknown": (s.attributes.get(PARENT_UNKNOWN, "") if d == 0 else ""),
        }
        for s, _p, d, st in walk(spans)
    ]


def cmd_trace(args: argparse.Namespace) -> int:
    spans, join = _fetch_trace(args)
    if args.output == "json":
        _print_json(
            {
                "trace_id": args.trace_id,
                "spans": [s.to_dict() for s in spans],
                "join": {"linked": join.linked, "ambiguous": join.ambiguous},
            }
        )
        return 0
    from rich.markup import escape
    from rich.tree import Tree

    rows = trace_tree_rows(spans)
    total = max(s.end_ns for s in spans) - min(s.start_ns for s in spans)
    root = Tree(
        f"trace [bold]{args.trace_id}[/]  {len(spans)} spans  {fmt_ns(total)}"
        + (f"  joined {join.linked} fragment link(s)" if join.linked else "")
        + (
            f"  [yellow]{join.ambiguous} ambiguous key(s) left unlinked[/]"
            if join.ambiguous
            else ""
        )
    )
    stack: list[Any] = [root]
    colours = {"S": "cyan", "N": "blue", "A": "green"}
    for r in rows:
        del stack[r["depth"] + 1 :]
        who = r["service"] or "?"
        if r["process"] and r["process"] != r["service"]:
            who += f"/{r['process']}"
        st = r["status"]
        st_txt = "[red]error[/]" if st == "error" else st
        if r["status_code"]:
            st_txt += f" {r['status_code']}"
        label = (
            f"[{colours.get(r['source'], 'white')}]{r['source']}[/] "
            f"[dim]{r['kind'][:3]}[/] [bold]{who}[/] {r['operation']}  {st_txt}  "
            f"+{fmt_ns(r['offset_ns'])}  {fmt_ns(r['duration_ns'])}  "
            f"self {fmt_ns(r['self_ns'])}"
        )
        if r["parent_unknown"]:
            label += f"  [yellow]parent unknown: {escape(r['parent_unknown'])}[/]"
        node = stack[-1].add(label)
        stack.append(node)
    _console().print(root)
    return 0


def cmd_flamegraph(args: argparse.Namespace) -> int:
    from server.flamegraph import format_for, render_stacks, render_trace

    try:
        fmt = format_for(args.out)
    except ValueError as e:
        print(f"zerotrace: {e}", file=sys.stderr)
        return 2
    if args.trace_id:
        spans, _join = _fetch_trace(args)
        text = render_trace(spans, fmt, f"trace {args.trace_id}")
        what = f"{len(spans)} spans"
    else:
        if not args.service:
            print("zerotrace: give a trace id, or --service for an aggregate", file=sys.stderr)
            return 2
        from proto.zerotrace.v1 import query_pb2

        resp = _call(
            args,
            "FlameGraph",
            query_pb2.FlameGraphRequest(
                service=args.service, since_ns=_since_ns(args), max_traces=args.max_traces
            ),
        )
        stacks = {s.stack: s.value for s in resp.stacks}
        text = render_stacks(stacks, fmt, f"service {args.service}, {resp.traces} traces")
        what = f"{resp.traces} traces, {len(stacks)} stacks"
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out} ({fmt}, {what})", file=sys.stderr)
    return 0


def cmd_dependencies(args: argparse.Namespace) -> int:
    from proto.zerotrace.v1 import query_pb2

    resp = _call(args, "Dependencies", query_pb2.DependenciesRequest(since_ns=_since_ns(args)))
    rows = [
        {"parent": d.parent, "child": d.child, "calls": d.call_count, "errors": d.error_count}
        for d in resp.links
    ]
    if args.output == "json":
        _print_json(rows)
        return 0
    from rich.table import Table

    t = Table(title="dependencies")
    for col in ("caller", "callee", "calls", "errors"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["parent"], r["child"], str(r["calls"]), str(r["errors"]))
    _console().print(t)
    return 0


# -- argparse --------------------------------------------------------------------


def _query_opts(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"server HOST:PORT (default {DEFAULT_SERVER}, env ZEROTRACE_SERVER)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    from proto.credentials import add_client_options

    add_client_options(p)
    if output:
        p.add_argument(
            "-o",
            "--output",
            choices=("table", "json"),
            default="table",
            help="table/tree (default) or json",
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the server and query sub-commands to the `zerotrace` parser."""
    p = subparsers.add_parser("server", help="run the zerotrace server (ingest, OTLP, queries)")
    p.add_argument("--listen", default="127.0.0.1:4317", help="HOST:PORT (default %(default)s)")
    p.add_argument("--data", default=DEFAULT_DATA, help="data directory (default %(default)s)")
    p.add_argument(
        "--retention",
        type=parse_duration_ns,
        default=0,
        help="delete spans older than this (e.g. 7d); default keep",
    )
    p.add_argument(
        "--max-size",
        type=parse_size,
        default=0,
        help="delete oldest spans above this size on disk (e.g. 10GB)",
    )
    p.add_argument(
        "--max-inflight-bytes",
        type=parse_size,
        default=256 * 1024 * 1024,  # server.ingest.admission's default (not imported: CLI start)
        metavar="SIZE",
        help="cap on request bytes being ingested at once; beyond it pushes are refused "
        "(RESOURCE_EXHAUSTED, agents retry) before they are decoded (default 256MiB; 0 = off)",
    )
    p.add_argument(
        "--clickhouse",
        default="",
        help="HOST:PORT of a ClickHouse HTTP endpoint instead of the embedded store",
    )
    p.add_argument(
        "--metrics",
        default="",
        metavar="HOST:PORT",
        help="serve the server's Prometheus metrics there (e.g. 0.0.0.0:9465); default off",
    )
    p.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help="Tempo and Jaeger query APIs for Grafana (default 127.0.0.1:3200; '' = off)",
    )
    g = p.add_argument_group("security (docs/server.md#security)")
    g.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    g.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    g.add_argument("--tls-ca", metavar="FILE",
                   help="require client certificates signed by this CA (mTLS)")
    g.add_argument("--token-file", metavar="FILE",
                   help="bearer tokens, one 'ROLE TOKEN [NAME]' a line, ROLE ingest or read; "
                   "re-read on SIGHUP")
    g.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --listen without TLS or tokens")
    p.set_defaults(func=cmd_server)

    p = subparsers.add_parser("services", help="services with request rate, errors, p50/p99")
    _query_opts(p)
    p.add_argument(
        "--since",
        type=parse_duration_ns,
        default=parse_duration_ns("1h"),
        help="look back this far (default 1h)",
    )
    p.set_defaults(func=cmd_services)

    p = subparsers.add_parser("traces", help="search traces, newest first")
    _query_opts(p)
    p.add_argument("--service", help="spans of this service")
    p.add_argument("--operation", help="spans with this operation, e.g. 'GET /users'")
    p.add_argument(
        "--since",
        type=parse_duration_ns,
        default=parse_duration_ns("1h"),
        help="look back this far (default 1h)",
    )
    p.add_argument(
        "--min-duration",
        type=lambda t: parse_duration_ns(t, "ms"),
        help="spans at least this long (100ms, 1.5s; bare number = ms)",
    )
    p.add_argument("--status", choices=("ok", "error", "unset"), help="span status")
    p.add_argument("--tag", type=_tag, action="append", help="key=value (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="at most N traces (default 20)")
    p.set_defaults(func=cmd_traces)

    p = subparsers.add_parser("trace", help="one trace as a tree")
    _query_opts(p)
    p.add_argument("trace_id")
    p.add_argument("--no-join", action="store_true", help="skip the cross-node join")
    p.set_defaults(func=cmd_trace)

    p = subparsers.add_parser("flamegraph", help="flame graph of a trace, or of a service")
    _query_opts(p, output=False)
    p.add_argument("trace_id", nargs="?")
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="output file: .svg, .html (interactive), .json (speedscope), .folded",
    )
    p.add_argument("--service", help="aggregate over this service's recent traces")
    p.add_argument("--since", type=parse_duration_ns, default=parse_duration_ns("1h"))
    p.add_argument("--max-traces", type=int, default=1000)
    p.add_argument("--no-join", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_flamegraph)

    p = subparsers.add_parser("dependencies", help="service call graph")
    _query_opts(p)
    p.add_argument("--since", type=parse_duration_ns, default=parse_duration_ns("1h"))
    p.set_defaults(func=cmd_dependencies)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zerotrace", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
