"""The server's HTTP port: Tempo and Jaeger query APIs, so Grafana needs no plugin.

stdlib `ThreadingHTTPServer` (one thread per connection; queries hold the store's
lock anyway, so an async framework would buy nothing) and a small regex router.
Routes: Tempo's API at `/api/...` (and `/tempo/api/...`), Jaeger's at `/jaeger/api/...`
and, where the paths do not collide with Tempo's, at `/api/...` too.  `/api/traces/<id>`
is Tempo's at the root: point Grafana's Jaeger data source at `http://HOST:PORT/jaeger`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from server.storage.base import SpanStore, StorageError

if TYPE_CHECKING:
    from server.auth import TokenTable

log = logging.getLogger(__name__)

DEFAULT_HTTP = "127.0.0.1:3200"  # Tempo's HTTP port: Grafana's default for Tempo


class HttpError(Exception):
    """Answered as `status` with a text (Tempo) or JSON (Jaeger) body naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    args: dict[str, str] = field(default_factory=dict)  # named groups of the route

    def get(self, name: str, default: str = "") -> str:
        v = self.query.get(name)
        return v[-1] if v else default

    def all(self, name: str) -> list[str]:
        return self.query.get(name, [])

    def accepts_protobuf(self) -> bool:
        return "application/protobuf" in self.headers.get("accept", "").lower()


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode())


Handler = Callable[["HttpApi", Request], Response]


class HttpApi:
    """The routes over one store; `start()` serves them in background threads."""

    def __init__(self, store: SpanStore, listen: str = DEFAULT_HTTP,
                 tokens: TokenTable | None = None) -> None:
        from server.http import flamegraph, jaeger, tempo

        self.store = store
        self.listen = listen
        # With --token-file, every request needs a `read` token, as on the gRPC port
        # (Grafana: the data source's Authorization header).
        self.tokens = tokens
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self.routes: list[tuple[re.Pattern[str], Handler, str]] = []
        for prefix in ("", "/tempo"):
            for pattern, handler in tempo.ROUTES:
                self._add(prefix + pattern, handler, "tempo")
        for pattern, handler in jaeger.ROUTES:
            self._add("/jaeger" + pattern, handler, "jaeger")
        for pattern, handler in jaeger.ROUTES:
            if pattern != r"/api/traces/(?P<trace_id>[^/]+)":
                self._add(pattern, handler, "jaeger")
        for pattern, handler in flamegraph.ROUTES:
            self._add(pattern, handler, "tempo")

    def _add(self, pattern: str, handler: Handler, api: str) -> None:
        self.routes.append((re.compile(pattern + r"/?$"), handler, api))

    def handle(self, method: str, raw_path: str, headers: dict[str, str]) -> Response:
        """Route one request; errors become 4xx/5xx answers in the API's own shape."""
        parsed = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        api = "jaeger" if path.startswith("/jaeger") else "tempo"
        try:
            if method not in ("GET", "HEAD"):
                raise HttpError(405, f"method {method} not allowed")
            for rx, handler, route_api in self.routes:
                m = rx.match(path)
                if m:
                    api = route_api  # errors answer in this API's shape
                    if self.tokens is not None:
                        self._authorize(headers.get("authorization", ""))
                    return handler(self, Request(path, query, headers, m.groupdict()))
            if self.tokens is not None:
                self._authorize(headers.get("authorization", ""))
            raise HttpError(404, f"no such endpoint: {path}")
        except HttpError as e:
            return self.error(api, e.status, e.message)
        except StorageError as e:
            log.warning("storage query failed: %s", e)
            return self.error(api, 503, f"storage query failed: {str(e)[:300]}")
        except Exception:  # noqa: BLE001 - a bug answers 500, the server keeps serving
            log.exception("HTTP %s %s failed", method, path)
            return self.error(api, 500, "internal error (see the server's log)")

    def _authorize(self, header: str) -> None:
        from server.auth import BAD_TOKEN, NO_TOKEN

        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, NO_TOKEN)
        entries = self.tokens.lookup(token.strip()) if self.tokens is not None else []
        if not entries:
            raise HttpError(401, BAD_TOKEN)
        if not any(e.role == "read" for e in entries):
            raise HttpError(403, "permission denied: this token may not read traces")

    @staticmethod
    def error(api: str, status: int, message: str) -> Response:
        if api == "jaeger":
            from server.http.otlp_map import envelope

            return json_response(envelope(None, 0, [{"code": status, "msg": message}]), status)
        # Tempo answers errors as plain text; Grafana shows the text.
        return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    # -- serving ---------------------------------------------------------------

    def start(self) -> int:
        host, _, port = self.listen.rpartition(":")
        api = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "zerotrace"

            def _serve(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                resp = api.handle(self.command, self.path, headers)
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            do_GET = do_HEAD = _serve  # noqa: N815 - http.server's names (others: 501)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http %s " + format, self.client_address[0], *args)

        self._httpd = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port or 0)), _H)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="zt-http", daemon=True).start()
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
