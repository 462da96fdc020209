"""Server benchmarks: ingest rate on one core, bytes on disk per span, query latency.

    .venv/bin/python bench/bench_server.py                       # defaults below
    .venv/bin/python bench/bench_server.py --ingest-spans 1000000 --store-spans 10000000

1. ingest: a `zerotrace server` process pinned to CPU 0 (taskset), chDB limited to
   one thread; this process (pinned to CPU 1) pushes pre-serialized batches of
   realistic agent spans over gRPC from 4 threads, one agent each.  Spans/s = spans
   acked / wall time; also the server's CPU time per span (all its threads, merges
   included), which other load on the machine disturbs less.
2. bytes per span: on-disk size of the ingested spans after merging (OPTIMIZE FINAL),
   and of the big synthetic table below; span table and search index together.
3. query latency with --store-spans stored: the table is filled by ClickHouse itself
   (INSERT ... SELECT FROM numbers(), spans shaped like the agent's) because building
   ten million spans in Python would take longer than the measurement; then
   trace-by-id and search p50/p99 through the store API (what the gRPC service calls),
   and GetTrace with the cross-node join over gRPC.
3b. merge: the CPU one merge level costs per row (8 parts into one), for the schema
   and variants of it; merges are what keeps ingest on one core short of its target.
4. flame graph of a 1 000-span trace: each renderer, best of 5.
5. http (issue 16; `--only http`): --http-spans spans with cross-node fragments
   (HTTP_FILL_SQL), a `zerotrace server --http` process on them, and p50/p99 of
   Grafana's requests over one keep-alive connection: Tempo trace by id (protobuf,
   JSON) and TraceQL searches with two attribute conditions.  --http-data keeps the
   store for another run; --server-root runs another tree's server on it (before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from proto.columns import ipc_to_table, spans_to_table, table_to_ipc  # noqa: E402
from proto.convert import span_to_pb  # noqa: E402
from proto.span import Endpoint, Span, new_span_id, new_trace_id  # noqa: E402
from proto.zerotrace.v1 import ingest_pb2, query_pb2, query_pb2_grpc  # noqa: E402

MS = 1_000_000
SERVICES = [f"svc-{i}" for i in range(40)]


def agent_like_trace(t0: int, n: int = 10) -> list[Span]:
    """One trace the way the agent produces it: a server span and its client calls."""
    tid = new_trace_id()
    svc = random.choice(SERVICES)
    root = Span(
        trace_id=tid,
        kind="server",
        source="S",
        protocol="http",
        status="ok",
        operation=f"GET /api/v1/items/{random.randint(0, 30)}",
        status_code="200",
        start_ns=t0,
        end_ns=t0 + random.randint(1, 80) * MS,
        service=svc,
        pid=1000,
        tid=1001,
        process=f"{svc}-bin",
        cgroup_id=123456,
        netns=4026531992,
        transport="tcp",
        local=Endpoint("10.0.1.10", 8080),
        remote=Endpoint("10.0.2.20", random.randint(30000, 60000)),
        req_seq=random.getrandbits(32),
        resp_seq=random.getrandbits(32),
        req_offset=0,
        resp_offset=0,
        req_bytes=300,
        resp_bytes=1200,
        attributes={
            "http.request.method": "GET",
            "http.route": "/api/v1/items/{id}",
            "http.response.status_code": 200,
        },
        resource={
            "k8s.namespace.name": "shop",
            "k8s.pod.name": f"{svc}-7d9c-xk2",
            "host.name": "node-1",
        },
        agent="node-1",
    )
    out = [root]
    for i in range(n - 1):
        s0 = t0 + (i + 1) * 100_000
        out.append(
            Span(
                trace_id=tid,
                span_id=new_span_id(),
                parent_span_id=root.span_id,
                kind="client",
                source="S",
                protocol="redis" if i % 2 else "postgresql",
                operation="GET" if i % 2 else "SELECT orders",
                status="ok",
                start_ns=s0,
                end_ns=s0 + random.randint(50_000, 900_000),
                service=svc,
                pid=1000,
                tid=1001,
                process=f"{svc}-bin",
                cgroup_id=123456,
                netns=4026531992,
                transport="tcp",
                local=Endpoint("10.0.1.10", random.randint(30000, 60000)),
                remote=Endpoint("10.0.3.30", 6379 if i % 2 else 5432),
                req_seq=random.getrandbits(32),
                resp_seq=random.getrandbits(32),
                req_offset=i * 40,
                resp_offset=i * 80,
                req_bytes=40,
                resp_bytes=80,
                attributes={"db.system": "redis" if i % 2 else "postgresql"},
                resource=root.resource,
                agent="node-1",
            )
        )
    return out


def build_batches(total: int, per_batch: int, agents: int = 1,
                  wire: str = "arrow") -> list[bytes]:
    """Serialized `PushRequest`s as the agent's exporter makes them (`wire` "arrow":
    span_columns, LZ4 inside; "protobuf": spans); batch i comes from agent
    `node-{i % agents + 1}`."""
    t0 = time.time_ns() - 600 * 1_000_000_000
    out = []
    made = 0
    while made < total:
        req = ingest_pb2.PushRequest()
        req.agent.agent = f"node-{len(out) % agents + 1}"
        spans: list[Span] = []
        while len(spans) < per_batch and made + len(spans) < total:
            spans += agent_like_trace(t0 + (made + len(spans)) * 10_000)
        made += len(spans)
        if wire == "arrow":
            req.span_columns = table_to_ipc(spans_to_table(spans))
        else:
            for s in spans:
                span_to_pb(s, req.spans.add())
        out.append(req.SerializeToString())
    return out


def start_server(data: str, cpu: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0", "--data", data]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    p = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    line = p.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"server did not start: {line!r}")
    return p, line.split("listening on ")[1].split()[0]


def stop(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process `pid` so far (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _merge_cpu_s(pid: int) -> float:
    """CPU seconds of the process's ClickHouse merge threads (named MergeMutate)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "MergeMutate":
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _settle(pid: int, quiet_s: float = 5.0, limit_s: float = 300.0) -> float:
    """Wait until the server has used no CPU for `quiet_s` (its merges are done, as
    far as ClickHouse's merge selector goes for this data); seconds waited."""
    t = time.perf_counter()
    last, still = _cpu_s(pid), 0.0
    while still < quiet_s and time.perf_counter() - t < limit_s:
        time.sleep(1.0)
        now = _cpu_s(pid)
        still = still + 1.0 if now - last < 0.05 else 0.0
        last = now
    return time.perf_counter() - t


