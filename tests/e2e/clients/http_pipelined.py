"""HTTP/1.1 pipelining: several requests in one write on one connection, then every
response read back.  argv: host, port, path...  Reports one timed op for the batch."""

import socket
import sys
import time

from tests.e2e.clients.timed import op, report

host, port, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.create_connection((host, port), timeout=10)
time.sleep(0.05)
req = b"".join(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (p.encode(), host.encode())
               for p in paths)
with op("pipelined", n=len(paths)) as rec:
    s.sendall(req)
    buf, done = b"", 0
    while done < len(paths):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        # count complete responses: head, then Content-Length bytes of body
        done, pos = 0, 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end].decode("latin-1").lower()
            n = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    n = int(line.split(":", 1)[1])
            if len(buf) < end + 4 + n:
                break
            done, pos = done + 1, end + 4 + n
    rec["responses"] = done
    rec["sock"] = s.getsockname()[1]
time.sleep(0.05)
s.close()
report()
