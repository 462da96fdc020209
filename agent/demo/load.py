"""Load generator: bounded, rate-limited `GET <url>/order/<nonce>` from N client threads.

Each request carries a unique nonce (`n` + 16 hex digits) and uses a new connection.
Requests are scheduled at `start + i / rate` and taken by `concurrency` threads, bounded
by `requests` and by `max_seconds` (requests not sent by then are not sent).  The
result, one `(nonce, start_ns, end_ns, status)` per request sent (Unix epoch ns;
status 0 when no HTTP answer came), is the ground truth for fidelity measurement.
Standard library only, so it runs as a plain script inside the `client` pod:
`python load.py --url http://10.232.0.3 --requests 2000 --rate 200 --concurrency 8 --out f.json`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit


class LoadResult(NamedTuple):
    nonce: str
    start_ns: int
    end_ns: int
    status: int


def new_nonce() -> str:
    return "n" + os.urandom(8).hex()


def _one(host: str, port: int, nonce: str, timeout: float) -> LoadResult:
    start = time.time_ns()
    status = 0
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", f"/order/{nonce}")
        r = c.getresponse()
        r.read()
        status = r.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        c.close()
    return LoadResult(nonce, start, time.time_ns(), status)


def run(url: str, requests: int = 100, rate: float = 50.0, concurrency: int = 8,
        timeout: float = 10.0, max_seconds: float = 120.0) -> list[LoadResult]:
    """Send the requests; return the ground truth, in sending order."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    lock = threading.Lock()
    nxt = [0]
    results: list[LoadResult | None] = [None] * requests
    t0 = time.monotonic()
    deadline = t0 + max_seconds

    def worker() -> None:
        while True:
            with lock:
                i = nxt[0]
                if i >= requests:
                    return
                nxt[0] += 1
            due = t0 + i / rate if rate > 0 else t0
            now = time.monotonic()
            if due >= deadline or now >= deadline:
                return
            if due > now:
                time.sleep(due - now)
            results[i] = _one(host, port, new_nonce(), timeout)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + timeout + 1)
    return [r for r in results if r is not None]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="gateway base URL, e.g. http://10.232.0.3")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--out", help="write the ground truth as JSON here (default stdout)")
    a = ap.parse_args(argv)
    res = run(a.url, a.requests, a.rate, a.concurrency, a.timeout, a.max_seconds)
    data = json.dumps([list(r) for r in res])
    if a.out:
        with open(a.out, "w") as f:
            f.write(data)
    else:
        sys.stdout.write(data + "\n")
    ok = sum(1 for r in res if r.status == 200)
    print(f"load: {len(res)} sent, {ok} answered 200", file=sys.stderr)


if __name__ == "__main__":
    main()
