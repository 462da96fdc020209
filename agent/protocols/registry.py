"""The protocol registry: inference from first bytes, parser factory, drop counters.

Protocols register themselves: every module of this package that declares
`PROTOCOL = ProtocolSpec(...)` (agent/protocols/spec.py) is found here, with its parser
factory, its counters and its inference rules, so a new protocol is one new module plus
its tests.  `infer` runs all protocols' rules in their declared order on the first bytes a
connection carries (either direction); ports are only a tie-breaker for shapes several
protocols share, so Redis on port 8080 is still Redis.  `new_parser` builds the stateful
per-connection parser.  Both run once per new connection and are compiled
(`_infer.pyx`, with the built-in protocols' tests of first bytes); this module keeps the
declarations and hands the compiled side the ordered rules and the factories whenever
they change.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter

from . import _infer
from ._infer import infer, new_parser
from .spec import InferenceRule, ProtocolSpec

__all__ = ["PROTOCOLS", "STATS", "infer", "new_parser", "register", "unregister"]

_SPECS: dict[str, ProtocolSpec] = {}
# Drop/gap counters, reason -> count, one Counter per parser module ("grpc" shares
# "http2"'s), for export as metrics.
STATS: dict[str, Counter] = {}
_RULES: dict[str, list[InferenceRule]] = {"tcp": [], "udp": []}


def register(spec: ProtocolSpec) -> None:
    """Add a protocol (done for every module of the package at import; tests may add
    their own).  A name registered twice is a programming error."""
    for name in spec.names:
        if name in _SPECS:
            raise ValueError(f"protocol {name!r} registered twice")
    for name in spec.names:
        _SPECS[name] = spec
    STATS[spec.names[0]] = spec.stats
    for rule in spec.rules:
        rules = _RULES[rule.transport]
        rules.append(rule)
        rules.sort(key=lambda r: r.order)
    _configure()


def unregister(spec: ProtocolSpec) -> None:
    """Remove a protocol added by `register` (tests)."""
    for name in spec.names:
        _SPECS.pop(name, None)
    STATS.pop(spec.names[0], None)
    for rules in _RULES.values():
        rules[:] = [r for r in rules if r not in spec.rules]
    _configure()


def _configure() -> None:
    """Hand the compiled `infer` and `new_parser` the current rules and factories."""
    _infer.configure(_RULES["tcp"], _RULES["udp"],
                     {name: spec.new_parser for name, spec in _SPECS.items()})


for _m in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if not _m.name.startswith("_"):
        _spec = getattr(importlib.import_module(f"{__package__}.{_m.name}"), "PROTOCOL", None)
        if isinstance(_spec, ProtocolSpec):
            register(_spec)

PROTOCOLS = tuple(_SPECS)