def bench_ingest(n: int, per_batch: int, threads: int, wire: str = "arrow") -> dict:
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cpus and len(cpus) > 1:
        os.sched_setaffinity(0, {1})  # the client stays off the server's core
    try:
        return _bench_ingest(n, per_batch, threads, wire)
    finally:
        if cpus:
            os.sched_setaffinity(0, cpus)


def _bench_ingest(n: int, per_batch: int, threads: int, wire: str) -> dict:
    t = time.perf_counter()
    # One agent per client thread: the server admits a few batches in flight per
    # agent (server/ingest/admission.py), so one agent on 4 threads would be throttled.
    batches = build_batches(n, per_batch, agents=threads, wire=wire)
    print(f"  built {n} spans in {len(batches)} {wire} batches "
          f"({time.perf_counter() - t:.1f}s)")
    data = tempfile.mkdtemp(prefix="zt-bench-ingest-")
    p, addr = start_server(data, cpu=0)
    try:
        ch = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)])
        push = ch.unary_unary(
            "/zerotrace.v1.IngestService/Push",
            response_deserializer=ingest_pb2.PushResponse.FromString,
        )
        push(batches[0], timeout=60)  # warm-up (schema, first part); not counted
        lock = threading.Lock()
        acked = [0]

        def run(k: int):
            for b in batches[k or threads :: threads]:  # its agent's batches; 0 was sent
                r = push(b, timeout=120)
                with lock:
                    acked[0] += r.accepted

        c0, m0 = _cpu_s(p.pid), _merge_cpu_s(p.pid)
        t = time.perf_counter()
        ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        took = time.perf_counter() - t
        cpu, merges = _cpu_s(p.pid) - c0, _merge_cpu_s(p.pid) - m0
        # Merges the run left for later are part of its cost: wait for them.
        settle_s = _settle(p.pid)
        cpu_all, merges_all = _cpu_s(p.pid) - c0, _merge_cpu_s(p.pid) - m0
        ch.close()
    finally:
        stop(p)
    # size after merge, in-process
    from server.storage.chdb_store import ChdbStore

    st = ChdbStore(data)
    st.flush()
    stats = st.stats()
    st.close()
    shutil.rmtree(data, ignore_errors=True)
    per = 1e6 / max(acked[0], 1)
    return {
        "spans": acked[0],
        "seconds": took,
        "spans_per_s": acked[0] / took,
        "server_cpu_us_per_span": per * cpu,
        "merge_cpu_us_per_span": per * merges,
        "settle_s": settle_s,
        "server_cpu_settled_us_per_span": per * cpu_all,
        "merge_cpu_settled_us_per_span": per * merges_all,
        "bytes_per_span": stats["bytes"] / max(stats["spans"], 1),
        "stored": stats["spans"],
    }


