"""Parsing throughput per protocol, in records per second on one core, from golden streams.

    .venv/bin/python bench/bench_protocols.py [--seconds 3] [--capture 1024] [--mode M]
        [--against TREE] [proto ...]

Golden connections (tests/protocols/golden/<proto>/) are replayed from the client's
side with chunks built beforehand; the figure is records produced per second of CPU
time (`time.process_time`, so other load on the machine does not count) spent in
`feed` + `flush`, best of three rounds.

- `--mode steady` (default): each connection's set-up (handshake, start-up, auth) is
  fed once, then its request/response exchanges are replayed over and over on the
  same connection, offsets continuing: the throughput of long-lived connections.
- `--mode conn`: each golden connection is replayed whole as a fresh connection, set-up
  included (curl and psql open one connection per command).

`--capture N` keeps only N bytes of each chunk, as the probes do (default: 1024).

`--compare REV` times, side by side in one run (rounds alternating), the HTTP/1.1 parser
of this tree (compiled, agent/protocols/_http1.pyx) against the Python one of git
revision REV (loaded from `git show REV:agent/protocols/http1.py` under another module
name): golden workloads steady/1 KiB, steady/whole and conn/1 KiB, and the synthetic
pairs of `--floor`.

`--against TREE` times, side by side in one run (rounds alternating), each protocol's
compiled parser of this tree against the one built in TREE (a copy of the tree at
another revision, built in place: `cythonize -i` or `setup.py build_ext --inplace`),
loaded from TREE's agent/protocols/_NAME*.so under another package name with this
tree's base, redact and sqlinfo: the before/after figure of a change to the compiled
parsers.

`--floor` instead measures, side by side in one run, what one HTTP/1.1 pair costs in
CPython at the least: a toy loop doing only the work every parser must do (find the
head's end, method, path, Host, User-Agent, Content-Length, two `Message`s and a
`Record`) against the real parser on the same pair sent as one syscall a message, and
as three (response head and body written separately, as python's http.server does); plus the
syscalls per record of each golden workload.  It says how far the parser is from what
Python allows and how much of the golden figure is per-syscall cost.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.protocols.base import Chunk  # noqa: E402
from agent.protocols.registry import new_parser  # noqa: E402
from tests.protocols.golden import captures, chunks, load_capture  # noqa: E402

# issue 13: HTTP/1.1 100 000, Redis 150 000, HTTP/2 + gRPC 30 000, the rest 50 000
TARGETS = {"http": 100_000, "redis": 150_000, "grpc": 30_000, "http2": 30_000,
           "dns": 50_000, "postgresql": 50_000, "mysql": 50_000, "memcached": 50_000}
DEFAULT_TARGET = 30_000


def workload(proto: str, capture: int | None, mode: str) -> list[tuple[str, str, list]]:
    """(protocol, transport, chunks) of every golden connection of `proto`."""
    out = []
    for path in captures(proto):
        doc = load_capture(path)
        for conn in doc["connections"]:
            cks = chunks(conn, capture=capture)
            if mode == "steady":
                cks = steady(doc["protocol"], doc["transport"], cks)
            out.append((doc["protocol"], doc["transport"], cks))
    return out


def _new(proto: str, transport: str):
    return new_parser(proto, True, transport) if proto == "dns" else new_parser(proto, True)


def steady(proto: str, transport: str, cks: list[Chunk], reps: int = 200) -> list[Chunk]:
    """Set-up chunks once, then the exchanges `reps` times with offsets continuing."""
    p = _new(proto, transport)
    first = [None, None]
    for c in cks:
        for r in p.feed(c):
            for d, m in ((0, r.request), (1, r.response)):
                if m is not None and first[d] is None:
                    first[d] = m.offset
    if transport == "udp":
        # Datagrams: the same flow asking again and again.
        return [Chunk(c.direction, c.data, c.size, c.offset + k * 65536, c.ts_ns + k * 10_000_000,
                      c.tid, None) for k in range(reps) for c in cks]
    if None in first:
        return cks
    setup = [c for c in cks if c.offset < first[c.direction]]
    body = [c for c in cks if c.offset >= first[c.direction]]
    if any(c.offset == first[c.direction] for c in body) is False:
        return cks
    span = [0, 0]
    for c in body:
        span[c.direction] = max(span[c.direction], c.offset + c.size - first[c.direction])
    out = list(setup)
    for k in range(reps):
        for c in body:
            shift = k * span[c.direction]
            seq = None if c.seq is None else (c.seq + shift) % (1 << 32)
            out.append(Chunk(c.direction, c.data, c.size, c.offset + shift,
                             c.ts_ns + k * 10_000_000, c.tid, seq))
    return out


def one_round(work: list, budget: float, new=None) -> tuple[int, float]:
    """(records, CPU seconds) of replaying `work` for about `budget` CPU seconds;
    `new(proto, transport)` makes the parsers (default: the registry's)."""
    new = new or _new
    records = 0
    spent = 0.0
    while spent < budget:
        for proto, transport, cks in work:
            t0 = time.process_time()
            p = new(proto, transport)
            feed = p.feed
            n = 0
            for c in cks:
                n += len(feed(c))
            n += len(p.flush("closed"))
            spent += time.process_time() - t0
            records += n
    return records, spent


def bench(proto: str, seconds: float, capture: int | None, mode: str) -> float:
    work = workload(proto, capture, mode)
    if not work:
        return 0.0
    best = 0.0
    gc.collect()
    for _ in range(3):
        records, spent = one_round(work, seconds / 3)
        best = max(best, records / spent)
    return best


_REQ = b"GET /index.html HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
_RESP_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 00:56:11 GMT\r\n"
              b"Content-Type: text/html\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n")
