"""The compiled redaction loop (agent/export/_redact.pyx) does what the Python loop
(`redact.reference_spans`) does: the same values out, the same spans copied (and only
those), originals untouched, `batch` itself back when nothing changed.

On the recorded demo stream when bench_replay has recorded it, and on generated spans
whose values mix secrets of every kind redact.py masks with ordinary text, around the
length limits the loop decides by (12, 256 and 64 KiB characters).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import redact
from proto.span import Span

SETTINGS = settings(max_examples=int(os.environ.get("ZT_FUZZ_EXAMPLES", "200")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "TJVA95OrM7E2cBab30RMHrHDcEfxjoYZgeFONFh7HgQ")
HOSTILE = [
    f"Bearer {JWT}", "token abc.def-123456", "sk_live_51HcZq2abcdefghij",
    "ghp_0123456789abcdefghijABCDEFGHIJ", "AKIAIOSFODNN7EXAMPLE", "xoxb-1234567890-abc",
    "glpat-0123456789abcdefghij", "postgres://app:s3cr3t@db:5432/shop",
    "https://u:p4ss@host/x?a=1", "customer=1&api_key=k1&otp=123456",
    "SELECT * FROM t WHERE ssn = '123-45-6789' AND x = 4242.17",
    "INSERT INTO o (note) VALUES ('n1') RETURNING id", "--db-password=hunter2 -v",
    "PGPASSWORD=hunter2 psql", "GET /x?access_token=9f8e7d6c5b4a&page=2", "id=1",
    "/v1/charges?client_secret=s3cr3t", "x" * 11, "y" * 12, "Basic dXNlcjpwYXNz",
]
KEYS = ["url.query", "url.full", "db.query.text", "db.statement", "process.command_line",
        "http.request.header.x-api-key", "url.path", "k", ""]


def _same(ref: list, new: list, batch: list) -> None:
    assert len(ref) == len(new)
    assert (ref is batch) == (new is batch)
    for r, n, s in zip(ref, new, batch, strict=True):
        assert type(r) is type(n)
        assert (r is s) == (n is s)  # copied exactly when the Python loop copies
        assert r == n and repr(r) == repr(n)


def check(batch: list) -> None:
    before = [copy.deepcopy(s) for s in batch]
    ref = redact.reference_spans(batch)
    new = redact.spans(batch)
    _same(ref, new, batch)
    assert [repr(s) for s in batch] == [repr(s) for s in before]  # originals kept
    redact._VALUE_CACHE.clear()  # and again on cold caches, the other one first
    redact._REDACTOR = None  # a new loop: its operation cache empty
    new = redact.spans(batch)
    ref = redact.reference_spans(batch)
    _same(ref, new, batch)


def test_the_compiled_loop_is_used():
    assert redact._redactor(), "agent/export/_redact.pyx is not built"


def test_recorded_demo_stream():
    from agent.enrich import EnrichConfig, Enricher
    from tests.proto.test_columns_equivalence import _recorded_spans

    spans = _recorded_spans()
    with Enricher(EnrichConfig()) as en:
        for s in spans:
            en.enrich(s)
    for i in range(0, len(spans), 4096):
        check(spans[i:i + 4096])


_value = st.one_of(
    st.sampled_from(HOSTILE), st.text(max_size=30),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=8), st.sampled_from(HOSTILE),
              st.text(max_size=8)),
    st.integers(), st.none(), st.booleans(), st.lists(st.sampled_from(HOSTILE), max_size=2),
    st.sampled_from(["a" * 255 + "?", "Bearer " + "z9" * 130, "q" * (64 * 1024 + 5)
                     + " Bearer abcdefgh12345", "", " " * 12]),
)
_attrs = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), _value, max_size=6)
_text = st.sampled_from(HOSTILE) | st.text(max_size=40) | st.just("")


@st.composite
def _spans(draw) -> Span:
    return Span(trace_id="1" * 32, operation=draw(_text), error=draw(_text),
                attributes=draw(_attrs),
                resource=draw(st.dictionaries(st.sampled_from(KEYS), _text, max_size=3)))


@SETTINGS
@given(st.lists(_spans(), max_size=12), st.data())
def test_generated_spans(batch, data):
    # Spans sharing one resource dict, as an enricher's spans may.
    if batch and data.draw(st.booleans()):
        for s in batch:
            s.resource = batch[0].resource
    check(batch)


def test_other_classes_and_odd_values_go_as_before():
    @dataclasses.dataclass
    class Plain:  # not a slots class: copied by redact._copy
        attributes: dict
        resource: dict
        error: str
        operation: str

    class Sub(Span):
        __slots__ = ()

    batch = [Plain({"url.query": "api_key=1"}, {}, "", "GET /?token=abc"),
             Sub(attributes={"k": f"Bearer {JWT}"}), Span(operation="GET /x?secret=1")]
    check(batch)
    check([Span(resource={"k": "sk_live_51HcZq2abcdefghij"}, attributes={"n": 1})])
    check([])
    with pytest.raises(TypeError):  # an operation that is not text: as before
        redact.reference_spans([Span(operation=3)])
    with pytest.raises(TypeError):
        redact.spans([Span(operation=3)])


def test_redaction_off_returns_the_batch(monkeypatch):
    monkeypatch.setattr(redact, "REDACT", False)
    batch = [Span(attributes={"k": f"Bearer {JWT}"})]
    assert redact.spans(batch) is batch


# -- SQL literals: the compiled scan against the regex ---------------------------------

_SQL_PIECES = list("'\"`$-/*.\n\\eExX0129a_ &:+bntgN;()=,é") + [
    "$1", "$tag$", "$$", "''", '""', "--", "/*", "*/", "0x1f", "0X1G", "1e5", "1.e-3",
    ".5", "E'", "N'", "U&'", "$a$", "$ab$", "\\'", "SELECT ", " WHERE x = ", "-7"]


def _regex(text: str) -> str:
    return redact._SQL_LITERAL.sub(redact._literal, text)


@settings(max_examples=int(os.environ.get("ZT_FUZZ_EXAMPLES", "200")) * 25, deadline=None)
@given(st.lists(st.sampled_from(_SQL_PIECES), max_size=40).map("".join))
def test_sql_literal_scan_is_the_regex(text):
    from agent.export._redact import sql_literals

    got = sql_literals(text)
    if not text.isascii():
        assert got is None  # the regex's business (\w, \d beyond ASCII)
    else:
        assert got == _regex(text)
    assert redact.sql_literals(text) == _regex(text)


@pytest.mark.parametrize("sql", [
    "", "'", "\\", "'\\", "''\\", "'a''b''\\", '"a""b', '"a"" b""', "$$", "$tag$x$ta$",
    "$tag$x$tag$ 1", "$tag$x\n", "$1$2", "$a1$ 'x' $a1$", "/* 'x'", "-- 'x'\n'y'",
    "x-1 -1 1-1 a.1 $.1 :1 1. 1.x 0x1f 0x1fg 1e 1e+ 1e+5 1e+5x .5e3", "E'x' e&'x' u&x'y'",
    "type'x'", "'unclosed\n", "'a'\n", "SELECT 'é'", "x = 'a\\'b' AND y = 2",
])
def test_sql_literal_edge_cases(sql):
    from agent.export._redact import sql_literals

    got = sql_literals(sql)
    assert got == _regex(sql) or (got is None and not sql.isascii())
