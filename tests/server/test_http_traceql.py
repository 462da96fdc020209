"""TraceQL -> SQL without a server: values only ever travel as bound parameters, and
the search-index condition is a superset of the span condition."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http import traceql
from server.http.otlp_map import VIRTUAL_ATTRIBUTES

_PLACEHOLDER = re.compile(r"\{(\w+):(String|UInt64|Float64)\}")


def _strip_placeholders(sql: str) -> str:
    return _PLACEHOLDER.sub("?", sql)


@settings(max_examples=300, deadline=None)
@given(key=st.text(min_size=1, max_size=20), value=st.text(max_size=30))
def test_values_and_keys_never_reach_the_sql_text(key, value):
    quoted_key = key.replace("\\", "\\\\").replace('"', '\\"')
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    sql = traceql.compile_query(
        f'{{span."{quoted_key}" = "{quoted}" || resource.service.name != "{quoted}"}}')
    assert value in sql.params.values()
    # a key is a parameter, or one of our own fields (then a column of ours)
    assert key in sql.params.values() or key in VIRTUAL_ATTRIBUTES
    text = _strip_placeholders(sql.cond + " " + sql.icond)
    # only our own identifiers, operators, placeholders and literals are left
    assert set(re.findall(r"'[^']*'", text)) <= {"''"}
    assert re.fullmatch(r"[\w\s().,=!<>?*'\[\]-]*", text), text


def test_builder_query_shape():
    sql = traceql.compile_query(
        '{resource.service.name="shop" && name="GET /cart" && status=error && duration>100ms}',
        since_ns=10, until_ns=20)
    assert "service = {" in sql.cond and "operation = {" in sql.cond
    assert "(end_ns - start_ns) > {" in sql.cond and "start_ns >= {t_since:UInt64}" in sql.cond
    # every top-level conjunct has its index superset
    for part in ("service = {", "has(operations, {", "has(statuses, {",
                 "toUInt64(dur_max_ms) * 1000000 >= {", "ts_max_ms * 1000000 >= {t_since"):
        assert part in sql.icond, part
    assert 100_000_000 in sql.params.values() and sql.matched == ""


def test_or_and_not_weaken_the_index_condition():
    assert traceql.compile_query('{name="a" || span.x>1}').icond == "1"
    assert traceql.compile_query('{!(name="a")}').icond == "1"
    both = traceql.compile_query('{name="a" || name="b"}').icond
    assert both.count("has(operations") == 2 and " OR " in both


def test_spanset_operators_make_a_trace_condition():
    sql = traceql.compile_query('{name="a"} && {name="b"}')
    assert sql.matched.count("countIf(") == 2 and " AND " in sql.matched
    assert " OR " in sql.cond  # spans of either spanset are the trace's matches
    sql = traceql.compile_query('{name="a"} || {name="b"}')
    assert " OR " in sql.matched


@pytest.mark.parametrize(("text", "tree"), [
    ("{}", traceql.Spanset(None)),
    ("", traceql.Spanset(None)),
    ('{ .a = "x" }', traceql.Spanset(traceql.Cmp(traceql.Field("any", "a"), "=",
                                                 traceql.Value("string", "x")))),
    ("{span:duration >= 1.5s}", traceql.Spanset(traceql.Cmp(
        traceql.Field("intrinsic", "duration"), ">=", traceql.Value("duration", 1_500_000_000)))),
    ('{span."http.route" =~ `/a/.*`}', traceql.Spanset(traceql.Cmp(
        traceql.Field("span", "http.route"), "=~", traceql.Value("string", "/a/.*")))),
    ("{kind = server && status != unset}", traceql.Spanset(traceql.BoolOp(
        "&&",
        traceql.Cmp(traceql.Field("intrinsic", "kind"), "=", traceql.Value("kind", "server")),
        traceql.Cmp(traceql.Field("intrinsic", "status"), "!=",
                    traceql.Value("status", "unset"))))),
])
def test_parse(text, tree):
    assert traceql.parse(text) == tree


def test_and_binds_tighter_than_or():
    t = traceql.parse('{name="a" || name="b" && name="c"}')
    assert isinstance(t.expr, traceql.BoolOp) and t.expr.op == "||"
    assert isinstance(t.expr.right, traceql.BoolOp) and t.expr.right.op == "&&"
