"""The flame-graph renderers: each format module registers itself here, so a new format
is one new module in server/flamegraph/ plus its tests (the CLI, `format_for` and the
HTTP API read this table; nothing else lists formats)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proto.span import Span

StacksRenderer = Callable[[dict[str, int], str], str]
TraceRenderer = Callable[[Sequence[Span], str], str]


@dataclass(frozen=True)
class Renderer:
    """One output format.  `stacks` draws collapsed stacks (aggregates); `trace` draws one
    trace and defaults to `stacks` over the trace's folded stacks."""

    name: str
    extensions: tuple[str, ...]
    content_type: str
    stacks: StacksRenderer
    trace: TraceRenderer | None = None


RENDERERS: dict[str, Renderer] = {}


def register(renderer: Renderer) -> Renderer:
    """Add a format; a name or an extension taken twice is a programming error."""
    if renderer.name in RENDERERS:
        raise ValueError(f"flame graph format {renderer.name!r} registered twice")
    taken = {e for r in RENDERERS.values() for e in r.extensions}
    dup = taken.intersection(renderer.extensions)
    if dup:
        raise ValueError(f"flame graph extension(s) {sorted(dup)} registered twice")
    RENDERERS[renderer.name] = renderer
    return renderer


def unregister(name: str) -> None:
    """Remove a format (tests that register one of their own)."""
    RENDERERS.pop(name, None)
