"""The server's HTTP port: Tempo and Jaeger query APIs, so Grafana needs no plugin.

stdlib `ThreadingHTTPServer` (one thread per connection; queries hold the store's
lock anyway, so an async framework would buy nothing) and a small regex router.
Routes: Tempo's API at `/api/...` (and `/tempo/api/...`), Jaeger's at `/jaeger/api/...`
and, where the paths do not collide with Tempo's, at `/api/...` too.  `/api/traces/<id>`
is Tempo's at the root: point Grafana's Jaeger data source at `http://HOST:PORT/jaeger`.
With an OTLP receiver (`otlp=OtlpHttpReceiver.for_server(srv)`), `POST /v1/traces`
takes OTLP/HTTP exports (server/http/otlp_http.py), with the `ingest` role when
tokens are on.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import grpc

from server.storage.base import SpanStore, StorageError

if TYPE_CHECKING:
    from server.auth import TokenTable
    from server.http.otlp_http import OtlpHttpReceiver

log = logging.getLogger(__name__)

DEFAULT_HTTP = "127.0.0.1:3200"  # Tempo's HTTP port: Grafana's default for Tempo
# OTLP/HTTP's own port, the SDKs' and the Collector's default (OTEL_EXPORTER_OTLP_ENDPOINT)
DEFAULT_OTLP_HTTP = "127.0.0.1:4318"


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
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode())


Handler = Callable[["HttpApi", Request], Response]


class HttpApi:
    """The routes over one store; `start()` serves them in background threads."""

    def __init__(self, store: SpanStore, listen: str = DEFAULT_HTTP,
                 tokens: TokenTable | None = None,
                 otlp: OtlpHttpReceiver | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 queries: bool = True) -> None:
        """`queries=False`: OTLP/HTTP's POST /v1/traces alone (the port SDKs export to
        by default), no Tempo, Jaeger or flame-graph route."""
        from server.http import flamegraph, jaeger, tempo

        self.store = store
        self.listen = listen
        # With --token-file, every request needs a `read` token, as on the gRPC port
        # (Grafana: the data source's Authorization header).
        self.tokens = tokens
        self.otlp = otlp  # POST /v1/traces; None: answered 404
        self.ssl_context = ssl_context  # with --tls-cert: HTTPS only (server.auth)
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self.routes: list[tuple[re.Pattern[str], Handler, str]] = []
        if not queries:
            return
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

    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               read_body: Callable[[int], bytes] | None = None,
               peer: str = "") -> Response:
        """Route one request; errors become 4xx/5xx answers in the API's own shape.
        `read_body(limit)` reads a POST's body (after its caller is authorized);
        `peer` is the caller's address as gRPC writes it ("ipv4:HOST:PORT")."""
        parsed = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parsed.path)
        if path.rstrip("/") in ("/v1/traces", "/otlp/v1/traces"):
            return self._otlp(method, headers, read_body, peer)
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

    def _otlp(self, method: str, headers: dict[str, str],
              read_body: Callable[[int], bytes] | None, peer: str) -> Response:
        """OTLP/HTTP export: errors answered as OTLP asks (google.rpc.Status)."""
        from server.auth import authorize
        from server.http.otlp_http import JSON, PROTOBUF, OtlpHttpError, error_body, media_type
        from server.ingest.admission import sender_of

        ctype = JSON if media_type(headers.get("content-type", "")) == JSON else PROTOBUF
        try:
            if method != "POST":
                raise OtlpHttpError(405, grpc.StatusCode.UNIMPLEMENTED,
                                    f"method {method} not allowed: POST spans here")
            if self.otlp is None:
                raise OtlpHttpError(404, grpc.StatusCode.UNIMPLEMENTED,
                                    "no OTLP receiver on this port")
            sender = sender_of("", peer)
            if self.tokens is not None:
                d = authorize(self.tokens, headers.get("authorization"), "ingest",
                              "POST /v1/traces")
                if not d.allowed:
                    raise OtlpHttpError(d.http_status, d.code or grpc.StatusCode.UNKNOWN,
                                        d.message)
                sender = d.identity
            if read_body is None:
                raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT, "no body")
            body, rtype = self.otlp.export(headers, read_body, sender)
            return Response(200, body, rtype)
        except OtlpHttpError as e:
            extra = {}
            if e.status in (429, 503):
                from server.http.otlp_http import RETRY_AFTER_S

                extra["Retry-After"] = str(RETRY_AFTER_S)
            elif e.status == 401:
                extra["WWW-Authenticate"] = "Bearer"
            elif e.status == 405:
                extra["Allow"] = "POST"
            return Response(e.status, error_body(e, ctype), ctype, extra)
        except Exception:  # noqa: BLE001 - a bug answers 500, the server keeps serving
            log.exception("OTLP/HTTP export failed")
            err = OtlpHttpError(500, grpc.StatusCode.INTERNAL,
                                "internal error (see the server's log)")
            return Response(500, error_body(err, ctype), ctype)

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
            # TCP_NODELAY: the headers and the body leave in two writes, and with Nagle
            # the body waited for the client's delayed ACK of the headers: +40 ms on
            # every keep-alive answer (trace by id on 10 M spans: p50 80 ms of which
            # 37 ms the server's CPU)
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                from server.http.otlp_http import read_chunked, read_sized

                headers = {k.lower(): v for k, v in self.headers.items()}
                read = [False]  # whether the body was read whole

                def read_body(limit: int) -> bytes:
                    if "chunked" in headers.get("transfer-encoding", "").lower():
                        data = read_chunked(self.rfile, limit)
                    else:
                        data = read_sized(self.rfile, headers.get("content-length"), limit)
                    read[0] = True
                    return data

                host, port = self.client_address[:2]
                peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
                resp = api.handle(self.command, self.path, headers, read_body, peer)
                # A body left unread would be taken for the next request: close instead.
                has_body = ("content-length" in headers and headers["content-length"] != "0"
                            or "transfer-encoding" in headers)
                if has_body and not read[0]:
                    self.close_connection = True
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            # http.server's names (others: 501)
            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http %s " + format, self.client_address[0], *args)

        self._httpd = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port or 0)), _H)
        self._httpd.daemon_threads = True
        if self.ssl_context is not None:
            from server.auth import serve_tls

            serve_tls(self._httpd, self.ssl_context)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="zt-http", daemon=True).start()
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
