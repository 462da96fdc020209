"""A minimal renderer for the zerotrace Helm chart (no helm binary here).

It understands only what the chart is allowed to use, so the chart stays simple
enough to check offline: `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`,
`{{ .Release.Name }}`, `{{ .Chart.Name }}` / `.Chart.Version` / `.Chart.AppVersion`,
the pipes `quote`, `toYaml`, `nindent N`, `indent N`, `{{-` / `-}}` whitespace
trimming, and `{{ if FIELD }}` / `{{ if not FIELD }}` ... `{{ else }}` ... `{{ end }}`
blocks (Go templates' truth: false, 0, "", empty map or list and missing are false).
Anything else raises `Unsupported`: a template construct the test cannot
render is a construct the chart must not use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class Unsupported(ValueError):
    pass


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    if not path.startswith("."):
        raise Unsupported(f"not a field path: {path!r}")
    value: Any = scope
    for part in path[1:].split("."):
        if not isinstance(value, dict) or part not in value:
            raise Unsupported(f"no value at {path}")
        value = value[part]
    return value


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip("\n")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise Unsupported("a map or list needs toYaml")
    return str(value)


def _evaluate(expr: str, scope: dict[str, Any]) -> str:
    stages = [s.strip() for s in expr.split("|")]
    head = stages[0].split()
    if len(head) == 2 and head[0] in ("toYaml", "quote"):
        # `toYaml .X` is the function form of `.X | toYaml`
        stages[0:1] = [head[1], head[0]]
    value: Any = _lookup(stages[0], scope)
    text: str | None = None
    for stage in stages[1:]:
        name, *args = stage.split()
        if name == "quote" and not args:
            text = json.dumps(_scalar(value) if text is None else text)
        elif name == "toYaml" and not args:
            text = _to_yaml(value)
        elif name in ("nindent", "indent") and len(args) == 1 and args[0].isdigit():
            pad = " " * int(args[0])
            body = text if text is not None else _scalar(value)
            text = ("\n" if name == "nindent" else "") + "\n".join(
                pad + line if line else line for line in body.split("\n")
            )
        else:
            raise Unsupported(f"pipe {stage!r}")
    return text if text is not None else _scalar(value)


def _truth(cond: str, scope: dict[str, Any]) -> bool:
    neg = cond.startswith("not ")
    path = cond[4:].strip() if neg else cond
    try:
        value = _lookup(path, scope)
    except Unsupported:
        if not path.startswith(".Values."):
            raise
        value = None  # an unset value is false, as in Helm
    return bool(value) != neg


def render(template: str, scope: dict[str, Any]) -> str:
    out: list[str] = []
    pos = 0
    trim_next = False
    # One frame a nested `if`: (emitting, this branch taken).
    stack: list[tuple[bool, bool]] = []

    def emitting() -> bool:
        return all(f[0] for f in stack)

    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if emitting():
            out.append(text)
        expr = m.group(2)
        trim_next = bool(m.group(3))
        pos = m.end()
        if expr.startswith("/*"):
            raise Unsupported("comments")
        word = expr.split(" ", 1)[0]
        if word == "if":
            taken = _truth(expr[3:].strip(), scope)
            stack.append((taken, taken))
        elif word == "else" and expr == "else":
            if not stack:
                raise Unsupported("else without if")
            _, taken = stack[-1]
            stack[-1] = (not taken, True)
        elif word == "end" and expr == "end":
            if not stack:
                raise Unsupported("end without if")
            stack.pop()
        elif word in ("range", "with", "define", "template", "include", "else", "end"):
            raise Unsupported(f"action {expr!r}")
        elif emitting():
            out.append(_evaluate(expr, scope))
    if stack:
        raise Unsupported("if without end")
    rest = template[pos:]
    out.append(rest.lstrip() if trim_next else rest)
    return "".join(out)


def render_chart(
    chart_dir: Path, namespace: str, release: str = "zerotrace", values: dict | None = None
) -> dict[str, str]:
    """Template file name -> rendered text, with values.yaml (deep-)merged with
    `values`."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    merged = _merge(yaml.safe_load((chart_dir / "values.yaml").read_text()), values or {})
    scope = {
        "Values": merged,
        "Release": {"Namespace": namespace, "Name": release},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    }
    out = {}
    for path in sorted((chart_dir / "templates").iterdir()):
        if path.suffix in (".yaml", ".yml"):
            out[path.name] = render(path.read_text(), scope)
        elif path.name != "NOTES.txt":
            raise Unsupported(f"template file {path.name} (helpers/partials not supported)")
    return out


def _merge(base: Any, over: Any) -> Any:
    """Helm's values coalescing: maps merge deeply, a null in the override deletes
    the default key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base.get(k), v)
        return out
    return over
