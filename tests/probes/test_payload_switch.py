"""Payload capture switched off per namespace and per pod (issue 14), under the real probes.

Real processes in real cgroups named as the kubelet and containerd/CRI-O name them stand
for the recorded pods of tests/enrich/fixtures (podlist.json, served by the replay API):
shop/checkout (two containers: on), shop/db-0 (off by its annotation
zerotrace.io/payload-capture, added to the recorded list) and monitoring/node-exporter
(off by the policy's namespace setting).  They talk HTTP/1.1 in clear text and HTTP over
TLS (Python `ssl`, the system libssl: bpf/tls.c's plaintext records).  Every record the
ring gives is kept and searched byte for byte: no byte a switched-off pod's syscalls
moved is in it, while the records still say how many bytes moved; checkout's payload is
there.  Before the switch is bound, one exchange of node-exporter is captured whole (as
a container started between two cgroup walks would be): its spans leave the enricher
with L4 facts only.  The kernel's counters of what it withheld match the records, and
reach the agent's Prometheus metrics."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agent.enrich import EnrichConfig, Enricher
from agent.enrich.capture import ANNOTATION, ATTRIBUTE, SPANS_SCRUBBED, CapturePolicy
from agent.enrich.cgroup import cgroup_id_of
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline
from agent.probes import abi, capture
from agent.probes.capture import CaptureMap
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.enrich.cgroups import CgroupLab
from tests.enrich.kubereplay import ReplayApi, Reply, fixture_json

pytestmark = pytest.mark.kernel
PY = sys.executable
HERE = Path(__file__).resolve().parent
HTTPIO = HERE / "httpio.py"
TLS_PROGRAMS = HERE.parent / "tls" / "programs"
TAG = secrets.token_hex(4)
# markers in request paths: each names whose syscalls write it
SECRET_MON = f"secret-mon-{TAG}"   # node-exporter -> node-exporter (off, namespace)
SECRET_DB = f"secret-db-{TAG}"     # checkout -> db-0: db-0 (off, annotation) reads it
SECRET_TLS = f"secret-tls-{TAG}"   # node-exporter -> node-exporter over TLS
VISIBLE = f"visible-{TAG}"         # checkout (envoy) -> checkout
VISIBLE_TLS = f"visible-tls-{TAG}"  # checkout -> node-exporter over TLS
EARLY = f"early-{TAG}"             # node-exporter, before the switch is bound
SECRET_NEW = f"secret-new-{TAG}"   # a node-exporter container the agent has not seen yet


def _recorded_pods() -> tuple[dict, dict]:
    """The recorded pod list, db-0 annotated off; and name -> (qos, uid, container ids)."""
    podlist = fixture_json("podlist.json")
    pods = {}
    for item in podlist["items"]:
        meta = item["metadata"]
        if meta["name"] == "db-0":
            meta.setdefault("annotations", {})[ANNOTATION] = "off"
        cids = [c["containerID"].rpartition("://")[2]
                for c in item["status"].get("containerStatuses", [])]
        pods[meta["name"].split("-")[0]] = (meta["uid"], cids)
    return podlist, pods


def _slice(qos: str, uid: str) -> str:
    u = uid.replace("-", "_")
    return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cg: Path, *argv: str, **kw) -> subprocess.Popen:
    """argv run inside cgroup cg: the shell moves itself in, then execs."""
    script = f'echo $$ > "{cg}/cgroup.procs" && exec "$@"'
    return subprocess.Popen(["sh", "-c", script, "sh", *argv], **kw)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port}")


class Run:
    """Everything one run saw: raw ring records, traces' spans, counters."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.early_records: list[bytes] = []
        self.spans: list = []
        self.cg: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.metrics_text = ""
        self.drops: dict[str, int] = {}
        self.listed: frozenset[int] = frozenset()
        self.levels: frozenset[int] = frozenset()
        self.walked_before_new = True
        self.new_listed = True


