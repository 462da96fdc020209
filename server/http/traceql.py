"""TraceQL, the part Grafana's Tempo query builder emits, translated to ClickHouse SQL.

Supported: spansets `{ ... }` (empty too), joined by `&&` / `||` (a trace with a span
of each / either), inside them `&&`, `||`, `!` and parentheses over comparisons
`field op value` with op in `= != > >= < <= =~ !~`; fields: intrinsics `name`,
`status`, `statusMessage`, `duration`, `kind` (also written `span:name`, ...),
`span.<attr>`, `resource.<attr>`, unscoped `.<attr>` (span or resource), quoted
names (`span."a b"`); values: strings, integers, floats, durations (`150ms`),
`true`/`false`, status (`error`, `ok`, `unset`), kinds (`server`, ...) and `nil`.
Anything else (pipelines `|`, structural operators `>>`, trace-level intrinsics,
arithmetic) raises `Unsupported` naming it; the API answers 400 with that text.

Every value becomes a bound query parameter ({pN:Type}); only names of our own
columns and parameter placeholders are written into the SQL text.  Regexes are
anchored, as Tempo anchors them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from server.http.otlp_map import VIRTUAL_ATTRIBUTES
from server.ingest.otlp import MODEL_KEY
from server.storage.schema import tag_hash


class Unsupported(ValueError):
    """A query (or part of one) this server does not answer; the message names it."""


# -- syntax tree -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    scope: str  # "intrinsic" | "span" | "resource" | "any"
    name: str


@dataclass(frozen=True, slots=True)
class Value:
    kind: str  # "string" | "int" | "float" | "duration" | "bool" | "status" | "kind" | "nil"
    value: Any


@dataclass(frozen=True, slots=True)
class Cmp:
    field: Field
    op: str
    value: Value


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "&&" | "||"
    left: Any
    right: Any


@dataclass(frozen=True, slots=True)
class Not:
    expr: Any


@dataclass(frozen=True, slots=True)
class Spanset:
    expr: Any  # None: every span


@dataclass(frozen=True, slots=True)
class SpansetOp:
    op: str
    left: Any
    right: Any


# -- tokens ----------------------------------------------------------------------

_DUR_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
              "m": 60_000_000_000, "h": 3_600_000_000_000}
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<duration>-?\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h)(?![\w.]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<op>&&|\|\||=~|!~|!=|>=|<=|>>|<<|!>>|!<<|!>|!<|!~|=|>|<|!|\{|\}|\(|\)|\||~|\+|-|\*|/|%|\^|,)
  | (?P<field>(?:span|resource|event|link|instrumentation|trace)?:[A-Za-z_][\w]*
       |(?:span|resource|event|link|instrumentation|parent)?\.(?:"(?:[^"\\]|\\.)*"|[\w./:-]+)
       |[A-Za-z_][\w]*)
""", re.X)

INTRINSICS = {"name", "status", "statusMessage", "duration", "kind"}
# Intrinsics Tempo has that this server does not translate (trace-level, structural).
OTHER_INTRINSICS = {"traceDuration", "rootName", "rootServiceName", "nestedSetLeft",
                     "nestedSetRight", "nestedSetParent", "childCount", "parent", "spanID",
                     "traceID", "instrumentation"}
STATUS_VALUES = {"error", "ok", "unset"}
KIND_VALUES = {"server", "client", "internal", "producer", "consumer", "unspecified"}


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1),
                                                                          m.group(1)), body)


def tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise Unsupported(f"cannot read TraceQL at {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    return out


# -- parser ----------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self) -> tuple[str, str]:
        t = self.peek()
        self.i += 1
        return t

    def expect(self, value: str) -> None:
        t = self.take()
        if t[1] != value:
            raise Unsupported(f"expected {value!r}, found {t[1] or 'end of query'!r}")

    def parse(self) -> Any:
        if not self.toks:
            return Spanset(None)
        e = self.spanset_expr()
        kind, v = self.peek()
        if kind == "eof":
            return e
        if v == "|":
            raise Unsupported("pipelines ('|', aggregates, select) are not supported")
        if v in (">>", "<<", ">", "<", "~", "!>>", "!<<", "!>", "!<", "!~"):
            raise Unsupported(f"structural operator {v!r} is not supported")
        raise Unsupported(f"unexpected {v!r} after a spanset")

    def spanset_expr(self) -> Any:
        left = self.spanset_term()
        while self.peek()[1] in ("&&", "||"):
            op = self.take()[1]
            left = SpansetOp(op, left, self.spanset_term())
        return left

    def spanset_term(self) -> Any:
        kind, v = self.peek()
        if v == "{":
            self.take()
            if self.peek()[1] == "}":
                self.take()
                return Spanset(None)
            e = self.or_expr()
            self.expect("}")
            return Spanset(e)
        if v == "(":
            self.take()
            e = self.spanset_expr()
            self.expect(")")
            return e
        if kind == "eof":
            raise Unsupported("the query ends where a spanset '{...}' was expected")
        raise Unsupported(f"expected a spanset '{{...}}', found {v!r} "
                          "(only spanset queries are supported)")

    def or_expr(self) -> Any:
        left = self.and_expr()
        while self.peek()[1] == "||":
            self.take()
            left = BoolOp("||", left, self.and_expr())
        return left

    def and_expr(self) -> Any:
        left = self.unary()
        while self.peek()[1] == "&&":
            self.take()
            left = BoolOp("&&", left, self.unary())
        return left

    def unary(self) -> Any:
        v = self.peek()[1]
        if v == "!":
            self.take()
            return Not(self.unary())
        if v == "(":
            self.take()
            e = self.or_expr()
            self.expect(")")
            return e
        return self.comparison()

    def comparison(self) -> Cmp:
        f = self.field()
        kind, op = self.take()
        if op not in ("=", "!=", ">", ">=", "<", "<=", "=~", "!~"):
            if op in ("+", "-", "*", "/", "%", "^"):
                raise Unsupported(f"arithmetic {op!r} is not supported")
            if kind == "eof" or op in ("}", ")", "&&", "||"):
                raise Unsupported(f"a bare field ({f.name!r}) without a comparison is "
                                  "not supported")
            raise Unsupported(f"operator {op!r} is not supported")
        return Cmp(f, op, self.value())

    def field(self) -> Field:
        kind, text = self.take()
        if kind != "field":
            raise Unsupported(f"expected a field, found {text or 'end of query'!r}")
        if ":" in text and not text.startswith((".", "span.", "resource.")):
            scope, _, name = text.partition(":")
            if scope in ("span", "") and name in INTRINSICS:
                return Field("intrinsic", name)
            raise Unsupported(f"intrinsic {text!r} is not supported")
        if "." not in text:
            if text in INTRINSICS:
                return Field("intrinsic", text)
            if text in OTHER_INTRINSICS:
                raise Unsupported(f"intrinsic {text!r} is not supported")
            raise Unsupported(f"unknown field {text!r} (attributes are written "
                              "span.<name>, resource.<name> or .<name>)")
        scope, _, name = text.partition(".")
        if name.startswith('"'):
            name = _unquote(name)
        if scope == "":
            return Field("any", name)
        if scope in ("span", "resource"):
            return Field(scope, name)
        raise Unsupported(f"attribute scope {scope!r} is not supported")

    def value(self) -> Value:
        kind, text = self.take()
        if kind == "string":
            return Value("string", _unquote(text))
        if kind == "duration":
            m = re.match(r"(-?\d+(?:\.\d+)?)(.*)", text)
            assert m is not None
            return Value("duration", int(float(m.group(1)) * _DUR_UNITS[m.group(2)]))
        if kind == "number":
            if re.fullmatch(r"-?\d+", text):
                return Value("int", int(text))
            return Value("float", float(text))
        if kind == "field":
            if text in ("true", "false"):
                return Value("bool", text == "true")
            if text == "nil":
                return Value("nil", None)
            if text in STATUS_VALUES:
                return Value("status", text)
            if text in KIND_VALUES:
                return Value("kind", text)
            raise Unsupported(f"value {text!r} is not supported (quote strings)")
        raise Unsupported(f"expected a value, found {text or 'end of query'!r}")


def parse_field(text: str) -> Field:
    """One field name (`resource.service.name`, `span.x`, `.x`, `name`)."""
    p = _Parser(text.strip())
    f = p.field()
    if p.peek()[0] != "eof":
        raise Unsupported(f"{text!r} is not one field name")
    return f


def parse_field_or_none(text: str) -> Field | None:
    try:
        return parse_field(text)
    except Unsupported:
        return None


def parse(text: str) -> Any:
    """The syntax tree of a TraceQL query, or `Unsupported`."""
    return _Parser(text.strip()).parse()


# -- SQL -------------------------------------------------------------------------


@dataclass
class Sql:
    """A search ready for `SqlStore.search_traces_where`."""

    cond: str
    icond: str
    params: dict[str, Any] = field(default_factory=dict)
    matched: str = ""


class _Compiler:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def p(self, value: Any, typ: str) -> str:
        name = f"q{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{typ}}}"

    # (exact SQL, index SQL or "1")
    def expr(self, e: Any) -> tuple[str, str]:
        if isinstance(e, BoolOp):
            lc, li = self.expr(e.left)
            rc, ri = self.expr(e.right)
            if e.op == "&&":
                idx = " AND ".join(x for x in (li, ri) if x != "1") or "1"
                return f"({lc} AND {rc})", f"({idx})" if idx != "1" else "1"
            idx = "1" if "1" in (li, ri) else f"({li} OR {ri})"
            return f"({lc} OR {rc})", idx
        if isinstance(e, Not):
            c, _ = self.expr(e.expr)
            return f"(NOT {c})", "1"  # a negation has no superset on the index
        assert isinstance(e, Cmp)
        return self.cmp(e)

    def cmp(self, c: Cmp) -> tuple[str, str]:
        f, op, v = c.field, c.op, c.value
        if f.scope == "intrinsic":
            return self.intrinsic(c)
        if f.scope == "resource" and f.name == "service.name" or (
                f.scope == "any" and f.name == "service.name"):
            sql, _ = self.compare("service", "service != ''", op, v, f)
            idx = f"service = {self.params_ref(v)}" if op == "=" and v.kind == "string" else "1"
            return sql, idx
        parts = []
        if f.scope in ("span", "any"):
            if f.name in VIRTUAL_ATTRIBUTES:
                col = VIRTUAL_ATTRIBUTES[f.name]
                parts.append(self.compare(f"toString({col})",
                                          f"toString({col}) NOT IN ('', '0')", op, v, f)[0])
            else:
                k = self.p(f.name, "String")
                val = f"if(mapContains(attributes, {k}), attributes[{k}], attributes_json[{k}])"
                exists = f"(mapContains(attributes, {k}) OR mapContains(attributes_json, {k}))"
                parts.append(self.compare(val, exists, op, v, f)[0])
        if f.scope in ("resource", "any"):
            k = self.p(f.name, "String")
            parts.append(self.compare(f"resource[{k}]", f"mapContains(resource, {k})",
                                      op, v, f)[0])
        sql = parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
        idx = "1"
        forms = _stored_forms(v) if op == "=" and f.name not in VIRTUAL_ATTRIBUTES else []
        if forms:
            # The index holds cityHash64(key, value) of every attribute and resource
            # attribute as stored (strings as they are, typed values as JSON text): an
            # equality has a superset there, one hash per spelling the value is stored
            # with.  Without it a numeric condition (`span.http.status_code = 500`)
            # checked candidates of the other conditions only, in ever larger rounds:
            # 4-9 s at 1 M spans (issue 16).
            k = self.p(f.name, "String")
            hs = [f"has(tags, {tag_hash(k, self.p(x, 'String'))})" for x in forms]
            idx = hs[0] if len(hs) == 1 else "(" + " OR ".join(hs) + ")"
        return sql, idx

    def params_ref(self, v: Value) -> str:
        return self.p(v.value, "String")

    def intrinsic(self, c: Cmp) -> tuple[str, str]:
        name, op, v = c.field.name, c.op, c.value
        if name == "duration":
            if v.kind not in ("duration", "int"):
                raise Unsupported(f"duration compared with a {v.kind}: use a duration "
                                  "such as 100ms")
            if op in ("=~", "!~"):
                raise Unsupported(f"operator {op!r} on duration is not supported")
            sql_op = {"=": "=", "!=": "!="}.get(op, op)
            ref = self.p(max(0, int(v.value)), "UInt64")
            sql = f"(end_ns - start_ns) {sql_op} {ref}"
            idx = "1"
            if op in (">", ">=", "="):
                idx = f"toUInt64(dur_max_ms) * 1000000 >= {ref}"
            if op in ("<", "<="):
                idx = f"toUInt64(dur_min_ms) * 1000000 <= {ref}"
            return sql, idx
        if name in ("status", "kind"):
            allowed = "status" if name == "status" else "kind"
            if v.kind not in (allowed, "string"):
                raise Unsupported(f"{name} compared with a {v.kind}: use one of "
                                  f"{sorted(STATUS_VALUES if name == 'status' else KIND_VALUES)}")
            if op not in ("=", "!="):
                raise Unsupported(f"operator {op!r} on {name} is not supported")
            ref = self.p(v.value, "String")
            col = name if name == "status" else kind_sql(self.p(MODEL_KEY, "String"))
            sql = f"{col} {op} {ref}"
            idx = f"has(statuses, {ref})" if name == "status" and op == "=" else "1"
            return sql, idx
        col = "operation" if name == "name" else "error"
        sql, _ = self.compare(col, f"{col} != ''", op, v, c.field)
        idx = "1"
        if name == "name" and op == "=" and v.kind == "string":
            if "{id}" in v.value:
                # The agent's RED metrics fold id-like path segments to `{id}` (and drop
                # the query string); a dashboard link from such an operation must find
                # the spans it counted, so `{id}` also matches any one segment.
                rx = "^" + "[^/?]+".join(_re2_escape(x) for x in v.value.split("{id}")) \
                    + r"(\?.*)?$"
                ref = self.p(rx, "String")
                return (f"({sql} OR match(operation, {ref}))",
                        f"arrayExists(o -> match(o, {ref}), operations)")
            idx = f"has(operations, {self.p(v.value, 'String')})"
        return sql, idx

    def compare(self, val: str, exists: str, op: str, v: Value, f: Field) -> tuple[str, str]:
        """SQL for `val op v` where `val` is a String expression of the field."""
        label = f"{'' if f.scope in ('intrinsic', 'any') else f.scope}.{f.name}"
        if v.kind == "nil":
            if op == "=":
                return f"(NOT {exists})", "1"
            if op == "!=":
                return exists, "1"
            raise Unsupported(f"operator {op!r} with nil is not supported")
        if v.kind in ("status", "kind", "duration"):
            raise Unsupported(f"{label} compared with a {v.kind} value {v.value!r} is not "
                              "supported (quote strings)")
        if op in ("=~", "!~"):
            if v.kind != "string":
                raise Unsupported(f"regex operator {op!r} needs a string")
            try:
                re.compile(v.value)
            except re.error as e:
                raise Unsupported(f"bad regex {v.value!r}: {e}") from None
            ref = self.p(f"^(?:{v.value})$", "String")
            sql = f"match({val}, {ref})"
            return (sql, "1") if op == "=~" else (f"({exists} AND NOT {sql})", "1")
        if v.kind == "string":
            ref = self.p(v.value, "String")
            sql = f"{val} {op} {ref}"
        elif v.kind == "bool":
            if op not in ("=", "!="):
                raise Unsupported(f"operator {op!r} on a boolean is not supported")
            sql = f"{val} {op} {self.p('true' if v.value else 'false', 'String')}"
        else:
            ref = self.p(float(v.value), "Float64")
            sql = f"toFloat64OrNull({val}) {op} {ref}"
        if op == "!=":
            sql = f"({exists} AND {sql})"
        return sql, "1"


def kind_sql(model_key: str) -> str:
    """SQL of a span's OTLP kind: the `kind` column, except where ingest kept a kind
    the column cannot say (producer as client, consumer as server, unspecified as
    internal) in the OTLP model object (`model_key`: its attribute name's parameter).
    A span stored without a kind is unspecified."""
    okind = f"JSONExtractString(attributes_json[{model_key}], 'kind')"
    return (f"multiIf(kind = '', 'unspecified', "
            f"NOT mapContains(attributes_json, {model_key}), toString(kind), "
            f"{okind} IN ('producer', 'consumer', 'unspecified'), {okind}, toString(kind))")


def _stored_forms(v: Value) -> list[str]:
    """The texts an attribute equal to `v` is stored as: a string as it is; a typed
    value as the JSON text ingest writes (`json.dumps`: `500`, `500.0`, `true`), or
    as a string spelled so.  [] when not an equality the index can narrow."""
    if v.kind == "string":
        return [v.value]
    if v.kind == "bool":
        return ["true" if v.value else "false"]
    if v.kind == "int":
        return [str(v.value), repr(float(v.value))]
    if v.kind == "float" and v.value == v.value and abs(v.value) != float("inf"):
        forms = [repr(v.value)]
        if v.value.is_integer():
            forms.append(str(int(v.value)))
        return forms
    return []


def _re2_escape(text: str) -> str:
    """Escape for ClickHouse's RE2 (which refuses Python's escaped spaces)."""
    return re.sub(r"([.^$|?*+()\[\]{}\\])", r"\\\1", text)


def _time(since_ns: int, until_ns: int, params: dict[str, Any]) -> tuple[list[str], list[str]]:
    where, iwhere = [], []
    if since_ns:
        params["t_since"] = int(since_ns)
        where.append("start_ns >= {t_since:UInt64}")
        iwhere.append("ts_max_ms * 1000000 >= {t_since:UInt64}")
    if until_ns:
        params["t_until"] = int(until_ns)
        where.append("start_ns < {t_until:UInt64}")
        iwhere.append("toUInt64(ts_min) * 1000000000 < {t_until:UInt64}")
    return where, iwhere


def to_sql(tree: Any, since_ns: int = 0, until_ns: int = 0) -> Sql:
    """A parsed query as span condition, index condition and trace condition."""
    comp = _Compiler()
    twhere, tiwhere = _time(since_ns, until_ns, comp.params)
    spansets: list[tuple[str, str]] = []

    def walk(node: Any) -> str:
        """Trace-level SQL over `countIf` of each spanset (aggregate context)."""
        if isinstance(node, SpansetOp):
            left, right = walk(node.left), walk(node.right)
            return f"({left} {'AND' if node.op == '&&' else 'OR'} {right})"
        assert isinstance(node, Spanset)
        c, i = comp.expr(node.expr) if node.expr is not None else ("1", "1")
        if twhere:  # the time window applies to every spanset's spans
            c = "(" + " AND ".join([c, *twhere]) + ")" if c != "1" else " AND ".join(twhere)
        spansets.append((c, i))
        return f"(countIf({c}) > 0)"

    trace_cond = walk(tree)
    if len(spansets) == 1:
        cond, icond = spansets[0]
        matched = ""
    else:
        cond = "(" + " OR ".join(c for c, _ in spansets) + ")"
        idxs = [i for _, i in spansets]
        # Every span meeting `cond` sits in an index row meeting one spanset's superset.
        icond = "1" if "1" in idxs else "(" + " OR ".join(idxs) + ")"
        matched = trace_cond
    icond = " AND ".join(x for x in [*tiwhere, icond] if x != "1") or "1"
    return Sql(cond=cond, icond=icond, params=comp.params, matched=matched)


def compile_query(text: str, since_ns: int = 0, until_ns: int = 0) -> Sql:
    """TraceQL text -> `Sql`; `Unsupported` for what is not supported."""
    return to_sql(parse(text), since_ns, until_ns)


def spanset_fields(tree: Any) -> list[Field]:
    """The fields a query compares (Tempo returns them as the matched spans' attributes)."""
    out: list[Field] = []

    def go(n: Any) -> None:
        if isinstance(n, SpansetOp | BoolOp):
            go(n.left)
            go(n.right)
        elif isinstance(n, Spanset):
            if n.expr is not None:
                go(n.expr)
        elif isinstance(n, Not):
            go(n.expr)
        elif isinstance(n, Cmp) and n.field not in out:
            out.append(n.field)

    go(tree)
    return out
