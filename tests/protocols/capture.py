"""Re-make the golden captures: real servers, real clients, a recording relay between.

    .venv/bin/python tests/protocols/capture.py [redis|postgresql|mysql|http|dns|grpc ...]
    .venv/bin/python tests/protocols/capture.py --regen [proto ...]   # expected only

Each scenario starts its server on a free loopback port (in a temporary directory,
killed with its process group afterwards), runs real clients against the relay, and
writes `golden/<proto>/<name>.json`.  Then `<name>.expected.json` is regenerated from
the parser: review its diff before committing, it is what the tests hold the parser to.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT)]

from tests.helpers.nginx import nginx_conf  # noqa: E402
from tests.protocols.golden import (  # noqa: E402
    GOLDEN,
    captures,
    expected_path,
    replay_file,
    save_capture,
)
from tests.protocols.relay import TcpRelay, UdpRelay, free_port  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")


@contextlib.contextmanager
def server(cmd: list[str], port: int, user: str | None = None, cwd: str | None = None,
           env: dict | None = None, udp: bool = False):
    """Run a server in its own process group until the block ends."""
    pre = None
    if user:
        pw = pwd.getpwnam(user)

        def pre() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=pre, cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not udp:
            wait_port(port)
        else:
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def sh(*cmd: str, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    return r.stdout + r.stderr


def record(proto: str, name: str, transport: str, note: str, conns: list) -> None:
    path = GOLDEN / proto / f"{name}.json"
    save_capture(path, proto, transport, note, conns)
    recs = replay_file(path)
    expected_path(path).write_text(json.dumps(recs, indent=1, sort_keys=True) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(conns)} connections, {len(recs)} records")


# -- Redis ------------------------------------------------------------------------------
def capture_redis() -> None:
    import redis as redis_py

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, \
            server(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", tmp], port):
        relay = TcpRelay(port)
        rp = str(relay.port)
        sh("redis-cli", "-p", rp, "SET", "greeting", "hello")
        sh("redis-cli", "-p", rp, "GET", "greeting")
        sh("redis-cli", "-p", rp, "GET", "missing")
        sh("redis-cli", "-p", rp, "INCR", "greeting")  # WRONGTYPE-style error
        sh("redis-cli", "-p", rp, "RPUSH", "list", "a", "b", "c")
        sh("redis-cli", "-p", rp, "LRANGE", "list", "0", "-1")
        sh("redis-cli", "-p", rp, "NOSUCHCOMMAND", "x")
        sh("redis-cli", "-3", "-p", rp, "HSET", "h", "f1", "v1", "f2", "v2")
        sh("redis-cli", "-3", "-p", rp, "HGETALL", "h")
        conns = relay.close()
        record("redis", "redis_cli", "tcp", "redis-cli, one command per connection, RESP2/RESP3",
               conns)

        relay = TcpRelay(port)
        r = redis_py.Redis(port=relay.port)
        pipe = r.pipeline(transaction=False)
        for i in range(40):
            pipe.set(f"k{i}", f"v{i}")
            pipe.get(f"k{i}")
        pipe.hgetall("h")
        pipe.lpop("greeting")  # error inside a pipeline
        pipe.execute(raise_on_error=False)
        r.set("big", b"x" * 5000)  # longer than the 1 KiB capture prefix
        r.get("big")
        tx = r.pipeline(transaction=True)
        tx.incr("counter")
        tx.expire("counter", 100)
        tx.execute()
        r.close()
        conns = relay.close()
        record("redis", "redis_py_pipeline", "tcp",
               "redis-py: 82 pipelined commands, a 5000-byte value, MULTI/EXEC", conns)

        relay = TcpRelay(port)
        r3 = redis_py.Redis(port=relay.port, protocol=3)
        r3.set("r3", "1")
        r3.hgetall("h")
        r3.zadd("z", {"a": 1.5, "b": 2})
        r3.zrange("z", 0, -1, withscores=True)
        r3.close()
        conns = relay.close()
        record("redis", "redis_py_resp3", "tcp",
               "redis-py with protocol=3 (HELLO 3, maps, doubles)",
               conns)


# -- PostgreSQL -------------------------------------------------------------------------
PG_BIN = "/usr/lib/postgresql/15/bin"
PG_PASSWORD = "s3cret-Pg-pw"


def capture_postgresql() -> None:
    import psycopg

    tmp = tempfile.mkdtemp(prefix="zt-pg-")
    os.chmod(tmp, 0o777)
    data = os.path.join(tmp, "data")
    pwfile = os.path.join(tmp, "pw")
    Path(pwfile).write_text(PG_PASSWORD + "\n")
    os.chmod(pwfile, 0o644)
    port = free_port()
    try:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c",
                        f"{PG_BIN}/initdb -D {data} -U postgres --pwfile={pwfile} "
                        f"--auth-host=password --auth-local=trust >/dev/null"], check=True)
        with server([f"{PG_BIN}/postgres", "-D", data, "-p", str(port), "-k", tmp,
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], port,
                    user="postgres"):
            env = dict(os.environ, PGPASSWORD=PG_PASSWORD)
            relay = TcpRelay(port)
            base = ["psql", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "postgres", "-X",
                    "-d", "postgres", "-c"]
            sh(*base, "CREATE TABLE users (id int primary key, name text, card text)", env=env)
            sh(*base, "INSERT INTO users VALUES (1, 'ann', '4111111111111111'), "
                      "(2, 'bob', '1234')", env=env)
            sh(*base, "SELECT id, name FROM users WHERE id = 1", env=env)
            sh(*base, "SELECT * FROM missing_table", env=env)
            sh(*base, "INSERT INTO users VALUES (1, 'dup', '')", env=env)  # 23505
            sh(*base, "BEGIN; UPDATE users SET name = 'anna' WHERE id = 1; COMMIT;", env=env)
            conns = relay.close()
            record("postgresql", "psql_simple", "tcp",
                   "psql -c (simple query), cleartext password auth, errors 42P01 and 23505",
                   conns)

            relay = TcpRelay(port)
            with psycopg.connect(host="127.0.0.1", port=relay.port, user="postgres",
                                 password=PG_PASSWORD, dbname="postgres",
                                 sslmode="disable") as conn:
                cur = conn.cursor()
                cur.execute("SELECT name FROM users WHERE id = %s", (1,))
                cur.fetchall()
                for i in range(3, 9):
                    cur.execute("INSERT INTO users (id, name, card) VALUES (%s, %s, %s)",
                                (i, f"user{i}", "5555555555554444"), prepare=True)
                cur.execute("SELECT count(*) FROM users WHERE name LIKE %s", ("user%",),
                            prepare=True)
                cur.fetchall()
                with contextlib.suppress(psycopg.Error):
                    cur.execute("SELECT * FROM users WHERE id = %s::int", ("nope",))
                conn.rollback()
                cur.execute("SELECT %s::text", ("y" * 3000,))  # row longer than 1 KiB
                cur.fetchall()
                with conn.pipeline():
                    for i in range(5):
                        cur.execute("UPDATE users SET name = %s WHERE id = %s", (f"p{i}", i))
            conns = relay.close()
            record("postgresql", "psycopg_extended", "tcp",
                   "psycopg 3: parameterised and prepared queries (extended protocol), an "
                   "error, a 3000-byte row, pipeline mode", conns)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- MySQL / MariaDB --------------------------------------------------------------------
MY_PASSWORD = "s3cret-My-pw"


def _stmt_prepare_execute(conn, sql: str, args: list[int | str]) -> None:
    """COM_STMT_PREPARE then COM_STMT_EXECUTE through pymysql's connection (which has no
    prepared-statement API of its own), reading the server's packets by their shape."""
    import struct

    from pymysql.constants import COMMAND

    conn._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    first = conn._read_packet()
    data = first.get_all_data()
    if data[0] == 0xFF:
        return
    sid, ncols, nparams = struct.unpack_from("<IHH", data, 1)
    for _ in range(nparams + (1 if nparams else 0) + ncols + (1 if ncols else 0)):
        conn._read_packet()
    body = struct.pack("<IBI", sid, 0, 1)
    if nparams:
        body += b"\x00" * ((nparams + 7) // 8) + b"\x01"
        types = b""
        vals = b""
        for a in args:
            if isinstance(a, int):
                types += b"\x08\x00"
                vals += struct.pack("<q", a)
            else:
                types += b"\xfd\x00"
                enc = a.encode()
                vals += bytes([len(enc)]) + enc
        body += types + vals
    conn._execute_command(COMMAND.COM_STMT_EXECUTE, body)
    pkt = conn._read_packet()
    d = pkt.get_all_data()
    if d[0] in (0x00, 0xFF):
        return
    n = d[0]
    for _ in range(n + 1):
        conn._read_packet()
    while True:
        d = conn._read_packet().get_all_data()
        if d[0] == 0xFE and len(d) < 9:
            break
    conn._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", sid))


def capture_mysql() -> None:
    import pymysql

    tmp = tempfile.mkdtemp(prefix="zt-my-")
    data = os.path.join(tmp, "data")
    sock = os.path.join(tmp, "sock")
    port = free_port()
    try:
        subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True)
        with server(["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
                     f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1",
                     "--skip-log-bin", "--innodb-buffer-pool-size=16M"], port):
            sh("mariadb", f"--socket={sock}", "-uroot", "-e",
               f"CREATE DATABASE shop; CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY "
               f"'{MY_PASSWORD}'; GRANT ALL ON shop.* TO 'app'@'127.0.0.1';")
            relay = TcpRelay(port)
            base = ["mariadb", "-h", "127.0.0.1", "-P", str(relay.port), "-uapp",
                    f"-p{MY_PASSWORD}", "--skip-ssl", "shop", "-e"]
            sh(*base, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), "
                      "card VARCHAR(20))")
            sh(*base, "INSERT INTO items VALUES (1, 'pen', '4111111111111111'), "
                      "(2, 'ink', NULL)")
            sh(*base, "SELECT id, name FROM items ORDER BY id")
            sh(*base, "SELECT * FROM nope")  # 1146
            sh(*base, "INSERT INTO items VALUES (1, 'dup', NULL)")  # 1062
            conns = relay.close()
            record("mysql", "mariadb_cli", "tcp",
                   "mariadb client -e (COM_QUERY), errors 1146 and 1062", conns)

            relay = TcpRelay(port)
            conn = pymysql.connect(host="127.0.0.1", port=relay.port, user="app",
                                   password=MY_PASSWORD, database="shop")
            cur = conn.cursor()
            cur.execute("SELECT name FROM items WHERE id = %s", (1,))
            cur.fetchall()
            cur.execute("UPDATE items SET name = %s WHERE id = %s", ("pencil", 1))
            conn.commit()
            cur.execute("SELECT REPEAT('z', 3000) AS big")  # row longer than 1 KiB
            cur.fetchall()
            _stmt_prepare_execute(conn, "SELECT id, name FROM items WHERE id = ?", [1])
            _stmt_prepare_execute(conn, "INSERT INTO items (id, name) VALUES (?, ?)",
                                  [10, "stmt"])
            with contextlib.suppress(pymysql.Error):
                cur.execute("SELECT nope FROM items")
            conn.ping()
            conn.close()
            conns = relay.close()
            record("mysql", "pymysql_prepared", "tcp",
                   "pymysql: COM_QUERY, a 3000-byte row, COM_STMT_PREPARE/EXECUTE/CLOSE, "
                   "an error, COM_PING, COM_QUIT", conns)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- HTTP/1.1 ---------------------------------------------------------------------------
