"""A service on a fixed pool of 4 threads: each request /<nonce> first asks a licence
server over a line protocol of its own (which no parser knows: "LICENCE <nonce>\\n" ->
"GRANTED <nonce>\\n"), then stores the nonce in Redis (SET req:<nonce>), then answers.
Each pool thread keeps its own connections to both, as pooled clients do.

Usage: linepool.py PORT LICENCE_PORT REDIS_PORT
"""

import queue
import socket
import sys
import threading

PORT, LICENCE, REDIS = (int(a) for a in sys.argv[1:4])
work: queue.Queue = queue.Queue()


def line_call(conn: socket.socket, f, nonce: str) -> None:
    conn.sendall(f"LICENCE {nonce}\n".encode())
    if f.readline().split()[:1] != [b"GRANTED"]:
        raise RuntimeError("licence refused")


def redis_set(conn: socket.socket, f, nonce: str) -> None:
    key, val = f"req:{nonce}".encode(), b"1"
    conn.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n%s\r\n" % (len(key), key, val))
    if f.readline() != b"+OK\r\n":
        raise RuntimeError("redis refused")


def serve(client: socket.socket, lic, redis) -> None:
    rf = client.makefile("rb")
    while True:
        line = rf.readline()
        if not line:
            return
        path = line.split()[1].decode()
        keep = True
        while (h := rf.readline()) not in (b"\r\n", b""):
            if h.lower().startswith(b"connection:") and b"close" in h.lower():
                keep = False
        nonce = path.strip("/")
        line_call(*lic, nonce)
        redis_set(*redis, nonce)
        body = path.encode()
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if not keep:
            return


def worker() -> None:
    lic = socket.create_connection(("127.0.0.1", LICENCE))
    redis = socket.create_connection(("127.0.0.1", REDIS))
    lic_pair, redis_pair = (lic, lic.makefile("rb")), (redis, redis.makefile("rb"))
    while True:
        client = work.get()
        try:
            serve(client, lic_pair, redis_pair)
        finally:
            client.close()


def licence_server() -> None:
    srv = socket.create_server(("127.0.0.1", LICENCE))
    while True:
        c, _ = srv.accept()
        threading.Thread(target=licence_conn, args=(c,), daemon=True).start()


def licence_conn(c: socket.socket) -> None:
    f = c.makefile("rb")
    for line in f:
        c.sendall(b"GRANTED " + line.split()[1] + b"\n")


if __name__ == "__main__":
    if sys.argv[4:] == ["licence"]:
        print("ready", flush=True)
        licence_server()
    srv = socket.create_server(("127.0.0.1", PORT), backlog=64)
    for _ in range(4):
        threading.Thread(target=worker, daemon=True).start()
    print("ready", flush=True)
    while True:
        work.put(srv.accept()[0])