def bench_encode(n: int = 4_000, rounds: int = 5) -> dict[str, float]:
    """The agent's side of the wire: us a span to encode a batch of `n` agent-like
    spans (best of `rounds`), and bytes a span sent, per wire format."""
    import gzip

    t0 = time.time_ns()
    spans: list[Span] = []
    while len(spans) < n:
        spans += agent_like_trace(t0 + len(spans) * 10_000)

    def best(f) -> tuple[float, bytes]:
        times, out = [], b""
        for _ in range(rounds):
            t = time.perf_counter()
            out = f()
            times.append(time.perf_counter() - t)
        return 1e6 * min(times) / len(spans), out

    def protobuf() -> bytes:
        req = ingest_pb2.PushRequest()
        add = req.spans.add
        for s in spans:
            span_to_pb(s, add())
        return req.SerializeToString()

    arrow_us, arrow = best(lambda: table_to_ipc(spans_to_table(spans)))
    pb_us, pb = best(protobuf)
    gz_us, gz = best(lambda: gzip.compress(pb, 6))  # grpc's gzip level
    return {"arrow_us": arrow_us, "arrow_bytes": len(arrow) / len(spans),
            "protobuf_us": pb_us, "gzip_us": gz_us, "gzip_bytes": len(gz) / len(spans)}


MERGE_VARIANTS = ("schema", "compact-parts", "no-lowcardinality", "maps-as-strings",
                  "no-skip-indexes")


def _variant_ddl(variant: str, db: str) -> tuple[str, str]:
    """(DDL of the span table in `db` changed as `variant` says, its SELECT list)."""
    from server.storage import schema

    ddl, cols = schema.create_table(db), "*"
    if variant == "no-lowcardinality":
        ddl = ddl.replace("LowCardinality(String)", "String")
    elif variant == "maps-as-strings":
        maps = ("trace_headers", "attributes", "attributes_json", "resource")
        for c in maps:
            ddl = ddl.replace(f"{c} Map(LowCardinality(String), String)", f"{c} String")
        cols = ", ".join(f"toString({c}) AS {c}" if c in maps else c
                         for c in schema.COLUMN_NAMES)
    elif variant == "compact-parts":  # every part compact (server/storage/schema.py)
        ddl = ddl.replace("SETTINGS ", f"SETTINGS {schema.COMPACT_PARTS}, ", 1)
    elif variant == "no-skip-indexes":
        ddl = "\n".join(x for x in ddl.splitlines() if not x.strip().startswith("INDEX"))
    return ddl, cols


def bench_merge_level(n: int, variants: list[str], parts: int = 8) -> dict[str, float]:
    """CPU us per row of one merge level: `parts` parts of n/parts agent-like spans
    (merges stopped while they are written) merged into one by OPTIMIZE FINAL on one
    thread, in this process; per schema variant."""
    import resource

    from server.storage.chdb_store import ChdbStore

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    data = tempfile.mkdtemp(prefix="zt-bench-merge-")
    src = ChdbStore(data, db="src")
    out = {}
    try:
        for b in build_batches(n, 50_000, wire="arrow"):
            src.write(ipc_to_table(ingest_pb2.PushRequest.FromString(b).span_columns))
        s = src._s
        for t in ("spans", "search_index"):
            s.query(f"SYSTEM STOP MERGES src.{t}", "CSV")
        for k, variant in enumerate(variants):
            db = f"merge{k}"
            ddl, cols = _variant_ddl(variant, db)
            s.query(f"CREATE DATABASE {db}", "CSV")
            s.query(ddl, "CSV")
            s.query(f"SYSTEM STOP MERGES {db}.spans", "CSV")
            per = n // parts
            for off in range(0, n, per):
                s.query(f"INSERT INTO {db}.spans SELECT {cols} FROM src.spans ORDER BY start_ns "
                        f"LIMIT {per} OFFSET {off} SETTINGS max_insert_threads = 1", "CSV")
            s.query(f"SYSTEM START MERGES {db}.spans", "CSV")
            c = cpu()
            s.query(f"OPTIMIZE TABLE {db}.spans FINAL SETTINGS max_threads = 1", "CSV")
            out[variant] = 1e6 * (cpu() - c) / n
            s.query(f"DROP DATABASE {db}", "CSV")
    finally:
        src.close()
        shutil.rmtree(data, ignore_errors=True)
    return out