_RESP_BODY = b"hello world\n"


def _toy_pair_loop(pairs: int) -> float:
    """CPU seconds of the least any HTTP/1.1 parser does for `pairs` pairs (no gaps,
    no framing states, no redaction, no trace headers)."""
    from agent.protocols.base import Message, Record

    req, resp = _REQ, _RESP_HEAD + _RESP_BODY
    pending: list = []

    def feed_req(data: bytes, off: int, ts: int, tid: int) -> list:
        e = data.find(b"\r\n\r\n")
        sp = data.find(b" ")
        sp2 = data.find(b" ", sp + 1)
        low = data[:e].lower()
        i = low.find(b"\r\nhost:")
        host = data[i + 7:low.find(b"\r\n", i + 2)].strip().decode()
        i = low.find(b"\r\nuser-agent:")
        ua = data[i + 13:low.find(b"\r\n", i + 2)].strip().decode()
        method, path = data[:sp].decode(), data[sp + 1:sp2].decode()
        pending.append((Message(off, len(data), ts, ts, tid, tid, None), method + " " + path,
                        {"http.request.method": method, "url.path": path,
                         "server.address": host, "user_agent.original": ua}))
        return []

    def feed_resp(data: bytes, off: int, ts: int, tid: int) -> list:
        e = data.find(b"\r\n\r\n")
        code = int(data[9:12])
        low = data[:e].lower()
        i = low.find(b"\r\ncontent-length:")
        attrs_len = int(data[i + 17:low.find(b"\r\n", i + 2)])
        m, op, attrs = pending.pop()
        attrs["http.response.status_code"] = code
        attrs["http.response.body.size"] = attrs_len
        return [Record("http", m, Message(off, len(data), ts, ts, tid, tid, None), op, "ok",
                       "200", "", attrs, {}, "")]

    t0 = time.process_time()
    n = 0
    for i in range(pairs):
        feed_req(req, i, i, 1)
        n += len(feed_resp(resp, i, i, 1))
    assert n == pairs
    return time.process_time() - t0


