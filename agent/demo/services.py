"""Command lines and configuration of the demo's services, and the two build caches.

Each `*_argv` function returns the argv to run inside a pod (after `ip netns exec`),
writing whatever configuration it needs under the run's temp dir.  The Go inventory
binary (and other one-file Go programs) and an initialised PostgreSQL data directory
are cached under `CACHE_DIR` (keyed by a hash of their inputs) so only the first run
pays for `go build` / `initdb`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_DIR = Path("/var/cache/zerotrace/demo")
APPS = Path(__file__).resolve().parent / "apps"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_SCHEMA = "CREATE TABLE orders (note text, qty int);\nCREATE INDEX ON orders (note);\n"

# Where Debian's golang-*-dev packages install Go sources (GOPATH layout).
GOPATH_DEBIAN = "/usr/share/gocode"

PORTS = {"dns": 53, "gw": 80, "api": 8000, "inventory": 8080, "redis": 6379, "postgres": 5432,
         "licence": 7070, "pricing": 8081}


@contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def go_inventory_binary() -> Path:
    """The Go inventory, built against Debian's lib/pq (cached by source hash)."""
    return go_binary(APPS / "inventory.go", "inventory", gopath=GOPATH_DEBIAN)


def go_pricing_binary() -> Path:
    """The Go pricing service, standard library only (cached by source hash)."""
    return go_binary(APPS / "pricing.go", "pricing")


def go_binary(source: Path, name: str, ldflags: str = "", gopath: str = "") -> Path:
    """A one-file Go program built once per (source, Go version, ldflags) under
    CACHE_DIR; `ldflags="-s -w"` strips symbols and DWARF.  Standard library only, or,
    with `gopath` (e.g. GOPATH_DEBIAN), built in GOPATH mode against the Go packages
    Debian installs there (golang-github-lib-pq-dev): no module download, ever."""
    src = source.read_bytes()
    version = subprocess.run(["go", "version"], capture_output=True, text=True,
                             check=True).stdout
    if gopath:  # the packages' sources take part in the cache key
        version += "".join(sorted(str(p.stat().st_mtime_ns) + str(p)
                                  for p in Path(gopath).glob("src/*/*/*/*.go")))
    out = CACHE_DIR / f"{name}-go-{_digest(src, version.encode(), ldflags.encode())}"
    if out.exists():
        return out
    with _locked("go-build"):
        if out.exists():
            return out
        with tempfile.TemporaryDirectory(prefix="zt-demo-gobuild-") as tmp:
            (Path(tmp) / "main.go").write_bytes(src)
            env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0",
                   "GO111MODULE": "on", "GOPATH": f"{tmp}/gopath",
                   "GOCACHE": str(CACHE_DIR / "go-build-cache"), "GOPROXY": "off"}
            if gopath:
                env.update(GO111MODULE="off", GOPATH=gopath, GOFLAGS="")
            else:
                (Path(tmp) / "go.mod").write_text(f"module zt{name}\n\ngo 1.19\n")
            argv = ["go", "build", "-o", f"{tmp}/{name}"]
            if ldflags:
                argv.append(f"-ldflags={ldflags}")
            r = subprocess.run(argv + ["."], cwd=tmp, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"go build of {name} failed:\n{r.stderr[-2000:]}")
            shutil.move(f"{tmp}/{name}", out)
    return out


def pg_template() -> Path:
    """An initialised PostgreSQL 15 data dir with the `orders` table (cached)."""
    version = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    out = CACHE_DIR / f"pg15-{_digest(PG_SCHEMA.encode(), version.encode())}"
    if (out / "PG_VERSION").exists():
        return out
    pg = pwd.getpwnam("postgres")
    with _locked("pg-template"):
        if (out / "PG_VERSION").exists():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=".pg-template-", dir=CACHE_DIR))
        try:
            os.chown(tmp, pg.pw_uid, pg.pw_gid)
            data = tmp / "data"
            as_pg = ["setpriv", f"--reuid={pg.pw_uid}", f"--regid={pg.pw_gid}", "--init-groups"]
            subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                           check=True, capture_output=True, cwd="/")
            subprocess.run([*as_pg, str(PG_BIN / "postgres"), "--single", "-D", str(data),
                            "postgres"], input=PG_SCHEMA.encode(), check=True,
                           capture_output=True, cwd="/")
            with open(data / "pg_hba.conf", "w") as f:
                f.write("local all all trust\nhost all all 10.232.0.0/24 trust\n")
            os.rename(data, out)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"PostgreSQL template failed: {e.cmd}\n"
                               f"{(e.stderr or b'').decode()[-2000:]}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def dnsmasq_argv(tmp: Path, addr: str, records: dict[str, str]) -> list[str]:
    """dnsmasq answering `records` (name -> IPv4) on UDP and TCP, logging queries."""
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--no-poll", "--bind-interfaces", f"--listen-address={addr}",
            "--port=53", "--user=root", "--group=root", f"--pid-file={tmp}/dnsmasq.pid",
            "--log-queries", f"--log-facility={tmp}/dnsmasq-queries.log", "--local=/demo.zt/"]
    argv += [f"--host-record={name},{ip}" for name, ip in records.items()]
    return argv


