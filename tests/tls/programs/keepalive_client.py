"""One TLS keep-alive connection (http.client, Python `ssl`) to HOST PORT, kept open:
GET the first PATH at once, then one GET per line read from stdin; prints
[status, body length] as a JSON line after each."""

import http.client
import json
import ssl
import sys


def main() -> None:
    host, port, first = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = http.client.HTTPSConnection(host, port, timeout=30,
                                       context=ssl._create_unverified_context())
    path = first
    while path:
        conn.request("GET", path)
        r = conn.getresponse()
        print(json.dumps([r.status, len(r.read())]), flush=True)
        path = sys.stdin.readline().strip()
    conn.close()


if __name__ == "__main__":
    main()
