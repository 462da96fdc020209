"""A loopback HTTP server that replays recorded Kubernetes API responses.

Each route (pod list, pod watch, ReplicaSet get, Node get) has a queue of scripted
responses; once a queue is empty its last fallback answers (a list keeps returning
the last list, a watch stays open without events, like a quiet cluster).  Every
request is logged so tests can check the query the agent sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> dict:
    return json.loads(fixture(name))


@dataclass
class Reply:
    """One scripted answer: a status and body, or (watch) a stream of lines."""

    status: int = 200
    body: bytes = b""
    lines: list[bytes] = field(default_factory=list)
    gate: threading.Event | None = None  # the stream waits for it before sending
    hold: bool = False  # keep the stream open after the lines (until stop)
    delay: float = 0.0  # before the first byte (a slow API server)
    content_type: str = "application/json"


def watch_reply(name: str, **kw) -> Reply:
    return Reply(lines=[ln + b"\n" for ln in fixture(name).splitlines() if ln.strip()], **kw)


class ReplayApi:
    """The fake API server; `start()` binds 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self.routes: dict[str, deque[Reply]] = {
            k: deque() for k in ("list", "watch", "replicaset", "node")
        }
        self.fallback = {
            "list": Reply(body=fixture("podlist.json")),
            "watch": Reply(hold=True),
            "replicaset": Reply(
                status=404,
                body=b'{"kind":"Status","apiVersion":"v1","status":"Failure",'
                b'"reason":"NotFound","code":404}',
            ),
            "node": Reply(body=fixture("node.json")),
        }
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, route: str, *replies: Reply) -> None:
        self.routes[route].extend(replies)

    def count(self, route: str) -> int:
        return sum(1 for r, _ in self.requests if r == route)

    def queries(self, route: str) -> list[dict[str, str]]:
        return [q for r, q in self.requests if r == route]

    def start(self) -> ReplayApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                if url.path == "/api/v1/pods":
                    route = "watch" if query.get("watch") in ("true", "1") else "list"
                elif parts[:3] == ["apis", "apps", "v1"] and "replicasets" in parts:
                    route = "replicaset"
                elif parts[:3] == ["api", "v1", "nodes"]:
                    route = "node"
                else:
                    self._send(Reply(status=404, body=b'{"kind":"Status","code":404}'))
                    return
                api.requests.append((route, query))
                queue = api.routes[route]
                reply = queue.popleft() if queue else api.fallback[route]
                self._send(reply)

            def _send(self, r: Reply) -> None:
                if r.delay:
                    api._stop.wait(r.delay)
                if not r.lines and not r.hold and r.gate is None:
                    self.send_response(r.status)
                    self.send_header("Content-Type", r.content_type)
                    self.send_header("Content-Length", str(len(r.body)))
                    self.end_headers()
                    self.wfile.write(r.body)
                    return
                self.send_response(r.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                if r.gate is not None:
                    while not r.gate.wait(0.05):
                        if api._stop.is_set():
                            return
                try:
                    for line in r.lines:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    while r.hold and not api._stop.wait(0.05):
                        pass
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass  # the agent hung up (close, abort): nothing to tell it
                self.close_connection = True

        self._stop.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (new connections are refused) and end open streams."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)


def wait_until(cond, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
