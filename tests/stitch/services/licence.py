"""A licence server speaking a tiny line protocol of its own, which no parser knows:
`LIC? <key>\\n` is answered `LIC! granted <key>\\n` after a short wait.  A thread per
connection; connections are kept open for as many checks as the client sends.

    python licence.py PORT
"""

import random
import socketserver
import sys
import time


class H(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            key = line.decode(errors="replace").split()[-1]
            time.sleep(random.uniform(0.0005, 0.003))  # requests overlap in the caller
            self.wfile.write(f"LIC! granted {key}\n".encode())
            self.wfile.flush()


class S(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = S(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