PY_HTTP_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code, body, **headers):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/hello"):
            self._send(200, b"hello world\\n", Content_Type="text/plain",
                       Set_Cookie="session=server-secret; HttpOnly")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first ", b"second " * 300, b"third"):
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
            self.wfile.write(b"0\\r\\n\\r\\n")
        elif self.path == "/big":
            self._send(200, b"b" * 5000)
        elif self.path == "/fail":
            self._send(500, b"internal error")
        else:
            self.send_error(404)

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        self._send(201, b"got %d" % len(body))

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""



def capture_http() -> None:
    import http.client

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "server.py")
        Path(script).write_text(PY_HTTP_SERVER)
        body = os.path.join(tmp, "body.bin")
        Path(body).write_bytes(b"u" * 3000)
        with server([PY, script, str(port)], port):
            relay = TcpRelay(port)
            url = f"http://127.0.0.1:{relay.port}"
            sh("curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
               "-o", "/dev/null", "-o", "/dev/null",
               "-H", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
               "-H", "X-Request-ID: req-42", "-H", "Authorization: Bearer top-secret-token",
               "-H", "Cookie: session=client-secret",
               f"{url}/hello?name=x", f"{url}/chunked", f"{url}/missing", f"{url}/big",
               f"{url}/fail")
            sh("curl", "-s", "-I", f"{url}/hello")
            sh("curl", "-s", "-o", "/dev/null", "-H", "Expect: 100-continue",
               "--data-binary", f"@{body}", f"{url}/upload")
            conn = http.client.HTTPConnection("127.0.0.1", relay.port)
            for path in ("/hello", "/big", "/hello"):
                conn.request("GET", path, headers={"uber-trace-id": "abc:def:0:1"})
                conn.getresponse().read()
            conn.request("POST", "/upload", body=b"p" * 200,
                         headers={"Content-Type": "application/octet-stream"})
            conn.getresponse().read()
            conn.close()
            conns = relay.close()
            record("http", "python_server_curl", "tcp",
                   "python http.server (HTTP/1.1) with curl keep-alive (5 URLs), HEAD, "
                   "Expect: 100-continue upload, http.client keep-alive", conns)

        port = free_port()
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        Path(www, "index.html").write_text("<h1>hi</h1>\n")
        Path(www, "big.bin").write_bytes(bytes(range(256)) * 20)
        conf = os.path.join(tmp, "nginx.conf")
        Path(conf).write_text(nginx_conf(tmp, f"127.0.0.1:{port}", server=(
            "if_modified_since before;\n"
            "location = /empty { return 204; }\n"
            'location = /gone { return 410 "gone"; }')))
        with server(["nginx", "-c", conf, "-p", tmp], port):
            relay = TcpRelay(port)
            url = f"http://127.0.0.1:{relay.port}"
            sh("curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
               "-o", "/dev/null", f"{url}/", f"{url}/big.bin", f"{url}/empty", f"{url}/gone")
            sh("curl", "-s", "-o", "/dev/null", "-z", "Jan 1 2100", f"{url}/index.html")
            with socket.create_connection(("127.0.0.1", relay.port)) as s:
                reqs = b"".join(
                    b"GET %s HTTP/1.1\r\nHost: localhost\r\nsw8: 1-abc-def\r\n\r\n" % p
                    for p in (b"/", b"/big.bin", b"/nothere"))
                s.sendall(reqs)  # three pipelined requests in one write
                got = b""
                s.settimeout(5)
                while got.count(b"HTTP/1.1 ") < 3 or not got.endswith(b"</html>\r\n"):
                    part = s.recv(65536)
                    if not part:
                        break
                    got += part
            conns = relay.close()
            record("http", "nginx_curl", "tcp",
                   "nginx with curl keep-alive (200, 5120-byte file, 204, 410), 304, and three "
                   "pipelined requests in one write", conns)


