"""http.client: several requests on one keep-alive connection, each timed."""

import sys
import time
from http.client import HTTPConnection

from tests.e2e.clients.timed import op, report

host, port = sys.argv[1], int(sys.argv[2])
paths = sys.argv[3:]
c = HTTPConnection(host, port, timeout=10)
c.connect()
time.sleep(0.05)
for path in paths:
    with op(f"GET {path}") as rec:
        c.request("GET", path, headers={"X-Request-ID": f"e2e-{path}"})
        r = c.getresponse()
        body = r.read()
        rec["status"], rec["size"] = r.status, len(body)
    rec["sock"] = c.sock.getsockname()[1]
time.sleep(0.05)
c.close()
report()
