"""Small clients used for health checks and direct checks: DNS, HTTP, RESP, PostgreSQL,
the licence line protocol.

They take addresses, never names, and are meant to run inside a pod's namespace
(`netns.run_in`).  Each raises on failure, with a message saying what answered what.
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
from typing import Any


def dns_query(server: str, name: str, tcp: bool = False, timeout: float = 2.0) -> list[str]:
    """IPv4 addresses of `name` from `server` (A query, UDP or TCP)."""
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    if tcp:
        with socket.create_connection((server, 53), timeout=timeout) as s:
            s.sendall(struct.pack(">H", len(q)) + q)
            data = _recv_exact(s, struct.unpack(">H", _recv_exact(s, 2))[0])
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(q, (server, 53))
            data = s.recv(4096)
    rid, flags, _qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid or flags & 0x000F:
        raise RuntimeError(f"DNS {name}: rcode {flags & 0xF}")
    i = 12
    while data[i]:
        i += data[i] + 1
    i += 5
    out = []
    for _ in range(an):
        if data[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while data[i]:
                i += data[i] + 1
            i += 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[i:i + 4]))
        i += rdlen
    return out


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed early")
        buf += chunk
    return buf


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def redis_command(host: str, *args: str, port: int = 6379, timeout: float = 2.0) -> Any:
    """One RESP command; returns str / int / None (errors raise)."""
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(cmd.encode())
        f = s.makefile("rb")
        line = f.readline().rstrip(b"\r\n")
        t, rest = line[:1], line[1:].decode()
        if t == b"+":
            return rest
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:n].decode()
        raise RuntimeError(f"redis {args[0]}: {line.decode(errors='replace')}")


def pg_query(host: str, query: str, params: tuple = (), port: int = 5432) -> list[tuple]:
    import psycopg

    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                         connect_timeout=3, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def licence_check(host: str, port: int, key: str = "healthz", timeout: float = 2.0) -> str:
    """One round trip on the demo licence server's line protocol; its answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"LIC? demo {key}\n".encode())
        answer = s.makefile("rb").readline().decode().strip()
    if not answer.startswith("LIC! granted"):
        raise RuntimeError(f"licence answered {answer!r}")
    return answer
