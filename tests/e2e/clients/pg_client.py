"""psycopg 3, extended query protocol (server-side parameters): timed operations."""

import sys
import time

import psycopg

from tests.e2e.clients.timed import op, report

conn = psycopg.connect(host=sys.argv[1], port=5432, user="postgres", dbname="postgres",
                       sslmode="disable", autocommit=True)
cur = conn.cursor()
time.sleep(0.05)
with op("SELECT e2e_users"):
    cur.execute("SELECT name FROM e2e_users WHERE id = %s", (1,))
    rows = cur.fetchall()
with op("INSERT e2e_users"):
    cur.execute("INSERT INTO e2e_users (id, name) VALUES (%s, %s)", (7, "seven"))
with op("SELECT e2e_users", prepared=True):
    cur.execute("SELECT count(*) FROM e2e_users WHERE name LIKE %s", ("s%",), prepare=True)
    cur.fetchall()
with op("SELECT e2e_missing") as rec:
    try:
        cur.execute("SELECT * FROM e2e_missing WHERE id = %s", (1,))
    except psycopg.Error as e:
        rec["sqlstate"] = e.sqlstate
time.sleep(0.05)
conn.close()
report(rows=rows)