FILL_SQL = """
INSERT INTO {db}.spans SELECT
  substring(MD5(toString(intDiv(number, 10))), 1, 16) AS trace_id,
  substring(MD5(toString(number)), 1, 8) AS span_id,
  if(number % 10 = 0, '', substring(MD5(toString(number - number % 10)), 1, 8)) AS parent_span_id,
  if(number % 10 = 0, 'server', 'client') AS kind, 'S' AS source,
  if(number % 2 = 0, 'http', 'redis') AS protocol,
  if(number % 10 = 0, concat('GET /api/v1/items/', toString(intDiv(number, 10) % 30)),
     if(number % 2 = 0, 'SELECT orders', 'GET')) AS operation,
  if(cityHash64(number) % 97 = 0, 'error', 'ok') AS status,
  if(cityHash64(number) % 97 = 0, '500', '200') AS status_code, '' AS error,
  {t0} + intDiv(number, 10) * {step} + (number % 10) * 100000 AS start_ns,
  start_ns + 50000 + cityHash64(number, 1) % 80000000 AS end_ns,
  concat('svc-', toString(cityHash64(intDiv(number, 10)) % 40)) AS service,
  1000 + cityHash64(intDiv(number, 10)) % 40 AS pid, pid + 1 AS tid,
  concat(service, '-bin') AS process, 123456 AS cgroup_id, 4026531992 AS netns,
  'tcp' AS transport, '10.0.1.10' AS local_addr,
  toUInt16(if(number % 10 = 0, 8080, 30000 + cityHash64(number, 2) % 30000)) AS local_port,
  '10.0.3.30' AS remote_addr,
  toUInt16(if(number % 10 = 0, 30000 + cityHash64(number, 2) % 30000, 6379)) AS remote_port,
  toNullable(cityHash64(number, 3) % 4294967296) AS req_seq,
  toNullable(cityHash64(number, 4) % 4294967296) AS resp_seq,
  toNullable(toUInt64((number % 10) * 40)) AS req_offset,
  toNullable(toUInt64((number % 10) * 80)) AS resp_offset,
  toUInt64(40 + number % 300) AS req_bytes, toUInt64(80 + number % 1200) AS resp_bytes,
  map() AS trace_headers,
  if(number % 10 = 0, map('http.request.method', 'GET', 'http.route', '/api/v1/items/{{id}}'),
     map('db.system', if(number % 2 = 0, 'postgresql', 'redis'))) AS attributes,
  if(number % 10 = 0, map('http.response.status_code', status_code), map()) AS attributes_json,
  map('k8s.namespace.name', 'shop', 'k8s.pod.name', concat(service, '-7d9c-xk2')) AS resource,
  '' AS incomplete, concat('node-', toString(cityHash64(intDiv(number, 10)) % 5)) AS agent
FROM numbers({n})
SETTINGS max_insert_threads = 2, max_threads = 2
"""


