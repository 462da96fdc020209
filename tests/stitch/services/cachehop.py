"""A Python ThreadingHTTPServer service that makes a round trip on a protocol before
its Redis calls: GET /mc/<nonce> first sets and gets a key holding the nonce in
memcached (text protocol), GET /lic/<nonce> first asks the licence server (a line
protocol no parser knows); then both SET and GET `k:<nonce>` in Redis.

Connections to memcached, the licence server and Redis are persistent, shared by the
request threads through small pools (as client libraries do), and go back to their
pool only after the response is written.  No tracing code.

    python cachehop.py PORT MEMCACHED_PORT LICENCE_PORT REDIS_PORT
"""

from __future__ import annotations

import queue
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Pool:
    """Idle persistent connections to one server (host 127.0.0.1)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: queue.SimpleQueue = queue.SimpleQueue()

    def get(self) -> tuple[socket.socket, object]:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            return s, s.makefile("rb")

    def put(self, conn: tuple[socket.socket, object]) -> None:
        self.idle.put(conn)


def memcached(conn, nonce: str) -> None:
    s, f = conn
    key, value = f"zt:{nonce}", nonce.encode()
    s.sendall(f"set {key} 0 60 {len(value)}\r\n".encode() + value + b"\r\n")
    if f.readline() != b"STORED\r\n":
        raise RuntimeError("memcached set failed")
    s.sendall(f"get {key}\r\n".encode())
    head = f.readline()
    if not head.startswith(b"VALUE "):
        raise RuntimeError(f"memcached get: {head!r}")
    f.read(int(head.split()[3]) + 2)
    if f.readline() != b"END\r\n":
        raise RuntimeError("memcached get: no END")


def licence(conn, nonce: str) -> None:
    s, f = conn
    s.sendall(f"LIC? {nonce}\n".encode())
    if not f.readline().startswith(b"LIC! granted"):
        raise RuntimeError("licence refused")


def resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis(conn, nonce: str) -> bytes:
    s, f = conn
    s.sendall(resp("SET", f"k:{nonce}", nonce))
    if f.readline() != b"+OK\r\n":
        raise RuntimeError("redis SET failed")
    s.sendall(resp("GET", f"k:{nonce}"))
    n = int(f.readline()[1:])
    return f.read(n + 2)[:n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Service

    def do_GET(self) -> None:  # noqa: N802
        kind, _, nonce = self.path.strip("/").partition("/")
        first = {"mc": (self.server.mc, memcached), "lic": (self.server.lic, licence)}.get(kind)
        if first is None:
            self.send_error(404)
            return
        pool, call = first
        held = [(pool, pool.get()), (self.server.redis, self.server.redis.get())]
        try:
            call(held[0][1], nonce)
            body = b"ok " + redis(held[1][1], nonce)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        finally:
            for p, c in held:
                p.put(c)

    def log_message(self, *a: object) -> None:
        pass


class Service(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, port: int, mc: int, lic: int, redis_port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.mc, self.lic, self.redis = Pool(mc), Pool(lic), Pool(redis_port)


srv = Service(*(int(a) for a in sys.argv[1:5]))
print("ready", flush=True)
srv.serve_forever()