def nginx_argv(tmp: Path, addr: str, upstream: str, workers: int = 2,
               keepalive: bool = False) -> list[str]:
    """nginx in the foreground proxying port 80 to `upstream` (address:port)."""
    conf = tmp / "nginx.conf"
    up_keepalive = "keepalive 16;" if keepalive else ""
    conn = '""' if keepalive else "close"
    version = "1.1" if keepalive else "1.0"
    conf.write_text(f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-tmp/body;
    proxy_temp_path {tmp}/nginx-tmp/proxy;
    fastcgi_temp_path {tmp}/nginx-tmp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-tmp/uwsgi;
    scgi_temp_path {tmp}/nginx-tmp/scgi;
    upstream api {{ server {upstream}; {up_keepalive} }}
    server {{
        listen {addr}:80;
        location / {{
            proxy_pass http://api;
            proxy_http_version {version};
            proxy_set_header Connection {conn};
            proxy_set_header Host api.demo.zt;
            proxy_connect_timeout 2s;
            proxy_read_timeout 15s;
        }}
    }}
}}
""")
    (tmp / "nginx-tmp").mkdir(exist_ok=True)
    return ["nginx", "-p", str(tmp), "-e", f"{tmp}/nginx-error.log", "-c", str(conf)]


def redis_argv(tmp: Path, addr: str) -> list[str]:
    d = tmp / "redis"
    d.mkdir(exist_ok=True)
    return ["redis-server", "--bind", addr, "--port", "6379", "--save", "", "--appendonly",
            "no", "--protected-mode", "no", "--daemonize", "no", "--dir", str(d),
            "--logfile", ""]


def postgres_argv(tmp: Path, addr: str) -> list[str]:
    """A copy of the cached template in the temp dir, served on `addr`:5432."""
    pg = pwd.getpwnam("postgres")
    data, sock = tmp / "pgdata", tmp / "pgsock"
    subprocess.run(["cp", "-a", str(pg_template()), str(data)], check=True)
    sock.mkdir()
    os.chown(sock, pg.pw_uid, pg.pw_gid)
    return ["setpriv", f"--reuid={pg.pw_uid}", f"--regid={pg.pw_gid}", "--init-groups",
            str(PG_BIN / "postgres"), "-D", str(data), "-c", f"listen_addresses={addr}",
            "-c", "port=5432", "-c", f"unix_socket_directories={sock}", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=60", "-c", "shared_buffers=32MB",
            "-c", "logging_collector=off"]


def api_argv(addr: str) -> list[str]:
    return [sys.executable, str(APPS / "api.py"), "--listen", f"{addr}:{PORTS['api']}",
            "--postgres", "postgres.demo.zt:5432",
            "--inventory", f"inventory.demo.zt:{PORTS['inventory']}",
            "--licence", f"licence.demo.zt:{PORTS['licence']}"]


def licence_argv(addr: str) -> list[str]:
    return [sys.executable, str(APPS / "licence.py"), "--listen", f"{addr}:{PORTS['licence']}"]


def pricing_argv(addr: str) -> list[str]:
    return [str(go_pricing_binary()), "-listen", f"{addr}:{PORTS['pricing']}"]


def inventory_argv(addr: str, variant: str) -> list[str]:
    listen = f"{addr}:{PORTS['inventory']}"
    if variant == "go":
        return [str(go_inventory_binary()), "-listen", listen, "-redis", "redis.demo.zt",
                "-postgres", f"postgres.demo.zt:{PORTS['postgres']}",
                "-pricing", f"http://pricing.demo.zt:{PORTS['pricing']}"]
    if variant == "node":
        return ["node", str(APPS / "inventory.js"), "--listen", listen,
                "--redis", "redis.demo.zt"]
    raise ValueError(f"unknown inventory variant {variant!r} (go or node)")
