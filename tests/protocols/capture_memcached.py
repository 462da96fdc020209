"""Re-make the memcached golden captures: the real memcached, pymemcache and raw sockets.

    .venv/bin/python tests/protocols/capture_memcached.py

Same machinery as capture.py (server in its own process group on a free loopback port,
clients through the recording relay, expected records regenerated from the parser:
review their diff).  pymemcache speaks the classic text protocol; meta commands,
pipelines, errors it hides and the binary protocol are sent on raw sockets.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1])]

from tests.protocols.capture import record, server  # noqa: E402
from tests.protocols.relay import TcpRelay, free_port  # noqa: E402

# A value the records must never show (test_proto_golden.SECRETS).
SECRET_VALUE = b"4111111111111111 client-secret"


def _exchange(sock: socket.socket, data: bytes, idle: float = 0.3) -> bytes:
    """Send data in one write, read until the server has been quiet for `idle`."""
    sock.sendall(data)
    sock.settimeout(idle)
    got = b""
    while True:
        try:
            part = sock.recv(65536)
        except TimeoutError:
            return got
        if not part:
            return got
        got += part


def _bin(op: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
         opaque: int = 0) -> bytes:
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", 0x80, op, len(key), len(extras), 0, 0, len(body),
                       opaque, 0) + body


def capture_pymemcache(port: int) -> None:
    from pymemcache.client.base import Client
    from pymemcache.exceptions import MemcacheClientError

    relay = TcpRelay(port)
    c = Client(("127.0.0.1", relay.port), default_noreply=False, connect_timeout=5,
               timeout=5)
    c.set("greeting", "hello")
    c.get("greeting")
    c.get("missing")
    c.set("k2", "two")
    c.get_many(["greeting", "missing", "k2"])
    _, cas = c.gets("greeting")
    c.cas("greeting", "hi", cas)  # STORED
    c.cas("greeting", "ho", cas)  # EXISTS: the cas unique moved on
    c.add("greeting", "x")  # NOT_STORED
    c.replace("nothere", "x")  # NOT_STORED
    c.append("k2", "+")
    c.prepend("k2", "-")
    c.delete("greeting")  # DELETED
    c.delete("greeting")  # NOT_FOUND
    c.set("n", "10")
    c.incr("n", 5)
    c.decr("n", 3)
    c.incr("nothere", 1)  # NOT_FOUND
    try:
        c.incr("k2", 1)  # CLIENT_ERROR: not a number
    except MemcacheClientError:
        pass
    c.touch("k2", 100)
    c.set("card", SECRET_VALUE)
    c.set("big", b"b" * 3000)  # longer than the 1 KiB capture prefix
    c.get("big")
    # pymemcache writes a set_many with noreply as one pipelined write.
    c.set_many({f"many{i}": f"v{i}" for i in range(12)}, noreply=True)
    c.get_many([f"many{i}" for i in range(12)] + ["card"])
    c.stats()
    c.version()
    c.flush_all()
    c.quit()
    c.close()
    conns = relay.close()
    record("memcached", "pymemcache_text", "tcp",
           "pymemcache (text protocol): set/get hit and miss, multi-key get, gets/cas "
           "(STORED, EXISTS), add/replace NOT_STORED, append/prepend, delete and NOT_FOUND, "
           "incr/decr and a CLIENT_ERROR, touch, a 3000-byte value, 12 noreply sets "
           "pipelined, a 13-key get, stats, version, flush_all, quit", conns)


def capture_raw_text(port: int) -> None:
    relay = TcpRelay(port)
    with socket.create_connection(("127.0.0.1", relay.port)) as s:
        _exchange(s, b"set a 0 0 1\r\n1\r\nset b 0 0 3\r\nbee\r\nget a b c\r\ngets a\r\n"
                     b"gat 100 a b\r\ngats 100 a\r\nincr a 5\r\ntouch b 10\r\ndelete c\r\n"
                     b"set c 0 0 2 noreply\r\nsi\r\nverbosity 1\r\nbogus\r\nversion\r\n")
        # A key over 250 bytes: CLIENT_ERROR, and memcached 1.6 drops the replies of the
        # commands before it in the same read (incr and touch run, unanswered).
        _exchange(s, b"incr a 5\r\ntouch b 10\r\nget " + b"x" * 300 + b"\r\nversion\r\n")
        _exchange(s, b"ms m1 5 T0\r\nhello\r\nms m2 5 q\r\nworld\r\nmg m1 v\r\n"
                     b"mg m2 v k O7\r\nmg nope v q\r\nmg nope2 v q k O8\r\nmg m1 s v q k O9\r\n"
                     b"md nope q\r\nmd m2\r\nma m1\r\nma cnt N0 J13 v\r\nme m1\r\nmn\r\n")
        _exchange(s, b"stats settings\r\n")
        _exchange(s, b"flush_all\r\n")
    with socket.create_connection(("127.0.0.1", relay.port)) as s:
        # More than the item size limit (-I 4096): SERVER_ERROR once the value is read.
        _exchange(s, b"get a\r\n")
        _exchange(s, b"set huge 0 0 6000\r\n" + b"h" * 6000 + b"\r\nget a\r\n")
    conns = relay.close()
    record("memcached", "raw_text_meta_pipeline", "tcp",
           "raw socket, pipelined writes: classic commands (multi-key get, gets, gat, gats, "
           "incr, touch, delete NOT_FOUND, noreply set, verbosity, ERROR), a 300-byte key "
           "(CLIENT_ERROR, earlier replies dropped by the server), "
           "meta commands (ms, ms q, mg with O/k flags, quiet misses, md, ma error, me, mn), "
           "stats settings; second connection: SERVER_ERROR object too large", conns)


def capture_binary(port: int) -> None:
    relay = TcpRelay(port)
    flags = struct.pack(">II", 0, 0)
    with socket.create_connection(("127.0.0.1", relay.port)) as s:
        _exchange(s, _bin(0x01, b"k1", flags, b"v1", 1) + _bin(0x00, b"k1", opaque=2)
                  + _bin(0x00, b"nope", opaque=3))
        # Multi-get the binary way: quiet GETKQs (misses say nothing), then a NOOP.
        _exchange(s, _bin(0x0D, b"k1", opaque=4) + _bin(0x0D, b"nope", opaque=5)
                  + _bin(0x0D, b"k1", opaque=6) + _bin(0x0A, opaque=7))
        # Quiet sets succeed silently; a quiet add of an existing key does answer.
        _exchange(s, _bin(0x11, b"q1", flags, SECRET_VALUE, 8) + _bin(0x11, b"q2", flags, b"2", 9)
                  + _bin(0x12, b"k1", flags, b"x", 10) + _bin(0x0A, opaque=11))
        _exchange(s, _bin(0x05, b"k1", struct.pack(">QQI", 1, 0, 0), opaque=12)
                  + _bin(0x04, b"k1", opaque=13) + _bin(0x04, b"k1", opaque=14)
                  + _bin(0x0B, opaque=15))
        _exchange(s, _bin(0x10, opaque=16))  # one reply frame per statistic
        _exchange(s, _bin(0x44, opaque=17))  # unknown opcode
        _exchange(s, _bin(0x01, b"big", flags, b"B" * 3000, 18) + _bin(0x00, b"big", opaque=19))
        _exchange(s, _bin(0x08, extras=b"", opaque=20) + _bin(0x07, opaque=21))
    conns = relay.close()
    record("memcached", "raw_binary", "tcp",
           "raw socket, binary protocol: set, get hit and miss, GETKQ x3 + NOOP, SETQ x2 + "
           "ADDQ (exists) + NOOP, incr non-numeric, delete and not found, version, stat "
           "(93 frames), unknown opcode, 3000-byte value, flush, quit", conns)


def main() -> None:
    port = free_port()
    # A 4 KiB item limit, so a SERVER_ERROR costs a 6000-byte value, not megabytes.
    with server(["memcached", "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-u", "nobody",
                 "-m", "8", "-I", "4096", "-o", "slab_chunk_max=2048"], port):
        capture_pymemcache(port)
        time.sleep(0.1)
        capture_raw_text(port)
        capture_binary(port)


if __name__ == "__main__":
    main()
