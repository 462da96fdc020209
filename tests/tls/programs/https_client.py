"""http.client (Python `ssl` when the scheme is https, certificate not checked: the test
makes a self-signed one) to HOST PORT: GET each PATH on one keep-alive connection;
prints a JSON list of [status, body length]."""

import http.client
import json
import ssl
import sys


def main() -> None:
    scheme, host, port, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=10,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    out = []
    for p in paths:
        conn.request("GET", p)
        r = conn.getresponse()
        out.append([r.status, len(r.read())])
    conn.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
