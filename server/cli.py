"""Server-side CLI: `server`, `services`, `traces`, `trace`, `flamegraph`, `dependencies`.

`register(subparsers)` adds them to the `zerotrace` entry point (agent/cli.py);
`python -m server.cli ...` runs them alone.  Query commands reach the server at
`--server HOST:PORT` (default $ZEROTRACE_SERVER or 127.0.0.1:4317, the port the
server listens on by default) and print tables/trees, JSON (`-o json`) or, for one
trace, OTLP/JSON (`-o otlp-json`); `--out FILE` writes that to a file.

Conventions (docs/cli.md): times are UTC RFC 3339 with the date; JSON carries
nanoseconds as strings (as OTLP/JSON does: jq and JavaScript lose digits past 2^53);
`--since/--until` take a duration ago (15m, 2h) or an RFC 3339 time; trace ids are
16 or 32 hex digits (a 16-digit one is zero-padded, as W3C says for 64-bit ids);
tables are plain text, width-aware (terminal width, or $COLUMNS), with no colour or
box drawing when stdout is not a terminal.  Errors are one line on stderr; exit codes:
0 ok, 1 the request failed (server unreachable or it refused/failed, trace not found),
2 usage (bad option, value, trace id or output file), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import shutil
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


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time_ns(text: str, name: str = "time") -> int:
    """A point in time as Unix ns: a duration ago ('15m', '2h', '7d'; '0' = unbounded,
    returned as 0) or an RFC 3339 time ('2026-12-03T07:00:00Z', '...+01:00', with up to
    nine fractional digits)."""
    m = _RFC3339.match(text.strip())
    if m:
        date, clock, frac, tz = m.groups()
        tz = "+00:00" if tz in ("Z", "z") else tz
        try:
            t = _dt.datetime.fromisoformat(f"{date}T{clock}{tz}")
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad time {text!r}: {e}") from None
        ns = int(t.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
        if ns < 0:
            raise argparse.ArgumentTypeError(f"time {text!r} is before 1970")
        return ns
    if re.match(r"^\s*\d{4}-\d", text):
        raise argparse.ArgumentTypeError(
            f"bad time {text!r}: RFC 3339 with a zone, e.g. 2026-12-03T07:00:00Z")
    ago = parse_duration_ns(text)
    if ago == 0:
        return 0
    now = time.time_ns()
    if ago >= now:
        raise argparse.ArgumentTypeError(
            f"{name} reaches back before 1970 ({text} = {ago / 86_400e9:.0f} days); "
            "give e.g. 15m, 2h, 7d, an RFC 3339 time, or 0 for all time")
    return now - ago


def parse_trace_id(text: str) -> str:
    """32 lower-case hex digits from a 32- or 16-digit trace id (16 digits are a 64-bit
    id, zero-padded on the left as W3C Trace Context and Jaeger do)."""
    t = text.strip().lower()
    if len(t) not in (16, 32) or not re.fullmatch(r"[0-9a-f]+", t):
        raise argparse.ArgumentTypeError(
            f"bad trace id {text!r}: want 16 or 32 hex digits")
    if t == "0" * len(t):
        raise argparse.ArgumentTypeError(f"bad trace id {text!r}: all zeros is invalid")
    return t.zfill(32)


def fmt_time(ns: int, digits: int = 9) -> str:
    """UTC RFC 3339 with `digits` fractional digits (0-9): 2026-12-03T07:00:00.123Z."""
    ns = int(ns)
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if digits <= 0:
        return base + "Z"
    return f"{base}.{frac:09d}"[: len(base) + 1 + digits] + "Z"


def json_ns(obj: Any) -> Any:
    """`obj` with every integer under a key ending in `_ns` as a decimal string, and an
    RFC 3339 `<name>_time` beside every `start_ns`/`end_ns` (absolute times)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k.endswith("_ns") and isinstance(v, int) and not isinstance(v, bool):
                out[k] = str(v)
                if k in ("start_ns", "end_ns") and v > 0:
                    out[k[:-3] + "_time"] = fmt_time(v)
            else:
                out[k] = json_ns(v)
        return out
    if isinstance(obj, list):
        return [json_ns(x) for x in obj]
    return obj


class Column:
    """A table column: `flex` columns shrink (cut with '...') to fit the width, and
    columns with a `drop` rank are left out, lowest rank first, when even that is
    not enough."""

    def __init__(self, name: str, right: bool = False, flex: bool = False,
                 drop: int = 0, min_width: int = 8) -> None:
        self.name, self.right, self.flex, self.drop, self.min = name, right, flex, drop, min_width


