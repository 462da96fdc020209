"""What the stitching tests on real runtimes share: requests carrying a nonce that
each downstream call repeats, and counting the links made against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.join(os.path.dirname(__file__), "services")
NONCE = re.compile(r"n[0-9a-f]{16}")


def nonce_of(span) -> str | None:
    m = NONCE.search(span.operation)
    return m.group(0) if m else None


def load(host, port: int, n: int, concurrency: int, request_id: bool = False) -> list[str]:
    """n requests with unique nonces, `concurrency` at a time, from inside the netns;
    with request_id, each also carries X-Request-ID: <nonce>."""
    code = (
        "import sys,threading,urllib.request,uuid\n"
        f"port,n,c,rid={port},{n},{concurrency},{request_id}\n"
        "done=[]\n"
        "def w(k):\n"
        "  for i in range(k):\n"
        "    x='n'+uuid.uuid4().hex[:16]\n"
        "    h={'X-Request-ID': x} if rid else {}\n"
        "    r=urllib.request.Request(f'http://127.0.0.1:{port}/'+x,headers=h)\n"
        "    urllib.request.urlopen(r,timeout=10).read();done.append(x)\n"
        "ts=[threading.Thread(target=w,args=(n//c,)) for _ in range(c)]\n"
        "[t.start() for t in ts];[t.join() for t in ts]\n"
        "print(' '.join(done))\n")
    out = subprocess.run(host.cmd(sys.executable, "-c", code), capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return out.split()


def wait_ready(p: subprocess.Popen, name: str) -> None:
    line = p.stdout.readline()
    if "ready" not in line:
        pytest.fail(f"{name} did not start: {line!r}")


def links(traces):
    """(parent span, child span) pairs within traces."""
    out = []
    for tr in traces:
        by_id = {s.span_id: s for s in tr.spans}
        for s in tr.spans:
            p = by_id.get(s.parent_span_id)
            if p is not None:
                out.append((p, s))
    return out


def hop_links(traces, ours: set[str], port: int, backend: int) -> tuple[int, int, int, int]:
    """(inside links, inside wrong, cross links, cross wrong) for the requests `ours`
    through the hop listening on `port` and calling `backend`: inside = its server span
    -> its client span; cross = its client span -> the backend's server span."""
    inside = inside_wrong = cross = cross_wrong = 0
    for p, c in links(traces):
        pn, cn = nonce_of(p), nonce_of(c)
        if pn not in ours and cn not in ours:
            continue
        if p.kind == "server" and c.kind == "client" and p.local.port == port:
            inside += 1
            inside_wrong += pn != cn
        elif p.kind == "client" and c.kind == "server" and c.local.port == backend \
                and p.remote.port == backend and pn in ours:
            cross += 1
            cross_wrong += pn != cn
        elif pn and cn and pn != cn:
            inside_wrong += 1  # any other link joining two requests is wrong too
    return inside, inside_wrong, cross, cross_wrong
