"""pymysql: COM_QUERY with client-side parameters, and real server-side prepared
statements (COM_STMT_PREPARE / COM_STMT_EXECUTE / COM_STMT_CLOSE) driven through
pymysql's low-level command API, since pymysql has no prepared-statement API."""

import struct
import sys
import time

import pymysql
from pymysql.constants import COMMAND

from tests.e2e.clients.timed import op, report


def prepare(conn, sql: str) -> tuple[int, int]:
    conn._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    data = conn._read_packet().get_all_data()
    if data[0] == 0xFF:
        raise RuntimeError("prepare failed")
    sid, ncols, nparams = struct.unpack_from("<IHH", data, 1)
    # parameter and column definitions, each block followed by EOF (no DEPRECATE_EOF)
    for _ in range(nparams + (1 if nparams else 0) + ncols + (1 if ncols else 0)):
        conn._read_packet()
    return sid, nparams


def execute(conn, sid: int, args: list) -> int:
    body = struct.pack("<IBI", sid, 0, 1)
    if args:
        body += b"\x00" * ((len(args) + 7) // 8) + b"\x01"
        types, vals = b"", b""
        for a in args:
            if isinstance(a, int):
                types += b"\x08\x00"
                vals += struct.pack("<q", a)
            else:
                enc = a.encode()
                types += b"\xfd\x00"
                vals += bytes([len(enc)]) + enc
        body += types + vals
    conn._execute_command(COMMAND.COM_STMT_EXECUTE, body)
    d = conn._read_packet().get_all_data()
    if d[0] in (0x00, 0xFF):
        return 0
    rows = 0
    for _ in range(d[0] + 1):  # column definitions + EOF
        conn._read_packet()
    while True:
        d = conn._read_packet().get_all_data()
        if d[0] == 0xFE and len(d) < 9:
            return rows
        rows += 1


conn = pymysql.connect(host=sys.argv[1], port=3306, user="root", database="shop")
cur = conn.cursor()
time.sleep(0.05)
with op("SELECT items"):
    cur.execute("SELECT name FROM items WHERE id = %s", (1,))
    cur.fetchall()
with op("PREPARE SELECT items"):
    sid, _ = prepare(conn, "SELECT id, name FROM items WHERE id = ?")
with op("SELECT items", prepared=True) as rec:
    rec["rows"] = execute(conn, sid, [1])
with op("PREPARE INSERT items"):
    sid2, _ = prepare(conn, "INSERT INTO items (id, name) VALUES (?, ?)")
with op("INSERT items", prepared=True):
    execute(conn, sid2, [10, "stmt"])
conn._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", sid))
with op("SELECT nope") as rec:
    try:
        cur.execute("SELECT * FROM nope")
    except pymysql.Error as e:
        rec["code"] = e.args[0]
time.sleep(0.05)
conn.close()
report()