def _pump(tracer: SocketTracer, pipeline: Pipeline, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        pipeline.process(tracer.poll(0.05))
        pipeline.tick()
    for _ in range(5):  # what is still on its way
        pipeline.process(tracer.poll(0.05))
        pipeline.tick()


@pytest.fixture(scope="module")
def run():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    podlist, pods = _recorded_pods()
    lab = CgroupLab()
    if not lab.v2:
        pytest.fail("no cgroup v2 hierarchy mounted")
    api = ReplayApi().start()
    api.script("list", Reply(body=json.dumps(podlist).encode()))
    api.fallback["list"] = Reply(body=json.dumps(podlist).encode())
    tmp = Path(tempfile.mkdtemp(prefix="zt-payload-"))
    procs: list[subprocess.Popen] = []
    out = Run()
    try:
        uid, (c_checkout, c_envoy) = pods["checkout"]
        cgs = {
            "checkout": lab.make(f"{_slice('burstable', uid)}/cri-containerd-{c_checkout}.scope"),
            "envoy": lab.make(f"{_slice('burstable', uid)}/cri-containerd-{c_envoy}.scope"),
        }
        uid, (c_db,) = pods["db"]
        cgs["db"] = lab.make(f"{_slice('besteffort', uid)}/crio-{c_db}.scope")
        uid, (c_exp,) = pods["node"]
        cgs["exporter"] = lab.make(f"{_slice('besteffort', uid)}/cri-containerd-{c_exp}.scope")
        out.cg = {k: cgroup_id_of(str(v)) for k, v in cgs.items()}

        policy = CapturePolicy.from_mapping({"capture": "on",
                                             "namespaces": {"monitoring": "off"}})
        enricher = Enricher(EnrichConfig(
            node_name="node-a", api_host=api.url, host_name="test-host",
            backoff_initial=0.02, backoff_max=0.1, request_timeout=2.0,
            payload_capture=policy))
        assert enricher.pods.wait_synced(15)

        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"),
                        "-days", "1", "-subj", "/CN=zerotrace-test"],
                       check=True, capture_output=True)
        ports = {k: _free_port() for k in ("mon", "db", "checkout", "tls")}
        cfg = ProbeConfig(ports=set(ports.values()))
        with SocketTracer(cfg) as tracer:
            drain = tracer._ring.drain  # every record the ring gives, kept

            def keep(max_records: int = 1 << 20) -> list[bytes]:
                recs = drain(max_records)
                out.records.extend(recs)
                return recs

            tracer._ring.drain = keep
            for name, port, argv in (
                ("exporter", ports["mon"], [str(HTTPIO), "server", "127.0.0.1"]),
                ("db", ports["db"], [str(HTTPIO), "server", "127.0.0.1"]),
                ("checkout", ports["checkout"], [str(HTTPIO), "server", "127.0.0.1"]),
            ):
                procs.append(_spawn(cgs[name], PY, *argv, str(port),
                                    stdout=subprocess.DEVNULL))
            procs.append(_spawn(cgs["exporter"], PY, str(TLS_PROGRAMS / "https_server.py"),
                                "127.0.0.1", str(ports["tls"]), str(tmp / "cert.pem"),
                                str(tmp / "key.pem"), stdout=subprocess.DEVNULL))
            for port in ports.values():
                _wait_port(port)

            def http(cg: str, port: int, marker: str, n: int = 3) -> None:
                plan = json.dumps([[f"/{marker}/{i}" for i in range(n)]])
                r = _spawn(cgs[cg], PY, str(HTTPIO), "client", "127.0.0.1", str(port), plan,
                           stdout=subprocess.PIPE, text=True)
                assert json.loads(r.communicate(timeout=30)[0]) == {"sent": n, "read": n}

            def https(cg: str, marker: str) -> None:
                r = _spawn(cgs[cg], PY, str(TLS_PROGRAMS / "https_client.py"), "https",
                           "127.0.0.1", str(ports["tls"]), f"/{marker}/0", f"/{marker}/1",
                           stdout=subprocess.PIPE, text=True)
                assert json.loads(r.communicate(timeout=30)[0]) == [[404, 9], [404, 9]]

            pipeline = Pipeline(agent_name="node-a")
            pipeline.enricher = enricher
            traces: list = []
            pipeline.on_trace_obj = traces.append

            def seen(marker: str):
                m = marker.encode()
                return lambda: any(m in r for r in out.records)

            # 1. before the switch: node-exporter's exchange is captured whole
            http("exporter", ports["mon"], EARLY, n=2)
            _pump(tracer, pipeline, seen(EARLY))
            out.early_records = list(out.records)

            # 2. the switch bound to the probes: db-0 and node-exporter listed
            # (what agent/factory.py's attach() is to call: capture.bind(enricher, tracer))
            assert isinstance(capture.bind(enricher, tracer), CaptureMap)
            out.listed = enricher.capture.listed
            out.levels = enricher.capture.levels

            # 3. a container started in node-exporter's pod after the last walk: covered
            # by the probes' check of the pod's own cgroup (an ancestor), not by a walk
            refreshes = enricher.capture.refreshes
            cgs["new"] = lab.make(f"{_slice('besteffort', uid)}/cri-containerd-{'f' * 64}.scope")
            out.cg["new"] = cgroup_id_of(str(cgs["new"]))
            http("new", ports["mon"], SECRET_NEW)
            out.walked_before_new = enricher.capture.refreshes != refreshes
            out.new_listed = out.cg["new"] in enricher.capture.listed

            # 4. traffic of every pod
            http("exporter", ports["mon"], SECRET_MON)
            http("envoy", ports["checkout"], VISIBLE)
            http("checkout", ports["db"], SECRET_DB)
            https("exporter", SECRET_TLS)
            https("checkout", VISIBLE_TLS)
            _pump(tracer, pipeline, lambda: seen(VISIBLE)() and seen(VISIBLE_TLS)())
            pipeline.stitcher.tick(time.time_ns() + 10**12)
            time.sleep(0.3)
            out.drops = tracer.drops()
            out.counters = enricher.counters()
            m = AgentMetrics()
            m.add_source("enrich", enricher.counters)
            out.metrics_text = generate_latest(m.registry).decode()
            pipeline.close()
            out.spans = [s for t in traces for s in t.spans]
        yield out
    finally:
        for p in procs:
            p.kill()
            p.wait()
        api.stop()
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _events(records: list[bytes]):
    from agent.probes.events import SocketEvent

    return [SocketEvent(r) for r in records if len(r) >= abi.EVENT_SIZE]


