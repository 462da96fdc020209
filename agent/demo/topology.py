"""The demo topology: pods as network namespaces, real servers in them, torn down after.

    client -> gw (nginx :80) -> api (Python :8000) -> licence (:7070, a line protocol
                                                       no parser knows: no span)
                                                    -> postgres (:5432)
                                                    -> inventory (Go or Node :8080) -> redis (:6379)
                          Go inventory only: -> postgres (lib/pq, two round trips a query)
                                             -> pricing (Go :8081, pooled http.Client)
    every pod resolves names through dns (dnsmasq :53, UDP and TCP)

`with DemoTopology(variant="go") as topo:` builds it, waits until every service
answers, and on leaving (exceptions, Ctrl-C and SIGTERM included) kills every process
group it started and removes namespaces, bridge, /etc/netns entries and its temp dir.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fidelity, netns, probes, services, stale
from .load import LoadResult

SUBNET = "10.232.0"
POD_HOSTS = {"dns": 2, "gw": 3, "api": 4, "inventory": 5, "redis": 6, "postgres": 7,
             "client": 8, "licence": 9, "pricing": 10}
DNS_NAMES = {f"{pod}.demo.zt": pod for pod in POD_HOSTS}
# Start order; teardown is the reverse.
SERVICES = ("dns", "redis", "postgres", "licence", "pricing", "inventory", "api", "gw")


@dataclass
class Pod:
    """One pod: its namespace, address, netns inode and the process groups started in it."""

    name: str
    netns: str
    addr: str
    inode: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """Live pids in this pod's process groups (nginx workers, postgres backends...)."""
        groups = {p.pid for p in self.procs if p.poll() is None}
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.getpgid(int(d)) in groups:
                        out.append(int(d))
                except OSError:
                    pass
        return sorted(out)


class StartupError(RuntimeError):
    """A service did not come up; the message names it and carries its log tail."""


