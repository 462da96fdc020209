"""licence: the demo's licence server, on a line protocol of its own that no zerotrace
parser knows (standard library only, no tracing code).

`LIC? <product> <key>\\n` is answered `LIC! granted <key>\\n`; a connection carries as
many checks as its client sends.  The api checks a licence before each order, so the
demo's traces cross one round trip the agent does not parse: the api's calls after it
must stay in the request's trace.
Run as a script: `python licence.py --listen ADDR:PORT`.
"""

from __future__ import annotations

import argparse
import socketserver
import sys


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            parts = line.decode(errors="replace").split()
            if len(parts) == 3 and parts[0] == "LIC?":
                self.wfile.write(f"LIC! granted {parts[2]}\n".encode())
            else:
                self.wfile.write(b"LIC! refused\n")
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    srv = Server((host, int(port)), Handler)
    print(f"licence listening on {a.listen}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
