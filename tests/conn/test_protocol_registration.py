"""Protocols register themselves (agent/protocols/spec.py; issue 12): the package's own
modules are found without a list, inference runs every protocol's rules in their declared
order, and a protocol declared at runtime is inferred and parsed with no other edit."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.protocols import registry
from agent.protocols.spec import InferenceRule, ProtocolSpec


def test_every_protocol_module_is_registered():
    assert set(registry.PROTOCOLS) == {"http", "http2", "grpc", "redis", "dns", "postgresql",
                                       "mysql", "memcached"}
    assert set(registry.STATS) == set(registry.PROTOCOLS) - {"grpc"}
    # gRPC is HTTP/2's parser
    assert type(registry.new_parser("grpc", True)) is type(registry.new_parser("http2", True))


def test_rules_run_in_declared_order_across_protocols():
    orders = [r.order for r in registry._RULES["tcp"]]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    # memcached's text command rule answers "redis" on Redis ports: it runs after
    # Redis's own rules and the answer is the rule's, not its module's
    assert registry.infer(b"get k\r\n", 0, 40000, 6379, "tcp") == "redis"
    assert registry.infer(b"get k\r\n", 0, 40000, 8080, "tcp") == "memcached"


class LineParser:
    """A toy protocol: `ASK x\\n` answered by `SAID x\\n`."""

    def __init__(self, client_side):
        self.client_side = client_side


@pytest.fixture
def toy():
    spec = ProtocolSpec(
        ("toyline",), lambda client_side, _t: LineParser(client_side), Counter(),
        (InferenceRule(15, "tcp", lambda d, _p: "toyline" if d.startswith(b"ASK ") else None),
         # after every built-in rule: only what nothing else claims
         InferenceRule(1000, "tcp", lambda d, _p: "toyline" if d.startswith(b"SAID ") else None)))
    registry.register(spec)
    yield spec
    registry.unregister(spec)


def test_a_protocol_declared_at_runtime(toy):
    assert registry.infer(b"ASK time\n", 0, 1, 2, "tcp") == "toyline"
    assert registry.infer(b"SAID noon\n", 1, 1, 2, "tcp") == "toyline"
    assert registry.infer(b"ASK time\n", 0, 1, 2, "udp") is None
    p = registry.new_parser("toyline", True, "tcp")
    assert isinstance(p, LineParser) and p.client_side is True
    assert registry.STATS["toyline"] is toy.stats
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(toy)


def test_unregister_leaves_the_builtin_rules(toy):
    registry.unregister(toy)
    assert registry.infer(b"ASK time\n", 0, 1, 2, "tcp") is None
    assert "toyline" not in registry.STATS
    assert registry.infer(b"*1\r\n$4\r\nPING\r\n", 0, 8080, 51000, "tcp") == "redis"
    registry.register(toy)  # the fixture's teardown unregisters it again
