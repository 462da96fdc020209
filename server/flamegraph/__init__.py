"""Flame graphs: spans -> collapsed stacks / bars -> SVG, HTML, speedscope, folded.

Every module of this package is imported here, and each format module registers its
renderer (server/flamegraph/registry.py): a new format is a new module, nothing to list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from proto.span import Span
from server.flamegraph.registry import RENDERERS, Renderer
from server.flamegraph.stacks import fold

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")


def formats() -> tuple[str, ...]:
    """The registered format names."""
    return tuple(RENDERERS)


def renderer(fmt: str) -> Renderer:
    try:
        return RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown flame graph format {fmt!r}: use one of "
                         f"{', '.join(RENDERERS)}") from None


def format_for(path: str) -> str:
    """Renderer name for an output file name, by extension."""
    low = path.lower()
    for r in RENDERERS.values():
        if any(low.endswith(ext) for ext in r.extensions):
            return r.name
    exts = " ".join(e for r in RENDERERS.values() for e in r.extensions)
    raise ValueError(f"unknown flame graph format for {path!r}: use {exts}")


def render_trace(spans: Sequence[Span], fmt: str, title: str) -> str:
    """A time-ordered flame graph of one trace (x = time, one bar per span) where the
    format draws time; else its collapsed stacks."""
    r = renderer(fmt)
    if r.trace is not None:
        return r.trace(spans, title)
    return r.stacks(fold(spans), title)


def render_stacks(stacks: dict[str, int], fmt: str, title: str) -> str:
    """An aggregate flame graph of collapsed stacks (x = share of self time)."""
    return renderer(fmt).stacks(stacks, title)


__all__ = ["fold", "format_for", "formats", "render_stacks", "render_trace", "renderer"]
