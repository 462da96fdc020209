"""Route folding: one low-cardinality name for the many paths of one route.

`GET /order/n3fa9c01?x=1` -> `GET /order/{id}`.  A path segment that is all digits,
or 6+ characters of id-like text holding a digit (hex ids, UUIDs, slugs with
numbers), becomes `{id}`; the query string goes.  Used for the metric label
`http.route` (agent/metrics.py) and for HTTP span names at export (agent/export/
batcher.py), as the OpenTelemetry HTTP conventions ask: a span name is
`{method} {route}`, low-cardinality, while `url.path` keeps the real path.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

_ID_SEGMENT = re.compile(r"/(?=[^/]*\d)[A-Za-z0-9_\-.:]{6,}|/\d+")
_HTTP_NAME = re.compile(r"^([A-Z]{3,10}) (/\S*)$")  # "GET /path?query", nothing else
HTTP_PROTOCOLS = ("http", "http2")
MAX_ROUTE = 120


def route(path: str) -> str:
    """A path's route: ids folded to `{id}`, no query, at most 120 characters."""
    return _ID_SEGMENT.sub("/{id}", path.split("?", 1)[0])[:MAX_ROUTE] or "/"


def normalise_operation(op: str) -> str:
    """`GET /order/n3fa9c01` -> `GET /order/{id}`; SQL and commands pass (cut to 80)."""
    if " /" in op:
        verb, _, path = op.partition(" ")
        path = path.split("?", 1)[0]
        return f"{verb} {_ID_SEGMENT.sub('/{id}', path)}"
    return op[:80]


def fold_span(span: Any) -> Any:
    """`span` with an HTTP name folded (`GET /order/{id}`) and the real path kept in
    `url.path` (set from the name when the parser gave none); a copy when changed,
    else `span` itself.  gRPC (`/pkg.Service/Method`), SQL and others pass."""
    if span.protocol not in HTTP_PROTOCOLS:
        return span
    m = _HTTP_NAME.match(span.operation)
    if m is None:
        return span
    verb, target = m.groups()
    name = f"{verb} {route(target)}"
    if name == span.operation:
        return span
    attrs = span.attributes
    if "url.path" not in attrs:
        attrs = {**attrs, "url.path": target.split("?", 1)[0]}
    return replace(span, operation=name, attributes=attrs)


def fold_spans(batch: list) -> list:
    """`batch` with every HTTP span name folded (changed spans are copies: others may
    hold the originals); `batch` itself when nothing changed."""
    out = [fold_span(s) for s in batch]
    return batch if all(a is b for a, b in zip(out, batch, strict=True)) else out
