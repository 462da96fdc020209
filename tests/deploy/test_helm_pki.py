"""The chart's CA, certificates and tokens (issue 14: auth.generate), used for real.

The script the chart's pre-install Job runs is taken from the rendered ConfigMap and
run here with --out (real openssl), and its files are mounted the way the rendered
StatefulSet and DaemonSet mount them: a real `zerotrace server` started with the
rendered args' TLS and token files serves the agents' ingest token over TLS checked
against the CA under the Service's name, the read token reads, the ingest token does
not read, a plaintext client and a client trusting another CA are refused; /metrics
speaks HTTPS.  Two runs make different CAs and tokens (nothing fixed in the chart).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from .manifests import chart_objects

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "server"))

NS = "observability"


def _objs(kind: str, docs) -> list[dict]:
    return [d for _, d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def rendered():
    return chart_objects(NS)  # the defaults: auth.generate true


def _run_script(rendered, out: Path) -> dict[str, Path]:
    (cm,) = [d for d in _objs("ConfigMap", rendered) if d["metadata"]["name"].endswith("-pki")]
    out.mkdir(parents=True, exist_ok=True)
    script = out / "zerotrace-pki.py"
    script.write_text(cm["data"]["zerotrace-pki.py"])
    (job,) = _objs("Job", rendered)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    args = c["command"][2:]  # after python3 and the script path
    subprocess.run([sys.executable, str(script), *args, "--out", str(out)], check=True,
                   capture_output=True, timeout=60)
    rel = args[args.index("--release") + 1]
    return {"tls": out / f"{rel}-tls", "tokens": out / f"{rel}-tokens", "release": rel,
            "service": args[args.index("--service") + 1]}


def _mounted(pod: dict, container: dict, path: str, files: dict) -> Path:
    """The local file behind `path` of `container`, following its volume mounts to
    the Secret items they name."""
    for m in container["volumeMounts"]:
        if path.startswith(m["mountPath"] + "/"):
            vol = next(v for v in pod["volumes"] if v["name"] == m["name"])
            secret = vol["secret"]["secretName"]
            name = path[len(m["mountPath"]) + 1:]
            item = next(i for i in vol["secret"]["items"] if i["path"] == name)
            kind = "tls" if secret.endswith("-tls") else "tokens"
            assert secret == f"{files['release']}-{kind}", secret
            return files[kind] / item["key"]
    raise AssertionError(f"{path} is not mounted")


def test_generated_pki_and_tokens_secure_a_real_server(rendered, tmp_path):
    from factory import now_ns, server_span
    from zt_process import ServerProcess

    from proto.convert import span_to_pb
    from proto.credentials import ClientSecurity
    from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

    files = _run_script(rendered, tmp_path)
    ns = NS
    (sts,) = _objs("StatefulSet", rendered)
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    cert = _mounted(pod, c, args[args.index("--tls-cert") + 1], files)
    key = _mounted(pod, c, args[args.index("--tls-key") + 1], files)
    tokens = _mounted(pod, c, args[args.index("--token-file") + 1], files)
    (ds,) = _objs("DaemonSet", rendered)
    apod = ds["spec"]["template"]["spec"]
    (agent,) = apod["containers"]
    ca = _mounted(apod, agent, agent["args"][agent["args"].index("--tls-ca") + 1], files)
    tok_env = next(e for e in agent["env"] if e["name"] == "ZEROTRACE_TOKEN")
    ref = tok_env["valueFrom"]["secretKeyRef"]
    assert ref["name"] == f"{files['release']}-tokens"
    ingest = (files["tokens"] / ref["key"]).read_text().strip()
    read = (files["tokens"] / "read-token").read_text().strip()
    # the agents dial <release>-server.<namespace>.svc: the certificate's name
    server_addr = next(e["value"] for e in agent["env"] if e["name"] == "ZEROTRACE_SERVER")
    server_name = server_addr.rpartition(":")[0]
    assert server_name == f"{files['service']}.{ns}.svc"

    srv = ServerProcess(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key),
                        "--token-file", str(tokens), "--metrics", "127.0.0.1:0")
    srv.start()
    try:
        assert "tls=on" in srv.line
        sec = ClientSecurity(ca=str(ca), token=ingest, server_name=server_name)
        t = now_ns()
        span = server_span(start_ns=t, end_ns=t + 5000)
        req = ingest_pb2.PushRequest()
        span_to_pb(span, req.spans.add())
        with sec.channel(srv.addr) as ch:
            r = ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=20,
                                                           metadata=sec.metadata())
        assert r.accepted == 1

        def get(s: ClientSecurity):
            with s.channel(srv.addr) as ch:
                return query_pb2_grpc.QueryServiceStub(ch).GetTrace(
                    query_pb2.GetTraceRequest(trace_id=span.trace_id), timeout=20,
                    metadata=s.metadata())

        reader = ClientSecurity(ca=str(ca), token=read, server_name=server_name)
        assert len(get(reader).spans) == 1
        with pytest.raises(grpc.RpcError) as ei:
            get(sec)  # the agents' token cannot read traces
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as ei:  # plaintext to the TLS port
            get(ClientSecurity(token=read))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        other = _run_script(rendered, tmp_path / "other")
        assert (other["tokens"] / "read-token").read_text() != (
            files["tokens"] / "read-token").read_text()
        with pytest.raises(grpc.RpcError) as ei:  # another install's CA
            get(ClientSecurity(ca=str(other["tls"] / "ca.crt"), token=read,
                               server_name=server_name))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        metrics = srv.line.split("metrics=")[1].split()[0].replace("http://", "https://")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # 127.0.0.1 is in the certificate, checked by chain
        with urllib.request.urlopen(metrics, context=ctx, timeout=10) as resp:
            assert b"zerotrace_server_spans_accepted" in resp.read()
    finally:
        srv.stop()


def test_generated_files_are_private_and_the_ca_key_is_not_kept(rendered, tmp_path):
    files = _run_script(rendered, tmp_path)
    names = sorted(p.name for p in files["tls"].iterdir())
    assert names == ["ca.crt", "tls.crt", "tls.key"]  # no ca.key: nothing else signed
    for d in (files["tls"], files["tokens"]):
        for p in d.iterdir():
            assert p.stat().st_mode & 0o077 == 0, p
    text = subprocess.run(["openssl", "x509", "-in", str(files["tls"] / "tls.crt"),
                           "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout
    svc = files["service"]
    for name in (svc, f"{svc}.{NS}", f"{svc}.{NS}.svc", f"{svc}.{NS}.svc.cluster.local"):
        assert f"DNS:{name}," in text or text.rstrip().endswith(f"DNS:{name}")
    assert "CA:FALSE" in text and "TLS Web Server Authentication" in text
    lines = (files["tokens"] / "server-tokens").read_text().split("\n")
    roles = sorted(line.split()[0] for line in lines if line)
    assert roles == ["ingest", "read"]
