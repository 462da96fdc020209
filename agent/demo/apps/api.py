"""api: the demo's Python service (stdlib ThreadingHTTPServer + psycopg, no tracing code).

GET /order/<nonce>: with --licence, first checks a licence on the licence server's line
protocol (which no zerotrace parser knows: a round trip that makes no span); resolves
inventory and postgres names through DNS (getaddrinfo on every request), inserts and
selects the nonce in PostgreSQL (extended protocol: the nonce is a literal in the SQL
text, the quantity a bound parameter), then calls inventory with `GET /stock/<nonce>` on
a new HTTP connection, and answers JSON.  A thread per request; PostgreSQL and licence
connections come from small pools shared by threads.
Run as a script: `python api.py --listen ADDR:PORT --postgres NAME:PORT --inventory NAME:PORT
[--licence NAME:PORT]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
from psycopg import sql

NONCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PgPool:
    """Idle PostgreSQL connections keyed by resolved address (autocommit)."""

    def __init__(self, port: int, size: int = 8) -> None:
        self.port = port
        self.size = size
        self.idle: dict[str, queue.SimpleQueue] = {}

    def get(self, addr: str) -> psycopg.Connection:
        q = self.idle.setdefault(addr, queue.SimpleQueue())
        try:
            return q.get_nowait()
        except queue.Empty:
            return psycopg.connect(host=addr, port=self.port, user="postgres",
                                   dbname="postgres", autocommit=True, connect_timeout=5)

    def put(self, addr: str, conn: psycopg.Connection) -> None:
        q = self.idle[addr]
        if conn.closed or q.qsize() >= self.size:
            conn.close()
        else:
            q.put(conn)


class LicencePool:
    """Idle connections to the licence server, kept open across requests."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.idle: queue.SimpleQueue = queue.SimpleQueue()

    def check(self, nonce: str) -> None:
        """One `LIC? demo <nonce>` round trip; raises unless granted."""
        try:
            sock, rfile = self.idle.get_nowait()
        except queue.Empty:
            sock = socket.create_connection((resolve(self.name, self.port), self.port),
                                            timeout=5)
            rfile = sock.makefile("rb")
        try:
            sock.sendall(f"LIC? demo {nonce}\n".encode())
            answer = rfile.readline()
            if not answer.startswith(b"LIC! granted"):
                raise RuntimeError(f"licence: {answer!r}")
        except BaseException:
            sock.close()
            raise
        self.idle.put((sock, rfile))


def resolve(name: str, port: int) -> str:
    """One real DNS look-up (A record) per call."""
    return socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def reply(self, code: int, body: dict) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/healthz":
            self.reply(200, {"ok": True})
            return
        if not self.path.startswith("/order/"):
            self.reply(404, {"error": "not found"})
            return
        nonce = self.path[len("/order/"):]
        if not NONCE.match(nonce):
            self.reply(400, {"error": "bad nonce"})
            return
        try:
            self.reply(200, self.server.order(nonce))
        except Exception as e:  # noqa: BLE001 - a demo service answers errors as 502
            self.reply(502, {"error": f"{type(e).__name__}: {e}"})


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, listen: tuple[str, int], pg: tuple[str, int],
                 inventory: tuple[str, int], licence: tuple[str, int] | None = None) -> None:
        super().__init__(listen, Handler)
        self.pg_name, pg_port = pg
        self.inv_name, self.inv_port = inventory
        self.pool = PgPool(pg_port)
        self.licence = LicencePool(*licence) if licence else None

    def order(self, nonce: str) -> dict:
        if self.licence is not None:
            self.licence.check(nonce)
        inv_addr = resolve(self.inv_name, self.inv_port)
        pg_addr = resolve(self.pg_name, self.pool.port)
        conn = self.pool.get(pg_addr)
        try:
            lit = sql.Literal(nonce)
            conn.execute(sql.SQL("INSERT INTO orders (note, qty) VALUES ({}, %s)").format(lit),
                         (1,))
            row = conn.execute(
                sql.SQL("SELECT count(*), sum(qty) FROM orders WHERE note = {} AND qty > %s")
                .format(lit), (0,)).fetchone()
        except BaseException:
            conn.close()
            raise
        finally:
            self.pool.put(pg_addr, conn)
        c = http.client.HTTPConnection(inv_addr, self.inv_port, timeout=5)
        try:
            c.request("GET", f"/stock/{nonce}", headers={"Host": self.inv_name})
            r = c.getresponse()
            stock = json.loads(r.read()) if r.status == 200 else None
            if r.status != 200:
                raise RuntimeError(f"inventory answered {r.status}")
        finally:
            c.close()
        return {"nonce": nonce, "orders": row[0], "stock": stock["stock"]}


def hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=hostport, required=True)
    ap.add_argument("--postgres", type=hostport, required=True)
    ap.add_argument("--inventory", type=hostport, required=True)
    ap.add_argument("--licence", type=hostport, help="licence server NAME:PORT")
    a = ap.parse_args(argv)
    srv = ApiServer(a.listen, a.postgres, a.inventory, a.licence)
    print(f"api listening on {a.listen[0]}:{a.listen[1]}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