def _parser_pair_loop(pairs: int, split: bool, cls=None) -> float:
    """CPU seconds of the real HTTP/1.1 parser for `pairs` pairs on one connection
    (`cls`: another parser class, as for --compare)."""
    if split:
        # The response's head and body in two writes (3 syscalls a pair).
        msgs = [(0, _REQ), (1, _RESP_HEAD), (1, _RESP_BODY)]
    else:
        msgs = [(0, _REQ), (1, _RESP_HEAD + _RESP_BODY)]
    cks = []
    off = [0, 0]
    for i in range(pairs):
        for d, data in msgs:
            cks.append(Chunk(d, data, len(data), off[d], i * 1000 + d, 7, None))
            off[d] += len(data)
    p = cls(True) if cls is not None else new_parser("http", True)
    feed = p.feed
    t0 = time.process_time()
    n = 0
    for c in cks:
        n += len(feed(c))
    spent = time.process_time() - t0
    assert n == pairs, n
    return spent


def floor(pairs: int = 50_000, rounds: int = 5) -> None:
    """Print the toy floor, the parser on one syscall a message and on split writes."""
    best = {"toy": 1e9, "one": 1e9, "split": 1e9}
    for _ in range(rounds):  # alternating, best of `rounds`
        best["toy"] = min(best["toy"], _toy_pair_loop(pairs))
        best["one"] = min(best["one"], _parser_pair_loop(pairs, False))
        best["split"] = min(best["split"], _parser_pair_loop(pairs, True))
    print(f"{'HTTP/1.1 pair':<44}{'us/pair':>9}{'pairs/s':>10}{'x floor':>9}")
    for key, label in (("toy", "floor: least work, one syscall a message"),
                       ("one", "parser: one syscall a message"),
                       ("split", "parser: response head and body apart")):
        us = best[key] / pairs * 1e6
        print(f"{label:<44}{us:>9.2f}{1e6 / us:>10,.0f}{best[key] / best['toy']:>9.2f}")
    print("syscalls (chunks) per record in the golden workloads, steady, 1 KiB:")
    for proto in ("http", "redis", "dns", "postgresql", "mysql", "grpc", "memcached"):
        work = workload(proto, 1024, "steady")
        chunks_n = sum(len(c) for _, _, c in work)
        records = 0
        for proto_, transport, cks in work:
            parser = _new(proto_, transport)
            records += sum(len(parser.feed(c)) for c in cks) + len(parser.flush("closed"))
        print(f"  {proto:<12}{chunks_n / max(records, 1):>6.2f}")


def baseline_http1(rev: str) -> types.ModuleType:
    """The HTTP/1.1 parser module of git revision `rev`, imported as
    agent.protocols._http1_baseline (its relative imports resolve in this tree)."""
    path = "agent/protocols/http1.py"
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("agent.protocols._http1_baseline")
    mod.__package__ = "agent.protocols"
    mod.__file__ = f"{rev}:{path}"
    sys.modules[mod.__name__] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def compare_http(rev: str, seconds: float, rounds: int = 5, pairs: int = 30_000) -> None:
    """This tree's HTTP/1.1 parser against REV's, side by side, rounds alternating."""
    import agent.protocols.http1 as current

    old = baseline_http1(rev).Http1Parser
    cur = current.Http1Parser
    print(f"HTTP/1.1 parser: this tree ({cur.__module__}) against {rev} (Python); "
          f"records/s per CPU second, best of {rounds} alternating rounds")
    print(f"{'workload':<40}{rev:>12}{'this tree':>12}{'x':>7}")
    for mode, capture in (("steady", 1024), ("steady", None), ("conn", 1024)):
        work = workload("http", capture, mode)
        best = {"old": 0.0, "cur": 0.0}
        for _ in range(rounds):
            for key, cls in (("old", old), ("cur", cur)):
                gc.collect()
                records, spent = one_round(work, seconds / rounds,
                                           lambda _p, _t, c=cls: c(True))
                best[key] = max(best[key], records / spent)
        label = f"golden, {mode}, {f'{capture} B' if capture else 'whole'} chunks"
        print(f"{label:<40}{best['old']:>12,.0f}{best['cur']:>12,.0f}"
              f"{best['cur'] / best['old']:>7.2f}")
    for split, label in ((False, "pair, one syscall a message"),
                         (True, "pair, response head and body apart")):
        best = {"old": 1e9, "cur": 1e9}
        for _ in range(rounds):
            for key, cls in (("old", old), ("cur", cur)):
                best[key] = min(best[key], _parser_pair_loop(pairs, split, cls))
        print(f"{label:<40}{pairs / best['old']:>12,.0f}{pairs / best['cur']:>12,.0f}"
              f"{best['old'] / best['cur']:>7.2f}")


