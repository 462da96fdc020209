"""HTTP/1.1 server on ADDR PORT, TLS (Python `ssl`, the system libssl) when CERT and KEY
are given, clear text otherwise: GET /echo?n=N answers N bytes, anything else 404."""

import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/echo?n="):
            body = b"e" * int(self.path.split("=", 1)[1])
            self.send_response(200)
        else:
            body = b"not here\n"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    addr, port = sys.argv[1], int(sys.argv[2])
    srv = http.server.ThreadingHTTPServer((addr, port), Handler)
    if len(sys.argv) > 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
