"""The protocol registry: inference from first bytes, parser factory, drop counters.

Protocols register themselves: every module of this package that declares
`PROTOCOL = ProtocolSpec(...)` (agent/protocols/spec.py) is found here, with its parser
factory, its counters and its inference rules, so a new protocol is one new module plus
its tests.  `infer` runs all protocols' rules in their declared order on the first bytes a
connection carries (either direction); ports are only a tie-breaker for shapes several
protocols share, so Redis on port 8080 is still Redis.  `new_parser` builds the stateful
per-connection parser.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter

from .base import ConnectionParser
from .spec import InferenceRule, ProtocolSpec

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


def unregister(spec: ProtocolSpec) -> None:
    """Remove a protocol added by `register` (tests)."""
    for name in spec.names:
        _SPECS.pop(name, None)
    STATS.pop(spec.names[0], None)
    for rules in _RULES.values():
        rules[:] = [r for r in rules if r not in spec.rules]


for _m in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if not _m.name.startswith("_"):
        _spec = getattr(importlib.import_module(f"{__package__}.{_m.name}"), "PROTOCOL", None)
        if isinstance(_spec, ProtocolSpec):
            register(_spec)

PROTOCOLS = tuple(_SPECS)


def infer(data: bytes, direction: int, local_port: int, remote_port: int,
          transport: str) -> str | None:
    """The protocol a connection speaks, from its first bytes; None when unsure."""
    if not data:
        return None
    ports = (local_port, remote_port)
    for rule in _RULES.get(transport, ()):
        found = rule.match(data, ports)
        if found is not None:
            return found
    return None


def new_parser(protocol: str, client_side: bool | None,
               transport: str | None = None) -> ConnectionParser:
    """A fresh parser for one connection; `transport` only matters for DNS."""
    return _SPECS[protocol].new_parser(client_side, transport)