def bench_queries(n: int, queries: int) -> dict:
    from server.storage.base import TraceQuery
    from server.storage.chdb_store import ChdbStore

    data = tempfile.mkdtemp(prefix="zt-bench-store-")
    st = ChdbStore(data)
    now = time.time_ns()
    window_ns = 3_600_000_000_000  # the spans cover the last hour
    step = window_ns // max(n // 10, 1)
    t = time.perf_counter()
    done = 0
    chunk = 2_000_000
    while done < n:  # in chunks so that memory stays small
        k = min(chunk, n - done)
        st._command(
            FILL_SQL.format(db=st.db, t0=now - window_ns, step=step, n=k).replace(
                "numbers(" + str(k) + ")", f"numbers({done}, {k})"
            )
        )
        done += k
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    st.flush()
    merge_s = time.perf_counter() - t
    stats = st.stats()
    index_bytes = int(
        st._select(
            "SELECT sum(bytes_on_disk) AS b FROM system.parts WHERE active "
            "AND database = {db:String} AND table = 'search_index'",
            {"db": st.db},
        )[0]["b"]
        or 0
    )
    tids = [
        r["t"]
        for r in st._select(
            f"SELECT lower(hex(trace_id)) AS t FROM {st.table} WHERE span_id != '' "
            f"AND cityHash64(span_id) % {max(n // 2000, 1)} = 0 LIMIT {queries}"
        )
    ]
    lat_trace = []
    for tid in tids:
        t = time.perf_counter()
        spans = st.get_trace(tid)
        lat_trace.append(time.perf_counter() - t)
        assert spans
    searches = [
        TraceQuery(service="svc-3", since_ns=now - 15 * 60 * 10**9, limit=20),
        TraceQuery(service="svc-7", min_duration_ns=70 * MS, limit=20),
        TraceQuery(status="error", since_ns=now - 3600 * 10**9, limit=20),
        TraceQuery(service="svc-11", operation="GET /api/v1/items/4", limit=20),
        TraceQuery(tags={"http.response.status_code": "500"}, since_ns=now - 900 * 10**9),
    ]
    lat_search = []
    by_kind: dict[str, list[float]] = {}
    kinds = [
        "service+15m",
        "service+min-duration",
        "status=error+1h",
        "service+operation",
        "tag+15m",
    ]
    for i in range(queries):
        q = searches[i % len(searches)]
        t = time.perf_counter()
        st.search_traces(q)
        took = time.perf_counter() - t
        lat_search.append(took)
        by_kind.setdefault(kinds[i % len(kinds)], []).append(took)
    t = time.perf_counter()
    st.services(now - 3600 * 10**9, 0)
    services_s = time.perf_counter() - t
    st.close()
    # GetTrace with the cross-node join, over gRPC, in a server process on the same data.
    p, addr = start_server(data, cpu=None)
    lat_join = []
    try:
        with grpc.insecure_channel(addr) as ch:
            q = query_pb2_grpc.QueryServiceStub(ch)
            for tid in tids[: max(20, queries // 5)]:
                t = time.perf_counter()
                q.GetTrace(query_pb2.GetTraceRequest(trace_id=tid), timeout=60)
                lat_join.append(time.perf_counter() - t)
    finally:
        stop(p)
    shutil.rmtree(data, ignore_errors=True)
    return {
        "spans": stats["spans"],
        "fill_s": fill_s,
        "merge_s": merge_s,
        "bytes_per_span": stats["bytes"] / max(stats["spans"], 1),
        "index_bytes_per_span": index_bytes / max(stats["spans"], 1),
        "trace_p50_ms": 1e3 * statistics.median(lat_trace),
        "trace_p99_ms": 1e3 * pct(lat_trace, 0.99),
        "search_p50_ms": 1e3 * statistics.median(lat_search),
        "search_p99_ms": 1e3 * pct(lat_search, 0.99),
        "join_p50_ms": 1e3 * statistics.median(lat_join),
        "join_p99_ms": 1e3 * pct(lat_join, 0.99),
        "services_ms": 1e3 * services_s,
        "search_by_kind_ms": {
            k: (1e3 * statistics.median(v), 1e3 * pct(v, 0.99)) for k, v in by_kind.items()
        },
    }


# -- HTTP latency (issue 16): Tempo API over HTTP on a store with cross-node fragments --

# 15 numbers per logical request: fragment A (numbers 0-9: an HTTP server span of one
# service and 9 client calls, one of them HTTP to a second service, stored by one
# agent) and fragment B (10-14: that second service's server span, parentless, and 4
# client calls, stored by another agent under its own trace id).  The HTTP pair shares
# req_seq and resp_seq and, on every other request, an x-request-id header: exactly
# what the cross-node join has to find.  Roots carry http.response.status_code (500 on
# 1 root in 97, with status error); one hour of traffic, 40 services, 5 agents.
HTTP_FILL_SQL = """
INSERT INTO {db}.spans SELECT
  substring(MD5(concat(toString(g), if(p >= 10, 'b', 'a'))), 1, 16) AS trace_id,
  substring(MD5(concat('s', toString(number))), 1, 8) AS span_id,
  if(p IN (0, 10), '',
     substring(MD5(concat('s', toString(number - if(p >= 10, p - 10, p)))), 1, 8))
    AS parent_span_id,
  if(p IN (0, 10), 'server', 'client') AS kind, 'S' AS source,
  multiIf(p IN (0, 1, 10), 'http', p % 2 = 0, 'postgresql', 'redis') AS protocol,
  multiIf(p = 0, concat('GET /api/v1/items/', toString(g % 30)),
          p IN (1, 10), 'GET /api/v1/stock', p % 2 = 0, 'SELECT orders', 'GET') AS operation,
  if(p = 0 AND cityHash64(g) % 97 = 0, 'error', 'ok') AS status,
  multiIf(p IN (0, 1, 10), if(status = 'error', '500', '200'), '') AS status_code,
  '' AS error,
  {t0} + g * {step} + p * 100000 AS start_ns,
  start_ns + if(p = 0, 20000000, 50000) + cityHash64(number, 1) % 60000000 AS end_ns,
  concat('svc-', toString(if(p >= 10, (cityHash64(g) + 1 + cityHash64(g, 5) % 39) % 40,
                                cityHash64(g) % 40))) AS service,
  1000 + cityHash64(service) % 1000 AS pid, pid + 1 AS tid,
  concat(service, '-bin') AS process, 123456 AS cgroup_id, 4026531992 AS netns,
  'tcp' AS transport,
  if(p >= 10, '10.0.2.20', '10.0.1.10') AS local_addr,
  toUInt16(multiIf(p IN (0, 10), 8080, p = 1, 30000 + cityHash64(g, 2) % 30000,
                   30000 + cityHash64(number, 2) % 30000)) AS local_port,
  multiIf(p = 1, '10.0.2.20', p = 10, '10.0.1.10', p IN (0, 10), '10.0.9.9',
          '10.0.3.30') AS remote_addr,
  toUInt16(multiIf(p = 1, 8080, p = 10, 30000 + cityHash64(g, 2) % 30000, p = 0,
                   40000 + cityHash64(number, 2) % 20000, p % 2 = 0, 5432, 6379))
    AS remote_port,
  toNullable(if(p IN (1, 10), cityHash64(g, 30), cityHash64(number, 3)) % 4294967296) AS req_seq,
  toNullable(if(p IN (1, 10), cityHash64(g, 40), cityHash64(number, 4)) % 4294967296)
    AS resp_seq,
  toNullable(toUInt64((p % 10) * 40)) AS req_offset,
  toNullable(toUInt64((p % 10) * 80)) AS resp_offset,
  toUInt64(40 + number % 300) AS req_bytes, toUInt64(80 + number % 1200) AS resp_bytes,
  if(p IN (1, 10) AND g % 2 = 0, map('x-request-id', lower(hex(MD5(toString(g))))), map())
    AS trace_headers,
  multiIf(p IN (0, 10), map('http.request.method', 'GET', 'http.route', '/api/v1/items/{{id}}'),
          p = 1, map('http.request.method', 'GET', 'url.full', 'http://10.0.2.20:8080/api/v1/stock'),
          map('db.system', if(p % 2 = 0, 'postgresql', 'redis'))) AS attributes,
  if(p IN (0, 10), map('http.response.status_code', status_code), map()) AS attributes_json,
  map('k8s.namespace.name', 'shop', 'k8s.pod.name', concat(service, '-7d9c-xk2'),
      'host.name', agent) AS resource,
  '' AS incomplete,
  concat('node-', toString((cityHash64(g) + if(p >= 10, 1, 0)) % 5)) AS agent
FROM (SELECT number, intDiv(number, 15) AS g, number % 15 AS p FROM numbers({off}, {n}))
SETTINGS max_insert_threads = 2, max_threads = 2
"""
HTTP_TRACEQL = {
    # name -> TraceQL as Grafana's query builder writes it (two attribute conditions)
    "service+status_code=500": '{ resource.service.name = "svc-3" && '
                               "span.http.response.status_code = 500 }",
    "pod+db.system": '{ resource.k8s.pod.name = "svc-7-7d9c-xk2" && '
                     'span.db.system = "redis" }',
    "method+status_code=500": '{ span.http.request.method = "GET" && '
                              "span.http.response.status_code = 500 }",
    "service+route": '{ resource.service.name = "svc-11" && '
                     'span.http.route = "/api/v1/items/{id}" }',
}


def start_http_server(data: str, root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """`zerotrace server` (of the tree at `root`) with its HTTP API on a free port:
    (process, host:port)."""
    cmd = [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0",
           "--data", data, "--http", "127.0.0.1:0"]
    p = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, start_new_session=True)
    for _ in range(5):
        line = p.stdout.readline()
        if "HTTP API" in line:
            return p, line.rsplit("http://", 1)[1].strip()
        if not line:
            break
    stop(p)
    raise RuntimeError(f"server did not start its HTTP API: {line!r}")


def fill_http_store(data: str, n: int) -> dict:
    """`n` spans (a multiple of 15) in a new store under `data`, merged."""
    from server.storage.chdb_store import ChdbStore

    st = ChdbStore(data)
    now = time.time_ns()
    window_ns = 3_600_000_000_000
    step = window_ns // max(n // 15, 1)
    t = time.perf_counter()
    done, chunk = 0, 1_500_000
    while done < n:
        k = min(chunk, n - done)
        st._command(HTTP_FILL_SQL.format(db=st.db, t0=now - window_ns, step=step,
                                         off=done, n=k))
        done += k
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    st.flush()
    merge_s = time.perf_counter() - t
    stats = st.stats()
    # requests to ask for: fragment A ids (the one a search shows) and, one in three,
    # fragment B ids (the join then finds A from the server side)
    rng = random.Random(16)
    gs = rng.sample(range(n // 15), min(n // 15, 2000))
    ids = [r["t"] for r in st._select(
        "SELECT lower(hex(substring(MD5(concat(toString(g), f)), 1, 16))) AS t FROM "
        "(SELECT arrayJoin(splitByChar(',', {gs:String})) AS g, "
        "if(cityHash64(g) % 3 = 0, 'b', 'a') AS f)",
        {"gs": ",".join(map(str, gs))})]
    st.close()
    return {"spans": stats["spans"], "bytes": stats["bytes"], "fill_s": fill_s,
            "merge_s": merge_s, "ids": ids}


def bench_http(n: int, queries: int, data: str = "", keep: bool = False,
               server_root: Path = ROOT) -> dict:
    """p50/p99 of Tempo's trace by id and two-condition TraceQL searches, over HTTP
    (keep-alive connection, as Grafana's), from a `zerotrace server --http` process
    on a store of `n` spans; `data`: an existing store made by a previous run;
    `server_root`: the source tree whose server answers (`git archive REV` of another
    revision, for before/after on the same store)."""
    import http.client
    import urllib.parse

    n -= n % 15
    made = not data
    data = data or tempfile.mkdtemp(prefix="zt-bench-http-")
    info: dict = {}
    if made or not Path(data, ".bench_ids").exists():
        info = fill_http_store(data, n)
        Path(data, ".bench_ids").write_text("\n".join(info.pop("ids")))
    ids = Path(data, ".bench_ids").read_text().split()
    end = _stored_until_s(data)
    p, addr = start_http_server(data, server_root)
    out: dict = {"fill": info, "load_before": os.getloadavg()[0]}
    try:
        conn = http.client.HTTPConnection(addr, timeout=120)

        cpu_of: dict[int, float] = {}  # id of a wall-time float -> server CPU s

        def get(path: str, accept: str = "") -> tuple[float, bytes]:
            c = _proc_cpu_s(p.pid)
            t = time.perf_counter()
            conn.request("GET", path, headers={"Accept": accept} if accept else {})
            r = conn.getresponse()
            body = r.read()
            took = time.perf_counter() - t
            cpu_of[id(took)] = _proc_cpu_s(p.pid) - c
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
            return took, body

        from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

        for tid in ids[:5]:  # warm-up: marks and primary index into memory
            get(f"/api/traces/{tid}", "application/protobuf")
        lat: dict[str, list[float]] = {"trace by id (protobuf)": [], "trace by id (JSON)": []}
        joined = spans_seen = 0
        for i, tid in enumerate(ids[5:5 + queries]):
            took, body = get(f"/api/traces/{tid}", "application/protobuf")
            lat["trace by id (protobuf)"].append(took)
            td = TracesData.FromString(body)
            k = sum(len(ss.spans) for rs in td.resource_spans for ss in rs.scope_spans)
            spans_seen += k
            joined += k == 15
            if i % 4 == 0:
                lat["trace by id (JSON)"].append(get(f"/api/traces/{tid}")[0])
        out["trace_spans_avg"] = spans_seen / max(1, len(lat["trace by id (protobuf)"]))
        out["trace_joined_frac"] = joined / max(1, len(lat["trace by id (protobuf)"]))
        found = {}
        for i in range(queries):
            name = list(HTTP_TRACEQL)[i % len(HTTP_TRACEQL)]
            qs = urllib.parse.urlencode({"q": HTTP_TRACEQL[name], "limit": 20, "spss": 3,
                                         "start": end - 3600, "end": end})
            took, body = get(f"/api/search?{qs}")
            if i >= len(HTTP_TRACEQL):  # the first round warms up
                lat.setdefault(f"TraceQL {name}", []).append(took)
            found[name] = len(json.loads(body)["traces"])
        out["found"] = found
        conn.close()
    finally:
        stop(p)
        if made and not keep:
            shutil.rmtree(data, ignore_errors=True)
    out["data"] = data
    out["load_after"] = os.getloadavg()[0]
    out["latency_ms"] = {k: (1e3 * statistics.median(v), 1e3 * pct(v, 0.99), len(v))
                         for k, v in lat.items() if v}
    search = [x for k, v in lat.items() if k.startswith("TraceQL") for x in v]
    out["latency_ms"]["TraceQL, all four"] = (1e3 * statistics.median(search),
                                              1e3 * pct(search, 0.99), len(search))
    # the server process's CPU (all threads, chDB's included) per request: what the
    # work costs whatever the machine's load does to the wall time
    # (mean, as /proc counts in clock ticks of 10 ms: per request only sums mean much)
    out["cpu_ms"] = {}
    for k, v in [*lat.items(), ("TraceQL, all four", search)]:
        cpu = [cpu_of[id(x)] for x in v if id(x) in cpu_of]
        if cpu:
            out["cpu_ms"][k] = 1e3 * sum(cpu) / len(cpu)
    return out


def _stored_until_s(data: str) -> int:
    """The end of the searches' one-hour window: now, or for a store filled more
    than an hour ago (a kept --http-data) the end of its hour of spans."""
    from server.storage.chdb_store import ChdbStore

    st = ChdbStore(data)  # before the server opens it: one process a data directory
    try:
        r = st._select(f"SELECT max(start_ns) AS t FROM {st.table}")
    finally:
        st.close()
    last = int(r[0]["t"]) // 1_000_000_000 + 1 if r and r[0]["t"] else 0
    return min(int(time.time()), last) if last else int(time.time())


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_flamegraph() -> dict:
    from server.flamegraph import render_trace

    spans = [
        Span(
            trace_id="ab" * 16,
            span_id=f"{1:016x}",
            start_ns=0,
            end_ns=10**9,
            service="root",
            operation="GET /",
        )
    ]
    for i in range(2, 1001):
        par = spans[(i - 2) // 3]
        spans.append(
            Span(
                trace_id="ab" * 16,
                span_id=f"{i:016x}",
                parent_span_id=par.span_id,
                start_ns=par.start_ns + 10,
                end_ns=max(par.start_ns + 20, par.end_ns - 10),
                service=f"s{i % 7}",
                operation=f"op{i % 13}",
                source="SNA"[i % 3],
            )
        )
    out = {}
    for fmt in ("svg", "html", "speedscope", "folded"):
        best = min(_timed(render_trace, spans, fmt, "bench") for _ in range(5))
        out[f"{fmt}_ms"] = 1e3 * best
    return out


def _timed(f, *a) -> float:
    t = time.perf_counter()
    f(*a)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ingest-spans", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--wire", choices=["arrow", "protobuf"], default="arrow",
                    help="the agent's batch format (GrpcSpanExporter wire)")
    ap.add_argument("--store-spans", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--merge-spans", type=int, default=800_000)
    ap.add_argument("--merge-variants", default=",".join(MERGE_VARIANTS),
                    help=f"comma list of: {','.join(MERGE_VARIANTS)}")
    ap.add_argument("--http-spans", type=int, default=10_000_000,
                    help="spans stored for the HTTP latency run (issue 16)")
    ap.add_argument("--http-data", default="",
                    help="reuse (or make and keep) the HTTP run's store in this directory")
    ap.add_argument("--server-root", default=str(ROOT),
                    help="source tree of the server the HTTP run asks (before/after)")
    ap.add_argument("--skip", default="",
                    help="comma list of: encode,ingest,merge,queries,http,flamegraph")
    ap.add_argument("--only", default="", help="comma list: run only these parts")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if a.only:
        skip = {"encode", "ingest", "merge", "queries", "http", "flamegraph"} - set(
            a.only.split(","))
    print(
        f"cpus: {os.cpu_count()}  load average {os.getloadavg()[0]:.1f}  "
        f"python {sys.version.split()[0]}"
    )
    if "flamegraph" not in skip:
        r = bench_flamegraph()
        print(
            "flame graph, 1000-span trace (best of 5): "
            + "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in r.items())
        )
    if "encode" not in skip:
        r = bench_encode()
        print(f"agent encode, 4000 spans (best of 5): arrow + LZ4 {r['arrow_us']:.1f} us/span "
              f"({r['arrow_bytes']:.0f} B/span); protobuf {r['protobuf_us']:.1f} + gzip "
              f"{r['gzip_us']:.1f} = {r['protobuf_us'] + r['gzip_us']:.1f} us/span "
              f"({r['gzip_bytes']:.0f} B/span)")
    if "ingest" not in skip:
        r = bench_ingest(a.ingest_spans, a.batch, a.threads, a.wire)
        print(
            f"ingest: {r['spans']} spans in {r['seconds']:.2f}s = {r['spans_per_s']:,.0f} spans/s "
            f"(server on 1 core, {a.batch}-span {a.wire} batches, {a.threads} client threads)"
        )
        us, mu = r["server_cpu_us_per_span"], r["merge_cpu_us_per_span"]
        print(
            f"  server CPU during the run: {us:.1f} us/span = {1e6 / us:,.0f} spans per "
            f"CPU-second; merges {mu:.1f} of it, the rest (gRPC, checks, inserts, "
            f"search index) {us - mu:.1f} = {1e6 / (us - mu):,.0f} spans per CPU-second"
        )
        us, mu = r["server_cpu_settled_us_per_span"], r["merge_cpu_settled_us_per_span"]
        print(
            f"  with the merges the run left (settled in {r['settle_s']:.0f}s): {us:.1f} us/span "
            f"= {1e6 / us:,.0f} spans per CPU-second, merges {mu:.1f} of it"
        )
        print(f"  on disk: {r['bytes_per_span']:.1f} bytes/span ({r['stored']} agent-like spans)")
    if "merge" not in skip:
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})  # ClickHouse's merge threads too: one core
        try:
            r = bench_merge_level(a.merge_spans, a.merge_variants.split(","))
        finally:
            os.sched_setaffinity(0, cpus)
        print(f"one merge level ({a.merge_spans} agent-like spans, 8 parts into 1, one "
              "thread): " + "  ".join(f"{k} {v:.2f} us/row" for k, v in r.items()))
    if "queries" not in skip:
        r = bench_queries(a.store_spans, a.queries)
        print(
            f"store: {r['spans']:,} spans (filled in {r['fill_s']:.0f}s, merged in "
            f"{r['merge_s']:.0f}s), {r['bytes_per_span']:.1f} bytes/span "
            f"(search index {r['index_bytes_per_span']:.1f} of them)"
        )
        print(f"  trace by id: p50 {r['trace_p50_ms']:.1f} ms  p99 {r['trace_p99_ms']:.1f} ms")
        print(f"  search:      p50 {r['search_p50_ms']:.1f} ms  p99 {r['search_p99_ms']:.1f} ms")
        for k, (p50, p99) in r["search_by_kind_ms"].items():
            print(f"    {k:<22} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
        print(
            f"  GetTrace+join over gRPC: p50 {r['join_p50_ms']:.1f} ms  "
            f"p99 {r['join_p99_ms']:.1f} ms"
        )
        print(f"  services (1h, all): {r['services_ms']:.0f} ms")
    if "http" not in skip:
        data = a.http_data
        if data:
            Path(data).mkdir(parents=True, exist_ok=True)
        r = bench_http(a.http_spans, a.queries, data=data, keep=bool(data),
                       server_root=Path(a.server_root))
        f = r["fill"]
        if f:
            print(f"HTTP store: {f['spans']:,} spans (filled in {f['fill_s']:.0f}s, merged in "
                  f"{f['merge_s']:.0f}s), {f['bytes'] / max(f['spans'], 1):.1f} bytes/span "
                  "(span table, search index, join keys)")
        print(f"  HTTP API of `zerotrace server` (load {r['load_before']:.1f} -> "
              f"{r['load_after']:.1f}); traces fetched: {r['trace_spans_avg']:.1f} spans "
              f"on average, {100 * r['trace_joined_frac']:.0f} % joined across nodes")
        for k, (p50, p99, cnt) in r["latency_ms"].items():
            print(f"    {k:<36} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  ({cnt} requests)  "
                  f"server CPU {r['cpu_ms'].get(k, 0.0):5.1f} ms a request")
        print(f"  traces found per search (limit 20): {r['found']}")
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f} (machine shared; figures vary with it)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
