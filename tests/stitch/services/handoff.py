"""A Python service that hands each downstream call to a small thread pool: the thread
that read the request is not the thread that writes the call (a hand-off)."""

import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, BACKEND = int(sys.argv[1]), sys.argv[2]
POOL = ThreadPoolExecutor(3)


def call(nonce: str, request_id: str | None) -> bytes:
    # Like many services, pass the caller's X-Request-ID on to the calls it makes.
    headers = {"X-Request-ID": request_id} if request_id else {}
    req = urllib.request.Request(f"{BACKEND}/down/{nonce}", headers=headers)
    with urllib.request.urlopen(req) as r:
        return r.read()


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = POOL.submit(call, self.path[1:], self.headers.get("X-Request-ID")).result()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


srv = ThreadingHTTPServer(("127.0.0.1", PORT), H)
print("ready", flush=True)
srv.serve_forever()
