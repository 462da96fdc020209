"""The compiled PostgreSQL and MySQL parsers against the Python ones they replaced.

The Python module of a pinned revision (`git show REV:agent/protocols/NAME.py`, loaded
by tests/protocols/equivalence.py, the harness all these tests share) and the
compiled one are fed the same chunks: random protocol-shaped conversations and golden
connections reshuffled, both cut at random points, kept to a random capture prefix,
with lost, truncated and retransmitted pieces, from either side or an unknown one, with
redaction on and off.  Records (every field, Messages included), the counters each
module adds to its STATS, and the state left behind (buffers, skip counts, pending
units, prepared statements, the doubt a loss casts) must be identical after every
chunk and after the flush.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

from agent.protocols import redact

from .equivalence import (
    EXAMPLES,
    PYTHON_PARSERS,
    chunked,
    golden_messages,
    load_baseline,
    needs_history,
    reshuffled,
    same_run,
)

# The last revision whose postgresql.py, mysql.py and dns.py are the Python parsers.
PINNED = PYTHON_PARSERS

pytestmark = needs_history(PINNED)
# What else a parser keeps between chunks that decides what comes next.
PG_STATE = ("statements", "partial", "portals", "database", "startup_next", "wait_ready",
            "ssl_wait")
MY_STATE = ("statements", "partial", "database", "phase", "caps", "server_caps")


def run_equivalence(proto: str, module: str, cls_name: str, make: Callable,
                    seed: int, extra: tuple[str, ...], **kw) -> None:
    """EXAMPLES random and EXAMPLES golden-derived conversations per redaction setting."""
    import importlib

    py = load_baseline(module, PINNED)
    cc = importlib.import_module(f"agent.protocols.{module}")
    assert type(getattr(cc, cls_name)).__name__ == "type" and \
        getattr(cc, cls_name).__module__.endswith(f"_{module}"), "the compiled parser"
    golden = golden_messages(proto)
    rnd = random.Random(seed)
    records = 0
    saved = redact.REDACT
    try:
        for redacting in (True, False):
            redact.REDACT = redacting
            for k in range(2 * EXAMPLES):
                stream = make(rnd) if k % 2 else reshuffled(rnd, golden)
                if rnd.random() < 0.2:  # the server's point of view
                    stream = [(1 - d, b) for d, b in stream]
                capture = rnd.choice([None, 1024, 1024, 64, 16, 300])
                noise = rnd.choice([0.0, 0.0, 0.01, 0.05, 0.2])
                chunks = list(chunked(rnd, stream, capture, rnd.random() < 0.7, noise))
                side = rnd.choice([True, True, False, None])
                args = kw.get("args", lambda r: ())(rnd)
                records += same_run(partial(getattr(py, cls_name), side, *args),
                                    partial(getattr(cc, cls_name), side, *args),
                                    py.STATS, cc.STATS, chunks,
                                    rnd.choice(["closed", "", "timeout"]), extra=extra)
    finally:
        redact.REDACT = saved
    assert records > EXAMPLES  # the streams are not all rejected


# -- PostgreSQL -------------------------------------------------------------------------

_SQL = [b"SELECT 1", b"select * from users where id = $1", b"INSERT INTO orders VALUES ('x')",
        b"UPDATE accounts SET card = '4111 1111 1111 1111' WHERE id = 2",
        b"ALTER ROLE bob PASSWORD 'hunter2'", b"BEGIN", b"COMMIT", b"DELETE FROM t",
        b"/* c */ SELECT name FROM \"Pets\" p JOIN owners o ON true", b"", b"\xff\xfe bad utf8",
        b"SELECT '" + b"x" * 5000 + b"'", b"CREATE USER u WITH PASSWORD 'E'", b"vacuum"]


def _pg(t: bytes, body: bytes, rnd: random.Random) -> bytes:
    ln = 4 + len(body)
    if rnd.random() < 0.01:
        ln = rnd.choice([0, 3, 1 << 31, ln + 1, ln - 1, 9000, 70000])
    return t + ln.to_bytes(4, "big") + body


def pg_client(rnd: random.Random) -> bytes:
    r = rnd.randrange(16)
    sql = rnd.choice(_SQL) + b"\x00"
    name = rnd.choice([b"", b"s1", b"s2", b"_pg3_0"]) + b"\x00"
    if r == 0:
        body = (196608).to_bytes(4, "big") + b"user\x00bob\x00database\x00" + \
            rnd.choice([b"shop", b"\xffdb", b""]) + b"\x00\x00"
        return (4 + len(body)).to_bytes(4, "big") + body
    if r == 1:
        code = rnd.choice([80877103, 80877104, 80877102])
        return (8).to_bytes(4, "big") + code.to_bytes(4, "big")
    if r in (2, 3):
        return _pg(b"Q", sql, rnd)
    if r == 4:
        return _pg(b"P", name + sql + b"\x00\x00", rnd)
    if r == 5:
        return _pg(b"B", rnd.choice([b"", b"p1"]) + b"\x00" + name + b"\x00\x00\x00\x00", rnd)
    if r == 6:
        return _pg(b"D", b"S" + name, rnd)
    if r == 7:
        return _pg(b"E", rnd.choice([b"\x00", b"p1\x00", b"", b"p1"]) + b"\x00\x00\x00\x00", rnd)
    if r in (8, 9):
        return _pg(b"S", b"", rnd)
    if r == 10:
        return _pg(rnd.choice([b"H", b"X", b"p", b"d", b"c", b"f", b"F", b"C"]),
                   rnd.randbytes(rnd.randint(0, 8)), rnd)
    if r == 11:
        return (_pg(b"P", name + sql + b"\x00\x00", rnd) + _pg(b"B", b"\x00" + name, rnd)
                + _pg(b"D", b"P\x00", rnd) + _pg(b"E", b"\x00\x00\x00\x00\x00", rnd)
                + _pg(b"S", b"", rnd))
    if r == 12:
        return rnd.randbytes(rnd.randint(1, 20))
    return _pg(b"Q", sql, rnd)


def pg_server(rnd: random.Random) -> bytes:
    r = rnd.randrange(15)
    if r == 0:
        return _pg(b"R", b"\x00\x00\x00\x00", rnd)
    if r == 1:
        return _pg(rnd.choice([b"S", b"N", b"A", b"K"]), b"a\x00b\x00", rnd)
    if r in (2, 3):
        return _pg(b"Z", rnd.choice([b"I", b"T", b"E"]), rnd)
    if r == 4:
        return _pg(b"T", b"\x00\x01id\x00" + bytes(18), rnd)
    if r in (5, 6):
        return _pg(b"D", b"\x00\x01\x00\x00\x00\x014" * rnd.randint(1, 3), rnd)
    if r == 7:
        return _pg(b"C", rnd.choice([b"SELECT 1", b"INSERT 0 1", b"BEGIN", b""]) + b"\x00", rnd)
    if r == 8:
        return _pg(b"E", b"SERROR\x00C" + rnd.choice([b"23505", b"42P01", b""]) +
                   b"\x00MKey (card)=(4111111111111111) already exists\x00\x00", rnd)
    if r == 9:
        return _pg(rnd.choice([b"1", b"2", b"3", b"n", b"I", b"s", b"t"]), b"", rnd)
    if r == 10:
        return rnd.choice([b"N", b"S", b"G"])
    if r == 11:
        return _pg(b"D", b"x" * rnd.choice([100, 9000, 20000]), rnd)
    if r == 12:
        return rnd.randbytes(rnd.randint(1, 20))
    return _pg(b"C", b"SELECT 2\x00", rnd) + _pg(b"Z", b"I", rnd)


def pg_conversation(rnd: random.Random) -> list[tuple[int, bytes]]:
    """Exchanges in the usual shape (a unit, then its answer), with random messages
    mixed in on either side."""
    out = []
    for _ in range(rnd.randint(1, 14)):
        r = rnd.random()
        if r < 0.3:
            d = rnd.randrange(2)
            msgs = [pg_client(rnd) if d == 0 else pg_server(rnd)
                    for _ in range(rnd.randint(1, 3))]
            out.append((d, b"".join(msgs)))
            continue
        sql = rnd.choice(_SQL) + b"\x00"
        if r < 0.6:
            out.append((0, _pg(b"Q", sql, rnd)))
        else:
            name = rnd.choice([b"", b"s1", b"s2"]) + b"\x00"
            units = b"".join(
                (_pg(b"P", name + sql + b"\x00\x00", rnd) if rnd.random() < 0.6 else b"")
                + _pg(b"B", b"\x00" + name + b"\x00\x00\x00\x00", rnd)
                + _pg(b"E", b"\x00\x00\x00\x00\x00", rnd)
                for _ in range(rnd.randint(1, 3)))
            out.append((0, units + _pg(b"S", b"", rnd)))
        answer = [_pg(b"1", b"", rnd), _pg(b"2", b"", rnd)] if r >= 0.6 else []
        answer += [_pg(b"T", b"\x00\x01id\x00" + bytes(18), rnd)]
        answer += [_pg(b"D", b"\x00\x01\x00\x00\x00\x014", rnd)] * rnd.randint(0, 3)
        answer += [pg_server(rnd) if rnd.random() < 0.2 else
                   _pg(b"C", b"SELECT 1\x00", rnd)]
        answer.append(_pg(b"Z", b"I", rnd))
        out.append((1, b"".join(answer)))
    return out


def test_postgresql_compiled_equals_python():
    run_equivalence("postgresql", "postgresql", "PostgresParser", pg_conversation, seed=5432,
                    extra=PG_STATE)


# -- MySQL ------------------------------------------------------------------------------

def _my(seq: int, payload: bytes, rnd: random.Random) -> bytes:
    ln = len(payload)
    if rnd.random() < 0.01:
        ln = rnd.choice([0, ln + 1, max(ln - 1, 0), 9000, 0xFFFFFF])
    return ln.to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def _lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def _ok(more: bool = False) -> bytes:
    return b"\x00\x01\x00" + (10 if more else 2).to_bytes(2, "little") + b"\x00\x00"


def _eof(more: bool = False) -> bytes:
    return b"\xfe\x00\x00" + (10 if more else 2).to_bytes(2, "little")


_ERR = (b"\xff\x26\x04#23000Duplicate entry '4111111111111111' for key 'card'",
        b"\xff\x15\x04Access denied", b"\xff\x01")


def my_greeting(rnd: random.Random) -> bytes:
    caps = rnd.choice([0xF7FF, 0xFFFF, 0xA2FF])
    ext = rnd.choice([0x81BF, 0x00BF, 0x093F])  # DEPRECATE_EOF, QUERY_ATTRIBUTES or not
    body = (b"\x0a10.11.6-MariaDB\x00" + b"\x05\x00\x00\x00" + b"abcdefgh\x00"
            + caps.to_bytes(2, "little") + b"\x21\x02\x00" + ext.to_bytes(2, "little")
            + b"\x15" + bytes(10) + b"ijklmnopqrst\x00mysql_native_password\x00")
    return body[:rnd.choice([len(body)] * 5 + [20, 30])]


def my_login(rnd: random.Random) -> bytes:
    caps = rnd.choice([0x81BFA68D, 0x09BFA685, 0x01AFA68D, 0x0000AA0D, 0x00200808])
    body = caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x21" + bytes(23)
    body += b"root\x00" + b"\x14" + bytes(20) + rnd.choice([b"shop\x00", b"\xffdb\x00", b""])
    body += b"mysql_native_password\x00"
    if rnd.random() < 0.1:
        body = body[:32]  # SSL request
    return body


def my_command(rnd: random.Random) -> tuple[int, bytes]:
    sql = rnd.choice(_SQL)
    r = rnd.randrange(12)
    if r < 4:
        pre = b"\x00\x01" if rnd.random() < 0.3 else b""
        return 3, b"\x03" + pre + sql
    if r == 4:
        return 0x16, b"\x16" + sql
    if r == 5:
        return 0x17, b"\x17" + rnd.randrange(4).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00"
    if r == 6:
        return 0x19, b"\x19" + rnd.randrange(4).to_bytes(4, "little")
    if r == 7:
        return 2, b"\x02" + rnd.choice([b"shop", b"other", b"\xff"])
    if r == 8:
        cmd = rnd.choice([0x01, 0x09, 0x0E, 0x11, 0x18, 0x1F, 0x1D, 0x04])
        return cmd, bytes([cmd]) + rnd.randbytes(rnd.randint(0, 6))
    return 3, b"\x03" + sql


def my_answer(rnd: random.Random, cmd: int) -> list[bytes]:
    """Payloads answering `cmd` (sequence ids are added by the caller)."""
    r = rnd.random()
    if r < 0.1:
        return [rnd.choice(_ERR)]
    if cmd == 0x16:
        ncols, nparams = rnd.choice([(0, 0), (1, 0), (0, 2), (2, 1)])
        out = [b"\x00" + rnd.randrange(4).to_bytes(4, "little") + ncols.to_bytes(2, "little")
               + nparams.to_bytes(2, "little") + b"\x00\x00\x00"]
        eof = rnd.random() < 0.6
        for k in (nparams, ncols):
            if k:
                out += [b"\x03def\x00\x00\x00\x01a\x00\x0c?\x00"] * k + ([_eof()] if eof else [])
        return out
    if cmd == 0x09:
        return [b"Uptime: 5  Threads: 1"]
    if r < 0.4:
        return [_ok(rnd.random() < 0.1)]
    ncols = rnd.choice([1, 2, 300])
    out = [_lenenc(ncols)] + [b"\x03def\x00\x00\x00\x01a\x00"] * min(ncols, 3)
    if rnd.random() < 0.5:
        out.append(_eof())
    out += [b"\x01x" * ncols] * rnd.randint(0, 3)
    out.append(_eof(rnd.random() < 0.1) if rnd.random() < 0.5 else b"\xfe" + _ok()[1:])
    return out


def my_conversation(rnd: random.Random) -> list[tuple[int, bytes]]:
    """A connection: maybe a handshake, then commands and their answers, with random
    packets mixed in on either side."""
    out = []
    if rnd.random() < 0.5:
        out.append((1, _my(0, my_greeting(rnd), rnd)))
        out.append((0, _my(1, my_login(rnd), rnd)))
        out.append((1, _my(2, rnd.choice([_ok(), _ok(), _ERR[1], b"\xfe" + b"x" * 20]), rnd)))
    for _ in range(rnd.randint(1, 12)):
        if rnd.random() < 0.15:
            d = rnd.randrange(2)
            out.append((d, _my(rnd.randrange(3), rnd.randbytes(rnd.randint(0, 12)), rnd)
                        if rnd.random() < 0.7 else rnd.randbytes(rnd.randint(1, 12))))
            continue
        cmd, payload = my_command(rnd)
        out.append((0, _my(0, payload, rnd)))
        if cmd in (0x01, 0x18, 0x19):
            continue
        answer = my_answer(rnd, cmd)
        if cmd == 0x11:
            answer = [rnd.choice([_ok(), _ERR[1], b"\xfe" + b"x" * 10])]
        out.append((1, b"".join(_my(i + 1, a, rnd) for i, a in enumerate(answer))))
    return out


def test_mysql_compiled_equals_python():
    run_equivalence("mysql", "mysql", "MySQLParser", my_conversation, seed=3306,
                    extra=MY_STATE)