def _width() -> int | None:
    """Columns to fit: the terminal's; when piped, $COLUMNS if set, else unlimited."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    c = os.environ.get("COLUMNS", "")
    return int(c) if c.isdigit() and int(c) > 0 else None


def render_table(cols: list[Column], rows: list[list[str]], width: int | None) -> str:
    """Plain text columns two spaces apart, the header first, fitted to `width`."""
    cols = list(cols)
    rows = [list(r) for r in rows]

    def widths() -> list[int]:
        return [max([len(c.name)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    w = widths()
    if width:
        # Drop optional columns (lowest rank first) until the rigid ones fit.
        def rigid() -> int:
            return sum(c.min if c.flex else wi for c, wi in zip(cols, w, strict=True))

        while rigid() + 2 * (len(cols) - 1) > width and any(c.drop for c in cols):
            i = min((c.drop, i) for i, c in enumerate(cols) if c.drop)[1]
            del cols[i]
            for r in rows:
                del r[i]
            w = widths()
        over = sum(w) + 2 * (len(cols) - 1) - width
        for i, c in enumerate(cols):  # then shrink flexible columns, widest first
            if over <= 0:
                break
            if c.flex and w[i] > c.min:
                cut = min(over, w[i] - c.min)
                w[i] -= cut
                over -= cut

    def cell(text: str, i: int) -> str:
        if len(text) > w[i]:
            text = text[: max(0, w[i] - 3)] + "..."
        return text.rjust(w[i]) if cols[i].right else text.ljust(w[i])

    lines = ["  ".join(cell(c.name, i) for i, c in enumerate(cols)).rstrip()]
    lines += ["  ".join(cell(v, i) for i, v in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


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
    """--since as Unix ns (already absolute: parse_time_ns), 0 = unbounded."""
    return int(getattr(args, "since", 0) or 0)


def _until_ns(args: argparse.Namespace) -> int:
    """--until as Unix ns, 0 = now (unbounded); refused when not after --since."""
    until = int(getattr(args, "until", 0) or 0)
    if until and until <= _since_ns(args):
        print(f"zerotrace: --until ({fmt_time(until)}) is not after --since "
              f"({fmt_time(_since_ns(args))})", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return until


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(json_ns(obj), indent=2, sort_keys=True) + "\n")


def _print_table(cols: list[Column], rows: list[list[str]]) -> None:
    sys.stdout.write(render_table(cols, rows, _width()))


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
    for http in (args.http, args.otlp_http):  # HTTP ports: the gRPC port's TLS and tokens
        if not problem and http:
            problem = exposure_problem(http, bool(args.tls_cert), bool(args.token_file),
                                       args.insecure)
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
    for flag, http in (("HTTP", args.http), ("OTLP/HTTP", args.otlp_http)):
        busy = _port_in_use(http) if http else ""
        if busy:  # an explicit --http, likewise (a default's port may be taken: see below)
            print(f"zerotrace: cannot serve {flag} on {http}: {busy}", file=sys.stderr)
            return 1
    from server.storage import factory

    # --store picks the backend from the registry (server/storage/factory.py);
    # --clickhouse HOST:PORT alone still means the clickhouse backend.
    store_name = args.store or ("clickhouse" if args.clickhouse else "chdb")
    store_opts = factory.StoreOptions(data=args.data, address=args.clickhouse)
    missing = factory.missing_package(store_name)
    if missing:  # the agent's image has neither: say how to get the server's part
        print(f"zerotrace: the server's store needs the Python package {missing!r}, not "
              "installed here (pip install 'zerotrace[server]'; the server image has it)",
              file=sys.stderr)
        return 2
    from server.storage.base import StorageError

    try:
        store = factory.open_store(store_name, store_opts)
    except (StorageError, ValueError) as e:
        print(f"zerotrace: cannot open the {store_name} store: {e}", file=sys.stderr)
        return 1
    try:
        srv = ZerotraceServer(
            args.listen,
            store=store,
            retention_s=(args.retention or 0) / 1e9,
            max_bytes=args.max_size or 0,
            metrics_listen=args.metrics,
            tls_cert=args.tls_cert or "",
            tls_key=args.tls_key or "",
            tls_ca=args.tls_ca or "",
            tokens=tokens,
            max_inflight_bytes=args.max_inflight_bytes,
            forward_otlp=args.forward_otlp or "",
            max_future_s=args.max_future / 1e9,
            redact_otlp=not args.no_otlp_redaction,
        )
    except BaseException:
        store.close()
        raise
    try:
        port = srv.start()
    except (OSError, RuntimeError) as e:  # grpcio raises RuntimeError when bind fails
        print(f"zerotrace: cannot listen on {args.listen} (in use, or not an address of "
              f"this host): {e}", file=sys.stderr)
        return 1
    print(
        f"zerotrace server listening on {args.listen.rpartition(':')[0]}:{port} "
        f"{factory.backend(store_name).describe(store_opts)}"
        + (f" metrics={'https' if args.tls_cert else 'http'}://"
           f"{args.metrics.rpartition(':')[0]}:{srv.metrics_port}/metrics"
           if args.metrics else "")
        + f" tls={'mtls' if args.tls_ca else 'on' if args.tls_cert else 'off'}"
        + f" tokens={len(tokens) if tokens is not None else 'off'}",
        flush=True,
    )
    apis = []
    try:
        for queries in (True, False):
            api = _start_http(args, srv.store, tokens, srv, queries=queries)
            if api is not None:
                apis.append(api)
    except OSError as e:  # taken since the check: stop cleanly (chDB dislikes exit())
        print(f"zerotrace: cannot serve HTTP: {e}", file=sys.stderr)
        for api in apis:
            api.stop()
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
    for api in apis:
        api.stop()
    srv.stop()
    return 0


def _store_names() -> list[str]:
    from server.storage import factory

    return factory.names()


def _start_http(args: argparse.Namespace, store: Any, tokens: Any, srv: Any = None,
                queries: bool = True) -> Any:
    """The Tempo/Jaeger HTTP API (server/http/) with OTLP/HTTP's POST /v1/traces
    (`queries`), or OTLP/HTTP's own port (--otlp-http, POST /v1/traces alone); None
    when off or, at the default address only, when the port is taken (a second local
    server still starts)."""
    from server.http import DEFAULT_HTTP, DEFAULT_OTLP_HTTP, HttpApi
    from server.http.otlp_http import OtlpHttpReceiver

    given, default, flag = ((args.http, DEFAULT_HTTP, "--http") if queries else
                            (args.otlp_http, DEFAULT_OTLP_HTTP, "--otlp-http"))
    listen = default if given is None else given
    if not listen or (not queries and srv is None):
        return None
    ctx = None
    if args.tls_cert:  # the same certificate (and client CA) as the gRPC port
        from server.auth import http_tls_context

        ctx = http_tls_context(args.tls_cert, args.tls_key, args.tls_ca or "")
    api = HttpApi(store, listen, tokens=tokens,
                  otlp=OtlpHttpReceiver.for_server(srv) if srv is not None else None,
                  ssl_context=ctx, queries=queries)
    what = "HTTP API (Tempo, Jaeger, OTLP/HTTP)" if queries else "OTLP/HTTP"
    try:
        port = api.start()
    except OSError as e:
        if given is not None:
            raise OSError(f"{flag} {listen}: {e}") from e
        print(f"zerotrace: {what} off: {listen} is taken ({e}); use {flag}", file=sys.stderr)
        return None
    print(f"zerotrace {what} on "
          f"{'https' if ctx else 'http'}://{listen.rpartition(':')[0]}:{port}", flush=True)
    return api


def cmd_services(args: argparse.Namespace) -> int:
    from proto.zerotrace.v1 import query_pb2

    resp = _call(args, "Services", query_pb2.ServicesRequest(
        since_ns=_since_ns(args), until_ns=_until_ns(args)))
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
    cols = [Column("service", flex=True), Column("requests", right=True),
            Column("req/s", right=True), Column("errors", right=True),
            Column("p50", right=True, drop=2), Column("p99", right=True, drop=1)]
    _print_table(cols, [[r["service"], str(r["requests"]), f"{r['rate_per_s']:.2f}",
                         f"{100 * r['error_rate']:.1f}%", fmt_ns(r["p50_ns"]),
                         fmt_ns(r["p99_ns"])] for r in rows])
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    from proto.zerotrace.v1 import query_pb2

    if args.min_duration and args.max_duration and args.max_duration < args.min_duration:
        print("zerotrace: --max-duration is below --min-duration", file=sys.stderr)
        return EXIT_USAGE
    req = query_pb2.SearchTracesRequest(
        service=args.service or "",
        operation=args.operation or "",
        since_ns=_since_ns(args),
        until_ns=_until_ns(args),
        min_duration_ns=args.min_duration or 0,
        max_duration_ns=args.max_duration or 0,
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
    cols = [Column("trace id"), Column("start (UTC)"), Column("duration", right=True),
            Column("root", flex=True, min_width=10), Column("spans", right=True, drop=2),
            Column("errors", right=True, drop=3), Column("services", flex=True, drop=1)]
    _print_table(cols, [[r["trace_id"], fmt_time(r["start_ns"], 3), fmt_ns(r["duration_ns"]),
                         f"{r['root_service']}: {r['root_operation']}", str(r["spans"]),
                         str(r["errors"]), ", ".join(r["services"])] for r in rows])
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


def _hop_where(span) -> str:
    """An N line's place: the pod (namespace/name) or else the netns of the hop's two
    hooks (agent/net/hops.py), `FROM to TO:` when they differ; the interfaces follow
    in the operation."""
    a = span.attributes

    def place(p: str) -> str:
        pod = a.get(f"zerotrace.net.{p}pod")
        if pod:
            ns = a.get(f"zerotrace.net.{p}pod.namespace")
            return f"{ns}/{pod}" if ns else str(pod)
        return str(a.get(f"zerotrace.net.{p}netns") or "?")

    src, dst = place("from."), place("")
    return f"{dst}:" if src == dst else f"{src} to {dst}:"


def cmd_trace(args: argparse.Namespace) -> int:
    spans, join = _fetch_trace(args)
    # A fragment's id resolves to the joined trace's one id (server/query/joined.py).
    args.trace_id = spans[0].trace_id if spans else args.trace_id
    if args.output == "otlp-json":
        # The OTLP model Tempo serves (server/http/otlp_map.py): ids in hex, times in
        # nanosecond strings, as the OTLP/JSON encoding specifies.
        from server.http.otlp_map import to_traces_data, traces_data_json

        sys.stdout.write(json.dumps(traces_data_json(to_traces_data(spans)), indent=2) + "\n")
        return 0
    if args.output == "json":
        _print_json(
            {
                "trace_id": args.trace_id,
                "spans": [s.to_dict() for s in spans],
                "join": {"linked": join.linked, "ambiguous": join.ambiguous},
            }
        )
        return 0
    rows = trace_tree_rows(spans)
    t0 = min(s.start_ns for s in spans)
    total = max(s.end_ns for s in spans) - t0
    head = (f"trace {args.trace_id}  {fmt_time(t0, 6)}  {len(spans)} spans  {fmt_ns(total)}"
            + (f"  joined {join.linked} fragment link(s)" if join.linked else "")
            + (f"  {join.ambiguous} ambiguous key(s) left unlinked" if join.ambiguous else ""))
    labels = []
    by_id = {s.span_id: s for s in spans}
    for r in rows:
        who = r["service"] or "?"
        if r["process"] and r["process"] != r["service"]:
            who += f"/{r['process']}"
        if r["source"] == "N" and r["span_id"] in by_id:
            who = _hop_where(by_id[r["span_id"]])
        st = r["status"] + (f" {r['status_code']}" if r["status_code"] else "")
        label = (f"{r['source']} {r['kind'][:3]} {who} {r['operation']}  {st}  "
                 f"+{fmt_ns(r['offset_ns'])}  {fmt_ns(r['duration_ns'])}  "
                 f"self {fmt_ns(r['self_ns'])}")
        if r["parent_unknown"]:
            label += f"  parent unknown: {r['parent_unknown']}"
        labels.append(label)
    if not sys.stdout.isatty():
        # Plain text for pipes and files: indentation, no box drawing, no colour.
        width = _width()
        out = [head] + ["  " * (r["depth"] + 1) + lab for r, lab in zip(rows, labels, strict=True)]
        if width:
            out = [x if len(x) <= width else x[: max(0, width - 3)] + "..." for x in out]
        sys.stdout.write("\n".join(out) + "\n")
        return 0
    from rich.markup import escape
    from rich.tree import Tree

    root = Tree(escape(head))
    stack: list[Any] = [root]
    colours = {"S": "cyan", "N": "blue", "A": "green"}
    for r, lab in zip(rows, labels, strict=True):
        del stack[r["depth"] + 1 :]
        style = "red" if r["status"] == "error" else colours.get(r["source"], "")
        stack.append(stack[-1].add(escape(lab), style=style))
    _console().print(root)
    return 0


def cmd_flamegraph(args: argparse.Namespace) -> int:
    from server.flamegraph import format_for, formats, render_stacks, render_trace

    fmt = args.output
    if fmt and fmt not in formats():
        # `-o FILE` was this command's file option before `-o` meant a format everywhere:
        # still understood when --out is not given (a file name is no format name).
        if args.out:
            print(f"zerotrace: unknown flame graph format {fmt!r}: use one of "
                  f"{', '.join(formats())}", file=sys.stderr)
            return EXIT_USAGE
        args.out, fmt = fmt, None
    if not args.out:
        print("zerotrace: flamegraph needs --out FILE (.svg, .html, .json, .folded)",
              file=sys.stderr)
        return EXIT_USAGE
    if not fmt:
        try:
            fmt = format_for(args.out)
        except ValueError as e:
            print(f"zerotrace: {e}, or -o FORMAT", file=sys.stderr)
            return EXIT_USAGE
    if args.trace_id:
        spans, _join = _fetch_trace(args)
        text = render_trace(spans, fmt, f"trace {args.trace_id}")
        what = f"{len(spans)} spans"
    else:
        if not args.service:
            print("zerotrace: give a trace id, or --service for an aggregate", file=sys.stderr)
            return EXIT_USAGE
        from proto.zerotrace.v1 import query_pb2

        resp = _call(
            args,
            "FlameGraph",
            query_pb2.FlameGraphRequest(
                service=args.service, since_ns=_since_ns(args), until_ns=_until_ns(args),
                max_traces=args.max_traces
            ),
        )
        stacks = {s.stack: s.value for s in resp.stacks}
        text = render_stacks(stacks, fmt, f"service {args.service}, {resp.traces} traces")
        what = f"{resp.traces} traces, {len(stacks)} stacks"
    _write_file(args.out, text)
    print(f"wrote {args.out} ({fmt}, {what})", file=sys.stderr)
    return 0


def cmd_dependencies(args: argparse.Namespace) -> int:
    from proto.zerotrace.v1 import query_pb2

    resp = _call(args, "Dependencies", query_pb2.DependenciesRequest(
        since_ns=_since_ns(args), until_ns=_until_ns(args)))
    rows = [
        {"parent": d.parent, "child": d.child, "calls": d.call_count, "errors": d.error_count}
        for d in resp.links
    ]
    if args.output == "json":
        _print_json(rows)
        return 0
    _print_table([Column("caller", flex=True), Column("callee", flex=True),
                  Column("calls", right=True), Column("errors", right=True)],
                 [[r["parent"], r["child"], str(r["calls"]), str(r["errors"])] for r in rows])
    return 0


def _write_file(path: str, text: str) -> None:
    """Write `text` to `path` whole (a temporary file renamed over it): a failed
    command leaves no half-written file; an unwritable path is a usage error."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        print(f"zerotrace: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