# -- DNS --------------------------------------------------------------------------------
def capture_dns() -> None:
    import dns.message
    import dns.query

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, \
            server(["dnsmasq", "-k", "--no-resolv", "--no-hosts", f"--port={port}",
                    "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root",
                    f"--pid-file={tmp}/pid", "--local=/example.test/",
                    "--host-record=www.example.test,10.1.2.4,fd00::4",
                    "--cname=alias.example.test,www.example.test",
                    "--mx-host=example.test,mail.example.test,10",
                    "--txt-record=txt.example.test,hello world"], port):
        queries = [("www.example.test", "A"), ("www.example.test", "AAAA"),
                   ("alias.example.test", "A"), ("example.test", "MX"),
                   ("txt.example.test", "TXT"), ("nothere.example.test", "A"),
                   ("outside.invalid", "A")]
        relay = UdpRelay(port)
        for name, qtype in queries[:4]:
            sh("dig", "@127.0.0.1", "-p", str(relay.port), "+tries=1", "+time=2", name, qtype)
        for name, qtype in queries[4:]:
            dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=relay.port,
                          timeout=2)
        conns = relay.close()
        record("dns", "dnsmasq_udp", "udp",
               "dnsmasq over UDP: dig (A, AAAA, CNAME, MX) and dnspython (TXT, NXDOMAIN, "
               "REFUSED)", conns)

        relay = TcpRelay(port)
        for name, qtype in queries[:2]:
            sh("dig", "@127.0.0.1", "-p", str(relay.port), "+tcp", "+tries=1", name, qtype)
        for name, qtype in queries[3:6]:
            dns.query.tcp(dns.message.make_query(name, qtype), "127.0.0.1", port=relay.port,
                          timeout=2)
        conns = relay.close()
        record("dns", "dnsmasq_tcp", "tcp", "dnsmasq over TCP: dig +tcp and dnspython", conns)


