"""The agent never traces its own server's side of its pushes (issue 15: an agent on
the server's host made a span of every push, and pushed that in turn)."""

from __future__ import annotations

from types import SimpleNamespace

from agent.pipeline import Pipeline, export_ports


def test_export_ports_of_each_address_form():
    assert export_ports("127.0.0.1:4317", None) == {4317}
    assert export_ports("zerotrace.zt.svc:4317", "http://collector:4318/") == {4317, 4318}
    assert export_ports("[::1]:9000") == {9000}
    assert export_ports("no-port", "", None) == set()


def test_events_on_an_export_port_are_dropped_and_counted():
    p = Pipeline()
    p.ignore_ports = frozenset({4317})
    seen = []
    p.assembler.handle = seen.append  # what would become spans
    ev = SimpleNamespace(lport=4317, pid=1, goid=0, tid=1, type=0, ts_exit=1)
    p.process([ev, ev])
    assert seen == []
    assert p.assembler.stats["ignored_own_export_port"] == 2
