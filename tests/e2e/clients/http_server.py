"""A Python HTTP/1.1 server (keep-alive): /hello, /slow (20 ms), anything else 404."""

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        # a 404 keeps the connection open too (send_error would close it)
        code, body = (200, b"hello world\n") if self.path in ("/hello", "/slow") \
            else (404, b"not found\n")
        if self.path == "/slow":
            time.sleep(0.02)
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
srv.serve_forever()