class DemoTopology:
    """The demo topology (see module docstring); a context manager."""

    def __init__(self, variant: str = "go", gw_workers: int = 2, gw_keepalive: bool = False,
                 startup_timeout: float = 30.0) -> None:
        if variant not in ("go", "node"):
            raise ValueError(f"variant must be 'go' or 'node', not {variant!r}")
        self.variant = variant
        self.gw_workers = gw_workers
        self.gw_keepalive = gw_keepalive
        self.startup_timeout = startup_timeout
        self.tag = uuid.uuid4().hex[:6]
        self.bridge = f"ztdbr{self.tag}"
        self.pods: dict[str, Pod] = {}
        self.tmp: Path | None = None
        self.startup_seconds = 0.0
        self._svc_procs: dict[str, subprocess.Popen] = {}
        self._bridge_made = False
        self._etc_netns_made = False
        self._stopped = True
        self._old_sigterm: Any = None
        self._loads = 0

    # -- public -----------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://{self.pods['gw'].addr}"

    @property
    def required_hops(self) -> tuple[str, ...]:
        """The hops (`pod/kind/protocol`) every request crosses in this variant, for
        `fidelity.measure`; the licence check makes no span, so it is no hop."""
        return fidelity.REQUIRED_HOPS + (fidelity.GO_HOPS if self.variant == "go" else ())

    def __enter__(self) -> DemoTopology:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Build everything and wait for health; on any failure tear down and re-raise."""
        t0 = time.monotonic()
        self._stopped = False
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        try:
            # Slow one-off builds first, before any namespace exists.
            if self.variant == "go":
                services.go_inventory_binary()
            services.go_pricing_binary()
            services.pg_template()
            stale.remove_stale()
            self.tmp = Path(tempfile.mkdtemp(prefix=f"zt-demo-{self.tag}-", dir="/tmp"))
            os.chmod(self.tmp, 0o755)
            (self.tmp / "owner").write_text(stale.owner_record())
            self._make_network()
            self._start_services()
            self._wait_healthy(t0 + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> list[str]:
        """Tear everything down (idempotent); returns the errors met, if any."""
        if self._stopped:
            return []
        self._stopped = True
        main = threading.current_thread() is threading.main_thread()
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        errors: list[str] = []
        try:
            for svc in reversed(SERVICES):
                p = self._svc_procs.get(svc)
                if p is not None:
                    _stop_group(p, signal.SIGINT if svc == "postgres" else signal.SIGTERM)
            for pod in self.pods.values():
                for p in pod.procs:
                    _stop_group(p, signal.SIGTERM)
            for pod in self.pods.values():
                errors += netns.remove_namespace(pod.netns)
            if self._bridge_made:
                errors += netns.remove_link(self.bridge)
            if self._etc_netns_made:
                netns.remove_etc_netns_if_empty()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            if main:
                signal.signal(signal.SIGINT, old_int)
                if self._old_sigterm is not None:
                    signal.signal(signal.SIGTERM, self._old_sigterm)
            atexit.unregister(self.stop)
        return errors

    def run_load(self, requests: int = 100, rate: float = 50.0, concurrency: int = 8,
                 timeout: float = 10.0, max_seconds: float = 120.0) -> list[LoadResult]:
        """Run the load generator in the `client` pod; return its ground truth."""
        assert self.tmp is not None
        self._loads += 1
        out = self.tmp / f"load-{self._loads}.json"
        log = open(self.tmp / f"load-{self._loads}.log", "wb")
        argv = [sys.executable, str(Path(__file__).with_name("load.py")),
                "--url", self.gateway_url, "--requests", str(requests), "--rate", str(rate),
                "--concurrency", str(concurrency), "--timeout", str(timeout),
                "--max-seconds", str(max_seconds), "--out", str(out)]
        p = self._spawn("client", argv, log)
        try:
            rc = p.wait(timeout=max_seconds + timeout + 15)
        except subprocess.TimeoutExpired:
            raise TimeoutError("load generator overran its bound") from None
        finally:  # also on Ctrl-C: the load never outlives this call
            log.close()
            if p.poll() is None:
                _stop_group(p, signal.SIGKILL, grace=0)
            self.pods["client"].procs.remove(p)
        if rc != 0:
            raise RuntimeError(f"load generator exited {rc}:\n{_tail(log.name)}")
        return [LoadResult(*r) for r in json.loads(out.read_text())]

    def run_in(self, pod: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn(*args)` on a thread inside `pod`'s network namespace."""
        return netns.run_in(self.pods[pod].netns, fn, *args)

    def redis(self, *args: str) -> Any:
        """A RESP command sent straight to redis from the client pod."""
        return self.run_in("client", lambda: probes.redis_command(self.pods["redis"].addr,
                                                                  *args))

    def pg_query(self, query: str, params: tuple = ()) -> list[tuple]:
        """A query sent straight to PostgreSQL from the client pod."""
        return self.run_in("client", probes.pg_query, self.pods["postgres"].addr, query,
                           params)

    def dns_log(self) -> str:
        """dnsmasq's query log so far."""
        assert self.tmp is not None
        path = self.tmp / "dnsmasq-queries.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, service: str, lines: int = 20) -> str:
        assert self.tmp is not None
        text = _tail(self.tmp / f"{service}.log", lines)
        extra = {"gw": "nginx-error.log", "dns": "dnsmasq-queries.log"}.get(service)
        if extra:
            text += _tail(self.tmp / extra, lines)
        return text

    def pod_index(self) -> dict[int | str, str]:
        """netns inode -> pod and address -> pod, for `fidelity.measure`."""
        idx: dict[int | str, str] = {}
        for p in self.pods.values():
            idx[p.inode] = p.name
            idx[p.addr] = p.name
        return idx

    # -- building ---------------------------------------------------------------------

    def _make_network(self) -> None:
        self._etc_netns_made = not os.path.isdir("/etc/netns")
        netns.add_bridge(self.bridge)
        self._bridge_made = True
        dns_addr = f"{SUBNET}.{POD_HOSTS['dns']}"
        for i, (name, host) in enumerate(POD_HOSTS.items()):
            pod = Pod(name, f"ztd-{self.tag}-{name}", f"{SUBNET}.{host}")
            self.pods[name] = pod
            netns.add_namespace(pod.netns, self.bridge, f"ztd{self.tag}{i}h", pod.addr)
            pod.inode = netns.inode(pod.netns)
            netns.write_resolv_conf(pod.netns, dns_addr)

    def _spawn(self, pod: str, argv: list[str], log: Any) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.pods[pod].netns, *argv],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd="/")
        self.pods[pod].procs.append(p)
        return p

    def _start_services(self) -> None:
        assert self.tmp is not None
        a = {n: p.addr for n, p in self.pods.items()}
        argvs = {
            "dns": services.dnsmasq_argv(self.tmp, a["dns"],
                                         {n: a[p] for n, p in DNS_NAMES.items()}),
            "redis": services.redis_argv(self.tmp, a["redis"]),
            "postgres": services.postgres_argv(self.tmp, a["postgres"]),
            "licence": services.licence_argv(a["licence"]),
            "pricing": services.pricing_argv(a["pricing"]),
            "inventory": services.inventory_argv(a["inventory"], self.variant),
            "api": services.api_argv(a["api"]),
            "gw": services.nginx_argv(self.tmp, a["gw"],
                                      f"{a['api']}:{services.PORTS['api']}",
                                      self.gw_workers, self.gw_keepalive),
        }
        for svc in SERVICES:
            with open(self.tmp / f"{svc}.log", "wb") as log:
                self._svc_procs[svc] = self._spawn(svc, argvs[svc], log)

    def _probe(self, svc: str) -> None:
        a = {n: p.addr for n, p in self.pods.items()}
        port = services.PORTS.get(svc, 0)
        if svc == "dns":
            for tcp in (False, True):
                got = probes.dns_query(a["dns"], "api.demo.zt", tcp=tcp, timeout=0.5)
                if got != [a["api"]]:
                    raise RuntimeError(f"api.demo.zt resolved to {got}")
        elif svc == "redis":
            if probes.redis_command(a["redis"], "PING", timeout=0.5) != "PONG":
                raise RuntimeError("redis did not answer PONG")
        elif svc == "postgres":
            probes.pg_query(a["postgres"], "SELECT count(*) FROM orders")
        elif svc == "licence":
            probes.licence_check(a["licence"], port, timeout=0.5)
        else:
            status, body = probes.http_get(a[svc], port, "/healthz", timeout=1.0)
            if status != 200:
                raise RuntimeError(f"/healthz answered {status}: {body[:200]!r}")

    def _wait_healthy(self, deadline: float) -> None:
        pending = list(SERVICES)
        last: dict[str, str] = {}
        while pending:
            for svc in list(pending):
                p = self._svc_procs[svc]
                if p.poll() is not None:
                    raise StartupError(f"service {svc!r} exited with {p.returncode} during "
                                       f"start-up; log tail:\n{self.log_tail(svc)}")
                try:
                    self.run_in("client", self._probe, svc)
                    pending.remove(svc)
                except Exception as e:  # noqa: BLE001 - retried until the deadline
                    last[svc] = f"{type(e).__name__}: {e}"
            if not pending:
                return
            if time.monotonic() > deadline:
                svc = pending[0]
                raise StartupError(
                    f"service {svc!r} not healthy after {self.startup_timeout:.0f}s "
                    f"(last error: {last.get(svc)}); still waiting for {pending}; "
                    f"log tail:\n{self.log_tail(svc)}")
            time.sleep(0.05)


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_group(p: subprocess.Popen, sig: int, grace: float = 5.0) -> None:
    """Signal the process (group leader) `p`, then SIGKILL its whole group after `grace`."""
    try:
        if sig == signal.SIGINT:
            os.kill(p.pid, sig)  # postgres: fast shutdown, by the postmaster itself
        else:
            os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path | str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "".join(f"  | {ln}\n" for ln in text.splitlines()[-lines:])
