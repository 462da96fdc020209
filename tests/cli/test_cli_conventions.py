"""The query CLI's conventions (issue 15, one test per bullet), each checked by exit
code and output shape against a real `zerotrace server` process fed by the agent's
real exporter, with `zerotrace` itself run as a process (pipe or pseudo-terminal)."""

from __future__ import annotations

import json
import re
import time

import pytest
from cli_proc import MS, push, zt, zt_tty

from proto.span import Span, new_span_id, new_trace_id
from server.cli import fmt_time

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
BOX = set("─│┃━┏┓┗┛├┤┬┴┼╭╮╰╯└┘┌┐═║")
LONG_SERVICES = [f"service-with-a-rather-long-name-{i}" for i in range(4)]


def _trace(tid: str, start_ns: int, dur_ms: int, services: list[str], op: str) -> list[Span]:
    root = Span(trace_id=tid, span_id=new_span_id(), kind="server", source="S",
                protocol="http", operation=op, status="ok", status_code="200",
                service=services[0], process="gunicorn", start_ns=start_ns,
                end_ns=start_ns + dur_ms * MS)
    kids = [Span(trace_id=tid, span_id=new_span_id(), parent_span_id=root.span_id,
                 kind="client", source="S", protocol="redis", operation="GET k",
                 status="ok", service=svc, start_ns=start_ns + (i + 1) * MS // 4,
                 end_ns=start_ns + (i + 2) * MS // 4)
            for i, svc in enumerate(services[1:])]
    return [root, *kids]


@pytest.fixture(scope="module")
def data(server):
    """Three traces: recent (20 ms), two hours old with a 64-bit id (5 ms), recent with
    many long service names (50 ms).  Start times end in 123456789 ns: more digits than
    a float64 keeps (2^53 ns is 104 days)."""
    now = time.time_ns() // 1_000_000_000 * 1_000_000_000
    recent = now - 600 * 1_000_000_000 + 123_456_789
    old = now - 7200 * 1_000_000_000 + 123_456_789
    t = {
        "recent": new_trace_id(),
        "old": "0" * 16 + new_trace_id()[:16],
        "wide": new_trace_id(),
    }
    spans = (_trace(t["recent"], recent, 20, ["shop", "cache"], "GET /cart")
             + _trace(t["old"], old, 5, ["shop"], "GET /old")
             + _trace(t["wide"], recent + 5_000_000_000, 50, LONG_SERVICES,
                      "GET /a/rather/long/route/name/that/needs/room"))
    push(server, spans)
    return {"ids": t, "recent": recent, "old": old, "server": server}


def _q(data, *argv: str, **kw):
    return zt(*argv, "--server", data["server"], **kw)


def _one_line_error(r) -> None:
    assert r.out == ""
    assert r.err.count("\n") == 1 and r.err.startswith("zerotrace: "), r.err
    assert "Traceback" not in r.err


def test_output_formats_and_out_file(data, tmp_path):
    """`-o table|json` on every query command, `-o otlp-json` for a trace, `--out FILE`."""
    tid = data["ids"]["recent"]
    for cmd in ("services", "traces", "dependencies"):
        r = _q(data, cmd, "-o", "json")
        assert r.rc == 0, r.err
        assert isinstance(json.loads(r.out), list) and json.loads(r.out)
        r = _q(data, cmd, "-o", "table")
        assert r.rc == 0 and r.out.splitlines()[0].split()[0] in ("service", "trace", "caller")
    r = _q(data, "trace", tid, "-o", "json")
    assert r.rc == 0 and {s["trace_id"] for s in json.loads(r.out)["spans"]} == {tid}
    r = _q(data, "trace", tid, "-o", "otlp-json")
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 2 and {s["traceId"] for s in spans} == {tid}
    assert {s["startTimeUnixNano"] for s in spans} >= {str(data["recent"])}
    # --out: stdout empty, the file holds exactly what stdout would have
    f = tmp_path / "t.json"
    r2 = _q(data, "trace", tid, "-o", "otlp-json", "--out", str(f))
    assert r2.rc == 0 and r2.out == "" and json.loads(f.read_text()) == doc
    f = tmp_path / "traces.txt"
    r = _q(data, "traces", "--out", str(f))
    assert r.rc == 0 and r.out == "" and tid in f.read_text()
    r = _q(data, "services", "--out", str(tmp_path / "no" / "such" / "dir.txt"))
    assert r.rc == 2 and "cannot write" in r.err
    _one_line_error(r)
    assert not (tmp_path / "no").exists()
    r = _q(data, "trace", tid, "-o", "yaml")
    assert r.rc == 2
    _one_line_error(r)
    # flamegraph: --out FILE, -o FORMAT (or by extension); the old `-o FILE` still works
    for argv, fmt in ((["--out", str(tmp_path / "a.svg")], "<svg"),
                      (["--out", str(tmp_path / "a.txt"), "-o", "folded"], "[S] shop: GET /cart"),
                      (["-o", str(tmp_path / "b.html")], "<html")):
        r = _q(data, "flamegraph", tid, *argv)
        assert r.rc == 0, r.err
        path = argv[argv.index("--out") + 1] if "--out" in argv else argv[1]
        assert fmt in open(path).read()
    r = _q(data, "flamegraph", tid)
    assert r.rc == 2 and "--out" in r.err
    _one_line_error(r)


def test_utc_rfc3339_times_with_dates(data):
    r = _q(data, "traces", "-o", "json")
    rows = {t["trace_id"]: t for t in json.loads(r.out)}
    row = rows[data["ids"]["recent"]]
    assert RFC3339.match(row["start_time"]) and row["start_time"].endswith(".123456789Z")
    assert row["start_time"] == fmt_time(data["recent"])
    r = _q(data, "traces")
    line = next(x for x in r.out.splitlines() if x.startswith(data["ids"]["recent"]))
    assert fmt_time(data["recent"], 3) in line  # 2026-12-03T07:00:00.123Z
    r = _q(data, "trace", data["ids"]["recent"])
    assert fmt_time(data["recent"], 6) in r.out.splitlines()[0]
    spans = json.loads(_q(data, "trace", data["ids"]["recent"], "-o", "json").out)["spans"]
    assert all(RFC3339.match(s["start_time"]) and RFC3339.match(s["end_time"]) for s in spans)


def test_since_until_durations_and_rfc3339(data):
    ids = data["ids"]

    def found(*argv: str) -> set[str]:
        r = _q(data, "traces", "-o", "json", *argv)
        assert r.rc == 0, r.err
        return {t["trace_id"] for t in json.loads(r.out)}

    assert found() == {ids["recent"], ids["wide"]}  # default: the last hour
    assert found("--since", "3h") == set(ids.values())
    assert found("--since", "3h", "--until", "1h") == {ids["old"]}
    old = data["old"]
    assert found("--since", fmt_time(old - 10**9), "--until", fmt_time(old + 10**9)) \
        == {ids["old"]}
    # an offset other than Z: the same instant
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(old // 10**9 - 1 + 3600)) + "+01:00"
    assert found("--since", t, "--until", "1h") == {ids["old"]}
    r = _q(data, "services", "-o", "json", "--since", "3h", "--until", "1h")
    assert r.rc == 0 and [s["service"] for s in json.loads(r.out)] == ["shop"]
    deps = [(d["parent"], d["child"]) for d in json.loads(_q(data, "dependencies", "-o",
                                                              "json").out)]
    assert ("shop", "cache") in deps  # the recent trace's call, inside the last hour
    r = _q(data, "dependencies", "-o", "json", "--since", "3h", "--until", "1h")
    assert r.rc == 0 and json.loads(r.out) == []  # the old trace has no call
    r = _q(data, "traces", "--since", "1h", "--until", "2h")
    assert r.rc == 2 and "--until" in r.err
    _one_line_error(r)
    r = _q(data, "traces", "--since", "2026-12-03T07:00:00")  # RFC 3339 needs a zone
    assert r.rc == 2 and "RFC 3339" in r.err
    _one_line_error(r)


def test_max_duration(data):
    ids = data["ids"]

    def found(*argv: str) -> set[str]:
        r = _q(data, "traces", "-o", "json", "--since", "3h", *argv)
        assert r.rc == 0, r.err
        return {t["trace_id"] for t in json.loads(r.out)}

    # as --min-duration, a bound on a span of the trace (the store's search semantics):
    # the old trace's one span is 5 ms, the others have 0.25 ms client spans
    assert found("--max-duration", "30ms") == set(ids.values())
    assert found("--max-duration", "4ms") == {ids["recent"], ids["wide"]}
    assert found("--min-duration", "10ms", "--max-duration", "30ms") == {ids["recent"]}
    assert found("--max-duration", "0.1ms") == set()
    r = _q(data, "traces", "--min-duration", "30ms", "--max-duration", "10ms")
    assert r.rc == 2 and "--max-duration" in r.err
    _one_line_error(r)


def test_16_and_32_digit_trace_ids(data):
    full = data["ids"]["old"]
    short = full[16:]
    for tid in (short, full, short.upper()):
        r = _q(data, "trace", tid, "-o", "json")
        assert r.rc == 0, r.err
        assert {s["trace_id"] for s in json.loads(r.out)["spans"]} == {full}
    r = _q(data, "trace", full[17:])  # 15 digits
    assert r.rc == 2 and "16 or 32 hex digits" in r.err
    _one_line_error(r)
    r = _q(data, "trace", "f" * 16)  # well formed, not stored
    assert r.rc == 1 and "not found" in r.err
    _one_line_error(r)


def test_nanoseconds_are_strings_in_json(data):
    r = _q(data, "trace", data["ids"]["recent"], "-o", "json")
    spans = json.loads(r.out)["spans"]
    root = next(s for s in spans if not s["parent_span_id"])
    assert root["start_ns"] == str(data["recent"])  # every digit, as a string
    assert root["end_ns"] == str(data["recent"] + 20 * MS)
    for rows in (json.loads(_q(data, "traces", "-o", "json").out),
                 json.loads(_q(data, "services", "-o", "json").out)):
        for row in rows:
            ns = {k: v for k, v in row.items() if k.endswith("_ns")}
            assert ns and all(isinstance(v, str) and v.isdigit() for v in ns.values()), row
    # and float64 would not have kept them: the test means something
    assert int(float(data["recent"])) != data["recent"]


def test_plain_tables_when_not_a_terminal(data):
    for argv in (["traces"], ["services"], ["dependencies"], ["trace", data["ids"]["recent"]]):
        r = _q(data, *argv)
        assert r.rc == 0, r.err
        assert not BOX & set(r.out) and "\x1b" not in r.out, r.out
    # on a terminal the trace is drawn as a tree (box drawing allowed there)
    r = zt_tty("trace", data["ids"]["recent"], "--server", data["server"], columns=120)
    assert r.rc == 0, r.err
    assert BOX & set(r.out) and "GET /cart" in r.out


def test_width_aware_columns(data):
    wide = data["ids"]["wide"]
    r = _q(data, "traces", columns=80)
    assert r.rc == 0
    lines = r.out.splitlines()
    assert all(len(x) <= 80 for x in lines), "\n".join(lines)
    assert any(x.startswith(wide + "  ") for x in lines)  # the id is never cut
    assert fmt_time(data["recent"], 3) in r.out  # nor the date
    r = _q(data, "traces", columns=250)
    assert "services" in r.out.splitlines()[0] and LONG_SERVICES[3] in r.out
    r = _q(data, "traces")  # piped without $COLUMNS: nothing cut
    assert LONG_SERVICES[3] in r.out
    r = zt_tty("traces", "--server", data["server"], columns=80)
    assert r.rc == 0, r.err
    rows = [x for x in r.out.replace("\r", "").splitlines() if x.strip()]
    assert rows and all(len(x) <= 80 for x in rows), rows
    assert any(x.startswith(wide) for x in rows)


def test_one_line_errors_and_exit_codes(data, tmp_path):
    r = zt("services", "--server", "127.0.0.1:1", "--timeout", "3")
    assert r.rc == 1 and "cannot reach" in r.err
    _one_line_error(r)
    r = zt("traces", "--limit", "many")
    assert r.rc == 2 and "--limit" in r.err
    _one_line_error(r)
    r = zt("no-such-command")
    assert r.rc == 2
    _one_line_error(r)
    r = zt("traces", "--since", "30000d")
    assert r.rc == 2 and "before 1970" in r.err
    _one_line_error(r)
    # a server that cannot start says why in one line, exit 1: its port is taken
    host, port = data["server"].split(":")
    r = zt("server", "--listen", data["server"], "--data", str(tmp_path / "d"), "--http", "")
    assert r.rc == 1 and f"cannot listen on {host}:{port}" in r.err
    _one_line_error(r)
    # the codes are documented
    doc = open("docs/cli.md").read()
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in doc
