"""psycopg 3 over TLS (sslmode=require), for tests/tls/test_tls_postgres.py: imports
psycopg (its wheel's own libssl is loaded then), prints "ready", waits for a line on
stdin, then runs a parameterised SELECT and one that fails (extended query protocol)
and prints {"rows": ..., "sqlstate": ...} as JSON."""

import json
import sys

import psycopg

print("ready", flush=True)
sys.stdin.readline()
conn = psycopg.connect(host=sys.argv[1], port=int(sys.argv[2]), user="postgres",
                       dbname="postgres", sslmode="require", gssencmode="disable",
                       autocommit=True)
cur = conn.cursor()
cur.execute("SELECT name FROM tls_users WHERE id = %s", (1,))
rows = cur.fetchall()
state = ""
try:
    cur.execute("SELECT * FROM tls_missing WHERE id = %s", (1,))
except psycopg.Error as e:
    state = e.sqlstate
conn.close()
print(json.dumps({"rows": [list(r) for r in rows], "sqlstate": state}), flush=True)
