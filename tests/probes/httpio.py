"""A small HTTP/1.1 server and client over plain sockets, for the kernel tests of record
size and sampling (run in network namespaces, as real processes).

    httpio.py server ADDR PORT
    httpio.py client ADDR PORT PLAN_JSON

The server answers GET /len/N (a body of N bytes with Content-Length, written in 64 KiB
writes `pace` ms apart when the query says ?pace=MS), GET /chunked/K (K chunks of 200
bytes, Transfer-Encoding: chunked, one write each, `pace` ms apart too) and anything
else with 100 bytes; keep-alive, one thread per connection.  The client runs a plan, a
list of connections, each a list of steps: a path (one request, its whole response
read), or a list of paths (written in one write: pipelined, then every response read).
It prints one JSON line: requests sent and responses read."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

CHUNK = 64 * 1024


def _head(code: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {code}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(conn: socket.socket, path: str) -> None:
    base, _, query = path.partition("?")
    pace = 0.0
    if query.startswith("pace="):
        pace = int(query[5:]) / 1000
    parts = base.strip("/").split("/")
    if parts[0] == "len":
        n = int(parts[1])
        conn.sendall(_head("200 OK", {"Content-Length": str(n)}))
        sent = 0
        while sent < n:
            k = min(CHUNK, n - sent)
            conn.sendall(b"b" * k)
            sent += k
            if pace:
                time.sleep(pace)
    elif parts[0] == "chunked":
        conn.sendall(_head("200 OK", {"Transfer-Encoding": "chunked"}))
        for _ in range(int(parts[1])):
            conn.sendall(b"%x\r\n" % 200 + b"c" * 200 + b"\r\n")
            if pace:
                time.sleep(pace)
        conn.sendall(b"0\r\n\r\n")
    else:
        conn.sendall(_head("200 OK", {"Content-Length": "100"}) + b"s" * 100)


def _serve(conn: socket.socket) -> None:
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split()[1].decode()
            _answer(conn, path)


def server(addr: str, port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=_serve, args=(c,), daemon=True).start()


def _read_response(f) -> None:
    status = f.readline()
    if not status:
        raise ConnectionError("closed")
    length, chunked = 0, False
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "transfer-encoding" and "chunked" in v:
            chunked = True
    if chunked:
        while True:
            size = int(f.readline().strip(), 16)
            f.read(size + 2)
            if size == 0:
                break
    else:
        f.read(length)


def client(addr: str, port: int, plan: list) -> None:
    sent = read = 0
    for steps in plan:
        with socket.create_connection((addr, port)) as s:
            f = s.makefile("rb")
            for step in steps:
                paths = step if isinstance(step, list) else [step]
                s.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                                   for p in paths))
                sent += len(paths)
                for _ in paths:
                    _read_response(f)
                    read += 1
    print(json.dumps({"sent": sent, "read": read}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