def load_build(tree: Path, module: str) -> types.ModuleType:
    """agent/protocols/`module` (a compiled one, e.g. "_redis") as built in `tree`,
    imported as _zt_against.`module`; its relative imports of base, redact and sqlinfo
    get this tree's modules, so records are of the same classes."""
    name = "_zt_against"
    pkg = sys.modules.get(name)
    if pkg is None:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(tree / "agent" / "protocols")]
        sys.modules[name] = pkg
        for dep in ("base", "redact", "sqlinfo"):
            mod = importlib.import_module(f"agent.protocols.{dep}")
            sys.modules[f"{name}.{dep}"] = mod
            setattr(pkg, dep, mod)
    mod = importlib.import_module(f"{name}.{module}")
    if not str(Path(mod.__file__).resolve()).startswith(str(tree.resolve())):
        raise SystemExit(f"{module} did not load from {tree}: {mod.__file__}")
    return mod


def compare_builds(tree: Path, protocols: list[str], seconds: float, capture: int | None,
                   mode: str, rounds: int = 6) -> None:
    """This tree's compiled parsers against TREE's build, side by side."""
    print(f"this tree against the build in {tree}: mode={mode} capture={capture or 'whole'}, "
          f"records/s per CPU second, best of {rounds} alternating rounds")
    print(f"{'protocol':<12}{'TREE':>12}{'this tree':>12}{'x':>7}")
    for proto in protocols:
        work = workload(proto, capture, mode)
        if not work:
            continue
        cur = type(_new(proto, work[0][1]))
        old = getattr(load_build(tree, cur.__module__.rsplit(".", 1)[1]), cur.__name__)

        def maker(cls):
            return lambda p, t: cls(True, t) if p == "dns" else cls(True)

        best = {"old": 0.0, "cur": 0.0}
        for k in range(rounds):
            # Alternate which goes first, so neither always runs on a warmer cache.
            order = (("old", old), ("cur", cur)) if k % 2 == 0 else (("cur", cur), ("old", old))
            for key, cls in order:
                gc.collect()
                records, spent = one_round(work, seconds / rounds, maker(cls))
                best[key] = max(best[key], records / spent)
        print(f"{proto:<12}{best['old']:>12,.0f}{best['cur']:>12,.0f}"
              f"{best['cur'] / best['old']:>7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("protocols", nargs="*", default=["http", "redis", "dns", "postgresql",
                                                     "mysql", "grpc", "memcached"])
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU time per protocol")
    ap.add_argument("--capture", type=int, default=1024,
                    help="bytes kept per chunk (0: whole chunks)")
    ap.add_argument("--mode", choices=("steady", "conn"), default="steady")
    ap.add_argument("--floor", action="store_true",
                    help="HTTP/1.1: the parser against the least Python can do")
    ap.add_argument("--compare", metavar="REV",
                    help="HTTP/1.1: this tree's parser against the Python one of git REV")
    ap.add_argument("--against", metavar="TREE", type=Path,
                    help="each protocol: this tree's compiled parser against TREE's build")
    args = ap.parse_args()
    if args.against:
        compare_builds(args.against, args.protocols, args.seconds, args.capture or None,
                       args.mode)
        return
    if args.compare:
        compare_http(args.compare, args.seconds)
        return
    if args.floor:
        floor()
        return
    capture = args.capture or None
    print(f"mode={args.mode} capture={capture or 'whole'}")
    print(f"{'protocol':<12}{'records/s':>12}{'target':>10}  ok")
    for proto in args.protocols:
        if not (ROOT / "tests/protocols/golden" / proto).is_dir():
            continue
        rate = bench(proto, args.seconds, capture, args.mode)
        target = TARGETS.get(proto, DEFAULT_TARGET)
        print(f"{proto:<12}{rate:>12,.0f}{target:>10,}  {'yes' if rate >= target else 'NO'}")


if __name__ == "__main__":
    main()
