"""Query parameters as Grafana sends them: Go durations, Unix times, logfmt tags."""

from __future__ import annotations

import re
import shlex
import time
import urllib.parse

from server.http.app import HttpError

_GO_DUR = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def go_duration_ns(text: str, name: str) -> int:
    """'1m30s', '100ms', '1.5s' (Go's time.ParseDuration) -> ns; '' -> 0."""
    text = text.strip()
    if not text:
        return 0
    pos, total = 0, 0.0
    for m in _GO_DUR.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise HttpError(400, f"bad {name} {text!r}: use a duration such as 100ms or 1m30s")
    return int(total)


def int_param(text: str, name: str, default: int = 0) -> int:
    if text == "":
        return default
    try:
        return int(float(text))
    except ValueError:
        raise HttpError(400, f"bad {name} {text!r}: not a number") from None


def unix_window(start: str, end: str, unit_ns: int) -> tuple[int, int]:
    """(since, until) in ns from Unix times in `unit_ns` units; 0 = open."""
    return int_param(start, "start") * unit_ns, int_param(end, "end") * unit_ns


def recent_window(since_ns: int, until_ns: int, default_s: int = 86_400) -> tuple[int, int]:
    """A window for listing tags and values when none is given: the last day."""
    if since_ns or until_ns:
        return since_ns, until_ns
    return time.time_ns() - default_s * 1_000_000_000, 0


def maybe_double_decoded(text: str) -> str:
    """A value URL-encoded twice (Grafana encodes tag values, then the URL) decoded
    once more; a value that reads as a query already is left as it is."""
    if re.search(r"%[0-9A-Fa-f]{2}", text) and not re.search(r"[=\s{}:\"]", text):
        return urllib.parse.unquote(text)
    return text


def logfmt(text: str) -> dict[str, str]:
    """`a=b c="d e"` -> {"a": "b", "c": "d e"} (Tempo's and Jaeger's tag syntax)."""
    out: dict[str, str] = {}
    try:
        parts = shlex.split(text, posix=True)
    except ValueError as e:
        raise HttpError(400, f"bad tags {text!r}: {e}") from None
    for part in parts:
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise HttpError(400, f"bad tag {part!r}: use key=value")
        out[k] = v
    return out