def test_the_switch_lists_the_cgroups_of_the_pods_switched_off(run):
    assert {run.cg["db"], run.cg["exporter"]} <= run.listed
    assert len(run.levels) == 1  # the pods' own cgroups, all at one depth
    assert not {run.cg["checkout"], run.cg["envoy"]} & run.listed


def test_no_byte_of_a_switched_off_pod_reaches_the_ring(run):
    off = {run.cg["db"], run.cg["exporter"]}
    late = run.records[len(run.early_records):]
    for marker in (SECRET_MON, SECRET_TLS, SECRET_NEW):  # both ends switched off
        assert not [r for r in run.records if marker.encode() in r], marker
    # checkout -> db-0: only checkout's own write carries it; db-0's read does not
    holders = [e for e in _events(late) if SECRET_DB.encode() in e.payload]
    assert holders and {e.cgroup_id for e in holders} == {run.cg["checkout"]}
    data = [e for e in _events(late) if e.type == abi.EV_DATA and e.cgroup_id in off]
    assert data, "the switched-off pods' syscalls are still traced"
    for e in data:
        assert e.payload == b"" and e.captured == 0, e
        assert e.flags & abi.F_NOCAPTURE and e.flags & abi.F_TRUNCATED and e.ret > 0
    # lengths kept: db-0 read the three requests, node-exporter's TLS server its plaintext
    db_in = [e for e in data if e.cgroup_id == run.cg["db"] and e.direction == abi.DIR_INGRESS]
    req = len(f"GET /{SECRET_DB}/0 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sum(e.ret for e in db_in) == 3 * req
    assert [e for e in data if e.flags & abi.F_TLS], "TLS plaintext records withheld too"


def test_a_new_container_of_a_pod_off_is_covered_before_the_agent_sees_it(run):
    assert not run.walked_before_new and not run.new_listed
    new = [e for e in _events(run.records)
           if e.cgroup_id == run.cg["new"] and e.type == abi.EV_DATA]
    assert new and all(e.payload == b"" and e.flags & abi.F_NOCAPTURE for e in new)


def test_another_pods_payload_is_captured(run):
    late = _events(run.records[len(run.early_records):])
    on = {run.cg["checkout"], run.cg["envoy"]}
    vis = [e for e in late if VISIBLE.encode() in e.payload]
    assert {e.cgroup_id for e in vis} == on  # client (envoy) and server (checkout)
    tls = [e for e in late if VISIBLE_TLS.encode() in e.payload]
    assert tls and all(e.flags & abi.F_TLS and e.cgroup_id == run.cg["checkout"] for e in tls)
    assert not any(e.flags & abi.F_NOCAPTURE for e in late if e.cgroup_id in on)


def test_no_payload_of_a_switched_off_pod_in_any_span(run):
    # captured before the switch was bound: in the ring...
    assert any(EARLY.encode() in r for r in run.early_records)
    for s in run.spans:
        text = json.dumps(s.to_dict())
        for marker in (EARLY, SECRET_MON, SECRET_TLS, SECRET_NEW):
            assert marker not in text, s
    # ...and its spans leave the enricher with L4 facts only
    mon = [s for s in run.spans if s.resource.get("k8s.namespace.name") == "monitoring"]
    assert mon, [(s.operation, s.resource.get("k8s.pod.name")) for s in run.spans]
    for s in mon:
        assert s.attributes[ATTRIBUTE] == "off"
        assert s.operation == s.protocol == "http"
        assert not s.trace_headers and not s.status_code
        assert s.req_bytes > 0 and s.local.port and s.remote.port
    # db-0 made no span: no byte, no protocol; checkout's client span to it is checkout's
    assert not [s for s in run.spans if s.resource.get("k8s.pod.name") == "db-0"]
    cli = [s for s in run.spans if SECRET_DB in s.operation]
    assert cli and all(s.resource["k8s.pod.name"].startswith("checkout") for s in cli)
    visible = [s for s in run.spans if VISIBLE in s.operation and VISIBLE_TLS not in s.operation]
    assert {s.kind for s in visible} == {"client", "server"}
    assert all(ATTRIBUTE not in s.attributes for s in visible)


def test_what_was_withheld_is_counted_and_exported(run):
    assert run.drops.get("ringbuf_full", 0) == 0
    late = _events(run.records[len(run.early_records):])
    withheld = [e for e in late if e.flags & abi.F_NOCAPTURE]
    assert run.counters["payload_off_records"] == len(withheld) > 0
    assert run.counters["payload_off_bytes"] == sum(e.ret for e in withheld)
    assert run.counters[SPANS_SCRUBBED] >= 1
    line = ('zerotrace_stage_events_total{reason="payload_off_records",stage="enrich"} '
            f'{float(len(withheld))}')
    assert line in run.metrics_text



def test_default_off_captures_only_the_cgroups_switched_on():
    """`capture: off` (ALLOW): the probes capture the listed cgroups only.  A client in
    a cgroup not listed talks to a server in a listed one: the server's records carry
    the request, the client's none of its bytes."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = CgroupLab()
    proc = None
    marker = f"allow-{TAG}"
    try:
        on = lab.make("allow/on")
        off = lab.make("allow/off")
        port = _free_port()
        with SocketTracer(ProbeConfig(ports={port})) as tracer:
            cap = CaptureMap(tracer)
            cap.set(capture.MODE_ALLOW, [cgroup_id_of(str(on))])
            proc = _spawn(on, PY, str(HTTPIO), "server", "127.0.0.1", str(port),
                          stdout=subprocess.DEVNULL)
            _wait_port(port)
            plan = json.dumps([[f"/{marker}/0", f"/{marker}/1"]])
            r = _spawn(off, PY, str(HTTPIO), "client", "127.0.0.1", str(port), plan,
                       stdout=subprocess.PIPE, text=True)
            assert json.loads(r.communicate(timeout=30)[0]) == {"sent": 2, "read": 2}
            events: list = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(
                    [e for e in events if marker.encode() in e.payload]) < 2:
                events += tracer.poll(0.05)
            events += tracer.poll(0.2)
            counted = cap.counters()
        data = [e for e in events if e.type == abi.EV_DATA]
        client = [e for e in data if e.cgroup_id == cgroup_id_of(str(off))]
        server = [e for e in data if e.cgroup_id == cgroup_id_of(str(on))]
        assert client and all(e.payload == b"" and e.flags & abi.F_NOCAPTURE for e in client)
        assert sum(marker.encode() in e.payload for e in server) == 2
        assert not any(e.flags & abi.F_NOCAPTURE for e in server)
        assert counted["payload_off_records"] == len(client)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        lab.close()
