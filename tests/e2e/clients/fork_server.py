"""A pre-forking-style HTTP server: accept, fork, the child serves the connection and the
parent closes its copy of the socket, as dnsmasq (TCP), PostgreSQL's postmaster and
inetd-style servers do.  The order is pinned with pipes: the child reads the request,
then the parent closes its fd, then the child writes the response.  argv: addr, port."""

import os
import socket
import sys
import time

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
print("ready", flush=True)
for _ in range(100):
    conn, _ = srv.accept()
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        srv.close()
        req = b""
        while b"\r\n\r\n" not in req:
            req += conn.recv(4096)
        os.write(up_w, b"r")  # request read
        os.read(down_r, 1)  # the parent has closed its fd
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        conn.close()
        os._exit(0)
    os.read(up_r, 1)
    conn.close()
    time.sleep(0.05)
    os.write(down_w, b"c")
    os.waitpid(pid, 0)
    for fd in (up_r, up_w, down_r, down_w):
        os.close(fd)
