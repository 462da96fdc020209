"""Minimal HTTP/1.1 peers for the hop tests, each writing a message in one write.

    python http_peer.py server ADDR PORT
    python http_peer.py client ADDR PORT N

The server answers every request on a kept-alive connection; the client sends N GETs
on one connection, one after the other, and prints one line per answer."""

from __future__ import annotations

import socket
import sys


def read_message(s: socket.socket, buf: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return None
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
            while len(buf) < n:
                chunk = s.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            del buf[:n]
    return head


def server(addr: str, port: int) -> None:
    ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        while read_message(c, buf) is not None:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.close()


def client(addr: str, port: int, n: int) -> None:
    s = socket.create_connection((addr, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    for i in range(n):
        s.sendall(f"GET /hop/{i} HTTP/1.1\r\nHost: server\r\n\r\n".encode())
        if read_message(s, buf) is None:
            raise SystemExit(f"connection closed after {i} answers")
        print(i, flush=True)
    s.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
