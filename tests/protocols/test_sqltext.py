"""The compiled look at SQL text (agent/protocols/_sqltext.pyx) before redaction: text it
clears must be text redact's expressions leave unchanged, so `redact.sql` answers as the
expressions alone do, on generated statements with card-like digit runs, password
clauses in any case, quotes, and non-ASCII letters and digits."""

from __future__ import annotations

import random
import time

import pytest
from agent.protocols._sqltext import operation as _operation
from agent.protocols._sqltext import plain_sql

from agent.protocols import redact, sqlinfo

PIECES = ["SELECT ", "count(*) ", "FROM orders ", "WHERE note = ", "'n82739806f55a295e' ",
          "AND qty > $1 ", "INSERT INTO t VALUES (", "4111 1111 1111 1111", "4111111111111111",
          "4111-1111-1111-1111", "1234567890123", "123456789012", "12 34 56 78 90 12 3",
          "1-2-3-4-5-6-7-8-9-0-1-2-3", "1  2", "--", " - ", "PASSWORD ", "pAsSwOrD('x') ",
          "ALTER USER bob IDENTIFIED BY 'pw' ", "identified with x by \"y\" ", "passwords ",
          "$tag$secret$tag$ ", "E'it''s' ", "\"quoted\" ", "é ", "٤١١١ ", "ſ ", "K ", "0x1F ",
          ")", ", ", " ", "\n", "PASSWORD FOR bob = 'x'", "passwor", "identifie"]


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 9)))
        if rng.random() < 0.3:
            s = "".join(rng.choice("0123456789 -'\"$aPpSsWwOoRrDdIi") for _ in range(
                rng.randrange(40)))
        out.append(s)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sql_answers_as_the_expressions_alone(seed):
    for text in _texts(seed, 3000):
        assert redact.sql(text) == redact.sql_by_expressions(text), text
        if plain_sql(text):
            assert text.isascii()
            assert not redact._CARD.search(text) and not redact._SQL_PASSWORD.search(text), text


def test_what_the_look_leaves_to_the_expressions():
    assert plain_sql("SELECT count(*) FROM orders WHERE note = 'n82739806f55a295e' AND qty > $1")
    assert not plain_sql("SELECT 4111 1111 1111 1111")  # a card-like chain of 16 digits
    assert plain_sql("SELECT 4111 1111 111")  # 11 digits: no card
    assert not plain_sql("alter role x PassWord 'y'")
    assert not plain_sql("SELECT 'é'")  # non-ASCII: the expressions decide
    assert redact.sql("SELECT '4111 1111 1111 1111'") == "SELECT '?'"


# -- operation and table ---------------------------------------------------------------------

OP_PIECES = ["SELECT", "select", "Update", "INSERT", "REPLACE", "DELETE", "WITH", "BEGIN",
             " ", "  ", "\t", "\n", "\x0b", "\x1c", "\x1f", "(", ")", "--", "-- c", "--x\n",
             "/*", "*/", "/* a */", "/*/", "*", "/", "-", "FROM", "from", "fromage", "into",
             "INTO", "ONLY", "only", "update", "t", "orders", "\"Q t\"", "\"\"", "`b`", "``",
             ".", "x.y", "$1", "a$b", "_u", "9", "lateral", "Unnest", "generate_series", ",",
             "'s'", "é", "ſ", ";", "from\t\"a\".\"b\"", "into `x`.", "only\n"]


def _op_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(OP_PIECES) for _ in range(rng.randrange(1, 12))]
        if rng.random() < 0.5:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(
                ["SELECT", "UPDATE", "INSERT", "DELETE", "REPLACE"]))
        out.append((" " if rng.random() < 0.5 else "").join(parts))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_operation_answers_as_the_expressions(seed):
    for text in _op_texts(seed, 4000):
        assert sqlinfo.operation(text) == sqlinfo.operation_by_expressions(text), repr(text)


def test_operation_on_long_and_pathological_text():
    # Short enough for the expressions (exponential on a failing run of spaces) ...
    for text in [" " * 14 + "!", "(" * 300, "--" * 10, "/*" * 200 + "x",
                 "-- a\n" * 80 + "SELECT 1 FROM t", "SELECT " + "from " * 200]:
        assert sqlinfo.operation(text) == sqlinfo.operation_by_expressions(text)
    # ... the compiled scan stays quadratic at most: 5 000 characters in well under a second
    assert sqlinfo.operation(" " * 5000 + "!") == ("", "")
    assert sqlinfo.operation(" \t" * 3000 + "select * from x") == ("SELECT", "x")
    assert sqlinfo.operation("/*" * 2500 + "x") == ("", "")
    assert sqlinfo.operation("--" * 2500) == ("", "")
    assert _operation("SELECT 'é' FROM t") is None  # not ASCII: the expressions decide
    assert sqlinfo.operation("SELECT 'é' FROM t") == ("SELECT", "t")


@pytest.mark.parametrize("text", [" " * 5000 + "!", "--" * 5000, "-- \n" * 3000 + "(",
                                  " " * 5000 + "é", "--" * 5000 + "é",
                                  "/*" + "*/ /*" * 3000])
def test_leading_blanks_and_comments_take_linear_time(text):
    """A run of blanks or `--` with no verb after it: the backtracking expression took
    exponential time on it (a client's text could hang the parser thread)."""
    t0 = time.process_time()
    assert sqlinfo.operation(text) == ("", "")
    assert sqlinfo.operation_by_expressions(text) == ("", "")
    assert time.process_time() - t0 < 0.5


@pytest.mark.parametrize("text", ["-- foo", "/* select */", "-- select from t", "é -- select"])
def test_no_verb_is_read_inside_a_comment(text):
    assert sqlinfo.operation(text)[0] == ""
    assert sqlinfo.operation_by_expressions(text)[0] == ""


# -- describe: the compiled steps against sqlinfo.describe_reference -----------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_describe_answers_as_the_reference(seed, monkeypatch):
    texts = _texts(seed, 1500) + _op_texts(seed, 1500) + ["x" * 3000, "SELECT 1 FROM t" * 200]
    assert sqlinfo.describe is not sqlinfo.describe_reference  # the compiled one is in use
    for flag in (True, False):
        monkeypatch.setattr(redact, "REDACT", flag)
        for max_len in (4096, 10):
            for text in texts:
                sqlinfo._CACHE.clear()
                want = sqlinfo.describe_reference(text, max_len)
                cached = dict(sqlinfo._CACHE)
                sqlinfo._CACHE.clear()
                got = sqlinfo.describe(text, max_len)
                assert got == want, (flag, max_len, text)
                assert sqlinfo._CACHE == cached  # same key, same bound (texts over 2 KiB)
                # a hit answers from the cache, whichever filled it
                assert sqlinfo.describe(text, max_len) == want
    assert redact.REDACT is False  # still patched: the switch is read at every call


def test_describe_reads_the_switch_and_bounds_its_cache(monkeypatch):
    sqlinfo._CACHE.clear()
    card = "SELECT * FROM pay WHERE card = '4111 1111 1111 1111'"
    assert sqlinfo.describe(card) == ("SELECT * FROM pay WHERE card = '?'", "SELECT pay",
                                      "SELECT", "pay")
    monkeypatch.setattr(redact, "REDACT", False)
    assert sqlinfo.describe(card)[0] == card  # not the cached redacted text
    for i in range(1100):
        sqlinfo.describe(f"SELECT {i} FROM t")
    assert len(sqlinfo._CACHE) <= 1024
