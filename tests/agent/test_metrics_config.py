"""RED metrics stay bounded; the config file refuses what it does not know."""

from __future__ import annotations

import pytest

from agent import config
from agent.metrics import AgentMetrics, normalise_operation
from proto.span import Span


def test_id_like_path_segments_fold():
    assert normalise_operation("GET /order/n3fa9c01be/items/42") == "GET /order/{id}/items/{id}"
    assert normalise_operation("GET /health") == "GET /health"
    assert normalise_operation("SELECT orders") == "SELECT orders"


def test_operations_per_service_are_bounded():
    m = AgentMetrics(max_operations=3)
    for i in range(10):
        m.record(Span(kind="server", service="api", protocol="http", operation=f"GET /p{i}x",
                      start_ns=0, end_ns=10**6))
    m.record(Span(kind="client", service="api", protocol="http", operation="GET /ignored"))
    ops = {s.labels["operation"] for f in m.registry.collect() for s in f.samples
           if s.name == "zerotrace_requests_total"}
    assert ops == {"GET /p0x", "GET /p1x", "GET /p2x", "other"}


def test_stage_counters_are_exported():
    m = AgentMetrics()
    m.add_source("kernel", lambda: {"ringbuf_full": 3})
    m.add_source("broken", lambda: 1 / 0)  # a failing stage must not break the scrape
    samples = [s for f in m.registry.collect() for s in f.samples
               if s.name == "zerotrace_stage_events_total"]
    assert [(s.labels["stage"], s.labels["reason"], s.value) for s in samples] == [
        ("kernel", "ringbuf_full", 3)]


def test_config_file(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("server: 127.0.0.1:4317\nmetrics_port: 9464\nenrich: {}\n")
    assert config.load(str(good))["metrics_port"] == 9464
    bad = tmp_path / "b.yaml"
    bad.write_text("sever: typo\n")
    with pytest.raises(config.ConfigError, match="unknown settings sever"):
        config.load(str(bad))
    with pytest.raises(config.ConfigError):
        config.load(str(tmp_path / "missing.yaml"))


def test_interfaces_come_from_the_config_file_unless_the_flag_says(tmp_path, monkeypatch):
    from agent import cli, runner

    monkeypatch.delenv("ZEROTRACE_CONFIG", raising=False)
    conf = tmp_path / "agent.yaml"
    conf.write_text("interfaces: ^veth\n")
    seen = []
    monkeypatch.setattr(runner, "run", lambda args: seen.append(args.interfaces) or 0)
    parser = cli.build_parser()
    for argv in (["agent", "--config", str(conf)],
                 ["agent", "--config", str(conf), "--interfaces", "^eth0$"],
                 ["agent"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    assert seen == ["^veth", "^eth0$", None]


def test_limits_are_checked_when_the_file_loads(tmp_path):
    f = tmp_path / "limits.yaml"
    f.write_text("limits: {cpu_budget: 0.25, ring_mb: 4, backlog_spans: 8192, "
                 "emitted_spans: 5000}\n")
    assert config.load(str(f))["limits"] == {
        "cpu_budget": 0.25, "ring_mb": 4, "backlog_spans": 8192, "emitted_spans": 5000}
    for text, why in (("limits: {ring_mb: 0}", "limits.ring_mb must be an integer >= 1"),
                      ("limits: {emitted_spans: 2.5}", "limits.emitted_spans must be an integer"),
                      ("limits: {cpu_budget: -1}", "limits.cpu_budget must be a number >= 0"),
                      ("limits: {cpu_budget: yes}", "limits.cpu_budget must be a number"),
                      ("limits: {emited_spans: 10}", "unknown limits emited_spans"),
                      ("limits: 10", "limits must be a mapping")):
        f.write_text(text + "\n")
        with pytest.raises(config.ConfigError, match=why):
            config.load(str(f))


def test_limits_come_from_the_file_unless_the_environment_says(tmp_path, monkeypatch):
    """The file's limits go into the options the agent command builds its pipeline from
    (tests/agent/test_pipeline_factory.py checks they reach a running agent); the
    environment variables that set the same things win over the file."""
    import argparse

    from agent import factory, runner

    monkeypatch.delenv("ZEROTRACE_CONFIG", raising=False)
    monkeypatch.delenv("ZEROTRACE_CPU_BUDGET", raising=False)
    f = tmp_path / "agent.yaml"
    f.write_text("limits: {cpu_budget: 0.2, ring_mb: 2, backlog_spans: 4096, "
                 "emitted_spans: 3000}\n")
    args = argparse.Namespace(config=str(f), metrics_port=0)
    opts = factory.options_from_args(args)
    assert (opts.cpu_budget, opts.max_backlog, opts.max_emitted) == (0.2, 4096, 3000)
    assert factory.build(opts).stitcher.max_emitted == 3000
    assert factory.build(factory.Options()).stitcher.max_emitted == 10_000
    assert runner._ring_mb(args) == 2
    assert runner._ring_mb(argparse.Namespace(config=None)) == runner.AGENT_RING_MB
    monkeypatch.setenv("ZEROTRACE_CPU_BUDGET", "0.4")
    assert factory.options_from_args(args).cpu_budget is None  # the shedder reads 0.4