# -- HTTP/2 and gRPC ---------------------------------------------------------------------
GRPC_SERVER = """
import sys, time
from concurrent import futures
import grpc

def say_hello(request, context):
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
    return b"hello " + request

def count(request, context):
    for i in range(int(request or b"3")):
        yield b"n%d" % i

def chat(it, context):
    for m in it:
        yield m.upper()

handler = grpc.method_handlers_generic_handler("demo.v1.Greeter", {
    "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""



def capture_grpc() -> None:
    import grpc

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "grpc_server.py")
        Path(script).write_text(GRPC_SERVER)
        with server([PY, script, str(port)], port):
            relay = TcpRelay(port)
            with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as ch:
                hello = ch.unary_unary("/demo.v1.Greeter/SayHello")
                md = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                      ("x-request-id", "grpc-7"))
                for name in (b"ann", b"bob", b"cy"):
                    hello(name, metadata=md, timeout=5)
                with contextlib.suppress(grpc.RpcError):
                    hello(b"missing", timeout=5)
                list(ch.unary_stream("/demo.v1.Greeter/Count")(b"4", timeout=5))
                list(ch.stream_stream("/demo.v1.Greeter/Chat")(iter([b"a", b"b", b"c"]),
                                                                 timeout=5))
                # Several calls in flight at once, multiplexed on the connection.
                futs = [hello.future(b"x%d" % i, timeout=5) for i in range(5)]
                for f in futs:
                    f.result()
                hello(b"z" * 3000, timeout=5)  # a message longer than the 1 KiB capture
            conns = relay.close()
            record("grpc", "grpcio_unary_streaming", "tcp",
                   "grpcio server and client (generic handlers): unary, NOT_FOUND, "
                   "server-streaming, bidi-streaming, 5 concurrent calls, 3000-byte message",
                   conns)

        port = free_port()
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        Path(www, "index.html").write_text("<h1>h2</h1>\n")
        Path(www, "big.bin").write_bytes(bytes(range(256)) * 40)
        conf = os.path.join(tmp, "nginx.conf")
        Path(conf).write_text(nginx_conf(tmp, f"127.0.0.1:{port} http2",
                                          server='location = /gone { return 410 "gone"; }'))
        with server(["nginx", "-c", conf, "-p", tmp], port):
            relay = TcpRelay(port)
            url = f"http://127.0.0.1:{relay.port}"
            for path in ("/", "/big.bin", "/gone", "/nothere"):
                sh("curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null",
                   "-H", "x-request-id: h2-1", f"{url}{path}")
            conns = relay.close()
            record("grpc", "nginx_h2c_curl", "tcp",
                   "nginx HTTP/2 cleartext with curl --http2-prior-knowledge: 200, a "
                   "10240-byte file, 410, 404", conns)


SCENARIOS = {
    "redis": capture_redis,
    "postgresql": capture_postgresql,
    "mysql": capture_mysql,
    "http": capture_http,
    "dns": capture_dns,
    "grpc": capture_grpc,
}


def regen(names: list[str]) -> None:
    """Rewrite the expected records of existing captures (after a parser change)."""
    for path in captures():
        if names and path.parent.name not in names:
            continue
        recs = replay_file(path)
        expected_path(path).write_text(json.dumps(recs, indent=1, sort_keys=True) + "\n")
        print(f"{path.relative_to(ROOT)}: {len(recs)} records")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--regen"]:
        regen(args[1:])
        return
    for name in args or list(SCENARIOS):
        SCENARIOS[name]()


if __name__ == "__main__":
    main()