# -- argparse --------------------------------------------------------------------


def _query_opts(p: argparse.ArgumentParser, output: tuple[str, ...] = ("table", "json")
                ) -> None:
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"server HOST:PORT (default {DEFAULT_SERVER}, env ZEROTRACE_SERVER)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    from proto.credentials import add_client_options

    add_client_options(p)
    if output:
        p.add_argument("-o", "--output", choices=output, default="table",
                       help=f"{' or '.join(output)} (default table)")
        p.add_argument("--out", metavar="FILE", help="write the output to FILE, not stdout")


def _window_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=lambda t: parse_time_ns(t, "--since"), default="1h",
                   metavar="TIME",
                   help="from this time: a duration ago (15m, 2h, 7d; 0 = all time) or "
                   "RFC 3339 (2026-12-03T07:00:00Z); default 1h")
    p.add_argument("--until", type=lambda t: parse_time_ns(t, "--until"), default=0, metavar="TIME",
                   help="up to this time, same forms as --since (default now)")


def _register_server(subparsers: argparse._SubParsersAction) -> None:
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
        "--max-future",
        type=parse_duration_ns,
        default=86_400 * 10**9,
        metavar="DURATION",
        help="refuse spans ending more than this ahead of the server's clock (default 1d)",
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
        "--store",
        choices=_store_names(),
        default=None,
        help="span store backend: chdb (embedded, in --data; the default) or clickhouse "
        "(a server at --clickhouse)",
    )
    p.add_argument(
        "--clickhouse",
        default="",
        metavar="HOST:PORT",
        help="ClickHouse HTTP endpoint of --store clickhouse (default 127.0.0.1:8123; "
        "given alone it selects that store)",
    )
    p.add_argument(
        "--no-otlp-redaction",
        action="store_true",
        help="store OTLP spans as the SDKs sent them (default: secrets in URL queries, "
        "SQL literals, tokens and command lines masked with the agent's rules)",
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
    p.add_argument(
        "--otlp-http",
        default=None,
        metavar="HOST:PORT",
        help="OTLP/HTTP receiver, POST /v1/traces, on the SDKs' default port (default "
        "127.0.0.1:4318; '' = off); also served on the --http port",
    )
    p.add_argument(
        "--forward-otlp",
        metavar="HOST:PORT",
        help="also send every stored span to this OTLP/gRPC endpoint (an OpenTelemetry "
        "Collector; https://HOST:PORT for TLS), with retry; drops are counted in "
        "zerotrace_server_forward_dropped_spans_total",
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the server and query sub-commands to the `zerotrace` parser."""
    _register_server(subparsers)

    p = subparsers.add_parser("services", help="services with request rate, errors, p50/p99")
    _query_opts(p)
    _window_opts(p)
    p.set_defaults(func=cmd_services)

    p = subparsers.add_parser("traces", help="search traces, newest first")
    _query_opts(p)
    p.add_argument("--service", help="spans of this service")
    p.add_argument("--operation", help="spans with this operation, e.g. 'GET /users'")
    _window_opts(p)
    p.add_argument(
        "--min-duration",
        type=lambda t: parse_duration_ns(t, "ms"),
        help="traces with a span at least this long (100ms, 1.5s; bare number = ms)",
    )
    p.add_argument(
        "--max-duration",
        type=lambda t: parse_duration_ns(t, "ms"),
        help="traces with a span at most this long (same forms)",
    )
    p.add_argument("--status", choices=("ok", "error", "unset"), help="span status")
    p.add_argument("--tag", type=_tag, action="append", help="key=value (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="at most N traces (default 20)")
    p.set_defaults(func=cmd_traces)

    p = subparsers.add_parser("trace", help="one trace as a tree")
    _query_opts(p, ("table", "json", "otlp-json"))
    p.add_argument("trace_id", type=parse_trace_id, help="16 or 32 hex digits")
    p.add_argument("--no-join", action="store_true", help="skip the cross-node join")
    p.set_defaults(func=cmd_trace)

    p = subparsers.add_parser("flamegraph", help="flame graph of a trace, or of a service")
    _query_opts(p, ())
    p.add_argument("trace_id", nargs="?", type=parse_trace_id)
    p.add_argument("--out", metavar="FILE",
                   help="output file (required): .svg, .html (interactive), "
                   ".json (speedscope), .folded")
    p.add_argument("-o", "--output", metavar="FORMAT",
                   help="svg, html, speedscope, folded or another registered format "
                   "(default: by --out's extension)")
    p.add_argument("--service", help="aggregate over this service's recent traces")
    _window_opts(p)
    p.add_argument("--max-traces", type=int, default=1000)
    p.add_argument("--no-join", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_flamegraph, writes_file=True)

    p = subparsers.add_parser("dependencies", help="service call graph")
    _query_opts(p)
    _window_opts(p)
    p.set_defaults(func=cmd_dependencies)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`zerotrace: ...`), exit 2, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        print(f"zerotrace: {self.prog.removeprefix('zerotrace ')}: {message} (see --help)",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: `--out FILE` gets what stdout would have (written whole,
    only on success); unexpected failures are one line, exit 1 (the traceback with
    ZEROTRACE_DEBUG=1)."""
    out = getattr(args, "out", None)
    try:
        if out and not getattr(args, "writes_file", False):
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = int(args.func(args) or 0)
            if rc == 0:
                _write_file(out, buf.getvalue())
            return rc
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("zerotrace: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, RuntimeError, ValueError) as e:
        if os.environ.get("ZEROTRACE_DEBUG") or getattr(args, "verbose", False):
            raise
        print(f"zerotrace: {type(e).__name__}: {e} (ZEROTRACE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="zerotrace", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
