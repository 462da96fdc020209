"""`/api/flamegraph/<trace id>`: the server's own flame graphs over HTTP.

`format=json` (default; speedscope's file format, opens in speedscope.app),
`svg`, `html` (interactive, self-contained), `folded`, or any other format registered
in `server/flamegraph/` (its content type comes with it).  The Tempo trace view
names this URL on the root span (`zerotrace.flamegraph.url`).
`/api/flamegraph?service=S&since=1h` aggregates a service's recent traces.
"""

from __future__ import annotations

import time

from server.flamegraph import render_stacks, render_trace
from server.flamegraph.registry import RENDERERS
from server.flamegraph.stacks import fold
from server.http.app import HttpApi, HttpError, Request, Response
from server.http.params import go_duration_ns, int_param
from server.http.tempo import parse_trace_id
from server.join import join_trace


def _format(req: Request) -> str:
    fmt = (req.get("format") or "json").lower()
    fmt = "speedscope" if fmt == "json" else fmt
    if fmt not in RENDERERS:
        names = ", ".join("json" if n == "speedscope" else n for n in RENDERERS)
        raise HttpError(400, f"format {fmt!r} is not supported ({names})")
    return fmt


def trace_flamegraph(api: HttpApi, req: Request) -> Response:
    fmt = _format(req)
    tid = parse_trace_id(req.args["trace_id"])
    spans = join_trace(api.store, tid).spans
    if not spans:
        raise HttpError(404, f"trace not found: {tid}")
    text = render_trace(spans, fmt, f"trace {tid}")
    return Response(200, text.encode(), RENDERERS[fmt].content_type)


def service_flamegraph(api: HttpApi, req: Request) -> Response:
    fmt = _format(req)
    svc = req.get("service")
    if not svc:
        raise HttpError(400, "give a trace id (/api/flamegraph/<id>) or service=")
    since = time.time_ns() - go_duration_ns(req.get("since") or "1h", "since")
    spans = api.store.spans_for_service(
        svc, since, 0, max(1, min(int_param(req.get("maxTraces"), "maxTraces", 1000), 10_000)))
    if not spans:
        raise HttpError(404, f"no spans of service {svc!r} in that window")
    traces = len({s.trace_id for s in spans})
    text = render_stacks(fold(spans), fmt, f"service {svc}, {traces} traces")
    return Response(200, text.encode(), RENDERERS[fmt].content_type)


ROUTES = [
    (r"/api/flamegraph/(?P<trace_id>[^/]+)", trace_flamegraph),
    (r"/api/flamegraph", service_flamegraph),
]
