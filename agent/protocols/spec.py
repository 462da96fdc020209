"""What a protocol module declares to be found by the registry: its parser factory, its
drop counters and its inference rules.

A protocol module (agent/protocols/NAME.py) sets `PROTOCOL = ProtocolSpec(...)`; the
registry imports every module of the package and collects the declarations, so a new
protocol is one new module plus its tests.  Inference rules of all protocols run in one
order (`InferenceRule.order`, ascending; first answer wins): the first bytes of several
protocols look alike, and which test goes first is part of the rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

Ports = tuple[int, int]  # local, remote


@dataclass(frozen=True)
class InferenceRule:
    """One test of a connection's first bytes; `match` returns a protocol name or None.
    A rule may name another protocol than its module's (memcached's text commands are
    Redis inline commands on Redis ports)."""

    order: int
    transport: str  # "tcp" or "udp"
    match: Callable[[bytes, Ports], str | None]


@dataclass(frozen=True)
class ProtocolSpec:
    """A parser and how it is found.  `names` are the protocol names the parser serves
    (HTTP/2's parser serves "grpc" too: told apart by content-type); `stats` is exported
    under the first name."""

    names: tuple[str, ...]
    new_parser: Callable[[bool | None, str | None], object]  # (client_side, transport)
    stats: Counter
    rules: tuple[InferenceRule, ...] = ()


def on_port(ports: Ports, known: frozenset) -> bool:
    """Either end of the connection uses one of `known` ports."""
    return ports[0] in known or ports[1] in known
