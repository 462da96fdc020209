"""Every pipeline is built by agent/factory.py (issue 13): the `zerotrace agent` command,
the demo and the benchmarks get the same stages wired the same way, and differ only in
the options each declares (tags, export, metrics port, shedding).

The first test compares what each path builds without probes; the second runs the real
agent command (runner.run, probes loaded, real HTTP traffic in two namespaces) and
attaches the demo's and the benchmarks' pipelines to real probes, and compares what runs.
"""

from __future__ import annotations

import gc
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent import factory, runner
from agent.cli import build_parser
from agent.demo import cli as demo_cli
from agent.enrich import Enricher
from bench import bench_fidelity, bench_pipeline, bench_replay

# What must be the same everywhere: the stages, their types and how they are wired.
STAGES = ("pipeline", "assembler", "tracker", "tracker_is_assembler's", "midstream_roles",
          "stitcher", "classifier_is_stitcher's", "handoffs", "handoffs_shared",
          "assembler_emits_to_pipeline", "stitcher_emits_to_pipeline")
ATTACHED = ("skip_hints", "kernel_drops", "follows_go", "gc_threshold")
SERVER = "127.0.0.1:9"  # the demo's exporter is built, never used: nothing listens there


@pytest.fixture(autouse=True)
def _restore_process_state(monkeypatch):
    """The agent's start tunes the collector and takes signals: give both back."""
    monkeypatch.delenv("ZEROTRACE_SHEDDING", raising=False)
    monkeypatch.delenv("ZEROTRACE_SKIP_HINTS", raising=False)
    threshold = gc.get_threshold()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    for s, h in handlers.items():
        signal.signal(s, h)


def _agent_args(*extra: str):
    return build_parser().parse_args(["agent", "--print", "none", "--metrics-port", "0",
                                      *extra])


def _paths() -> dict[str, factory.Options]:
    return {"agent": factory.options_from_args(_agent_args()),
            "demo": demo_cli.pipeline_options(SERVER, {}),
            "bench_fidelity": bench_fidelity.pipeline_options(),
            "bench_pipeline": bench_pipeline.pipeline_options(),
            "bench_replay": bench_replay.pipeline_options()}


def test_agent_demo_and_benches_build_the_same_stages():
    built = {name: factory.build(opts) for name, opts in _paths().items()}
    try:
        comp = {name: factory.composition(p) for name, p in built.items()}
        ref = {k: comp["agent"][k] for k in STAGES}
        for name, c in comp.items():
            assert {k: c[k] for k in STAGES} == ref, name
        # the wiring is real: the span stage feeds this pipeline, the stitcher's hand-off
        # index is the pipeline's, the tracker is the assembler's
        assert ref["assembler_emits_to_pipeline"] and ref["handoffs_shared"]
        assert ref["tracker_is_assembler's"] and ref["classifier_is_stitcher's"]
        assert ref["stitcher"].startswith("agent.stitch._stitcher.")  # the compiled one
        # ... and what differs is what each declares
        assert comp["agent"]["enricher"] == "agent.enrich.enricher.Enricher"
        assert comp["demo"]["enricher"] == "agent.demo.cli.PodTags"
        assert isinstance(built["demo"].enricher.base, Enricher)
        assert comp["bench_fidelity"]["enricher"] is None
        assert [c["exporters"] for c in comp.values()] == [[], ["server"], [], [], []]
        assert comp["demo"]["ignore_ports"] == [9]  # its own server's port, as the agent
    finally:
        for p in built.values():
            _close(p)


def test_spans_go_straight_to_the_stitcher_unless_watched():
    """The per-span path has no Python frame between the assembler and the compiled
    stitcher; watching spans (on_span) or replacing the stitcher re-wires it."""
    from agent.pipeline import Pipeline

    p = factory.build(bench_replay.pipeline_options())
    try:
        assert p.assembler.emit == p.stitcher.add
        assert factory.composition(p)["assembler_emits_to_pipeline"]
        p.on_span = [].append
        assert p.assembler.emit.__func__ is Pipeline._span
        assert factory.composition(p)["assembler_emits_to_pipeline"]
        p.on_span = None
        assert p.assembler.emit == p.stitcher.add

        p.assembler.emit = [].append  # spans going elsewhere: said so
        assert not factory.composition(p)["assembler_emits_to_pipeline"]
        compiled = p.stitcher

        class Other:
            def add(self, ctx) -> None:
                pass

        p.stitcher = Other()
        assert p.assembler.emit == p.stitcher.add
        p.stitcher = compiled
    finally:
        p.close()


def test_pipeline_from_args_is_the_factory():
    from agent.pipeline import Pipeline

    q = Pipeline.from_args(_agent_args("--node", "n1"))
    r = factory.build(factory.options_from_args(_agent_args("--node", "n1")))
    try:
        assert factory.composition(q) == factory.composition(r)
        assert q.assembler.agent_name == "n1"
    finally:
        q.close()
        r.close()


def _close(p) -> None:
    """Close a pipeline without waiting on an export destination nobody listens on."""
    for _name, b in p.exporters:
        b.shutdown(0.5)
    p.exporters = []
    p.close()


@pytest.fixture(scope="module")
def net():
    from tests.helpers.netns import network

    with network(2, subnet=245) as n:
        srv = n.hosts[1]
        n.spawn(srv, sys.executable, "-m", "http.server", "--bind", srv.addr, "8000",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = subprocess.run(n.hosts[0].cmd("curl", "-s", "-o", "/dev/null", "-w",
                                              "%{http_code}", f"http://{srv.addr}:8000/"),
                               capture_output=True, text=True)
            if r.stdout == "200":
                break
            time.sleep(0.2)
        else:
            pytest.fail("http.server did not come up")
        yield n


def _traffic(net, stop: threading.Event) -> None:
    url = f"http://{net.hosts[1].addr}:8000/"
    while not stop.is_set():
        subprocess.run(net.hosts[0].cmd("curl", "-s", "-o", "/dev/null", url),
                       capture_output=True, timeout=10)
        time.sleep(0.1)


@pytest.mark.kernel
def test_agent_command_demo_and_benches_run_the_same_pipeline(net, monkeypatch, capsys):
    from agent.probes.loader import ProbeConfig, SocketTracer

    seen: list[factory.Attached] = []
    real_attach = factory.attach

    def spy(*a, **kw):
        att = real_attach(*a, **kw)
        seen.append(att)
        return att

    monkeypatch.setattr(factory, "attach", spy)
    stop = threading.Event()
    load = threading.Thread(target=_traffic, args=(net, stop), daemon=True)
    load.start()
    try:
        # the real agent command, scoped to the two namespaces
        netns = [x for h in net.hosts for x in ("--netns", h.path)]
        assert runner.run(_agent_args("--duration", "3", *netns)) == 0
    finally:
        stop.set()
        load.join(timeout=15)
    err = capsys.readouterr().err
    assert len(seen) == 1, "the agent command wires its pipeline through factory.attach"
    agent = factory.composition(seen[0].pipeline, seen[0])
    spans = int(re.search(r"zerotrace: (\d+) spans", err).group(1))
    assert spans >= 2, err  # it traced the curl requests
    assert agent["shedding"] and agent["skip_hints"] and agent["gc_threshold"][0] == 20_000

    cfg = ProbeConfig(netns={h.inode for h in net.hosts})
    with SocketTracer(cfg) as tracer:
        others = {}
        for name, opts in list(_paths().items())[1:]:
            p = factory.build(opts)
            att = real_attach(p, tracer, cfg, opts)
            att.start()
            made: list = []
            p.on_span = made.append
            stop.clear()
            load = threading.Thread(target=_traffic, args=(net, stop), daemon=True)
            load.start()
            try:
                deadline = time.monotonic() + 20
                while len(made) < 2 and time.monotonic() < deadline:
                    att.pump(0.05)
                others[name] = factory.composition(p, att)
            finally:
                stop.set()
                load.join(timeout=15)
                att.stop()
                _close(p)
            assert len(made) >= 2, name  # the same loop body turns real events into spans
    for name, c in others.items():
        for k in STAGES + ATTACHED:
            assert c[k] == agent[k], (name, k)
    assert others["demo"]["shedding"] and others["bench_fidelity"]["shedding"]
    assert not others["bench_pipeline"]["shedding"]  # declared: it measures one core


def test_the_config_files_payload_section_reaches_the_enricher(tmp_path):
    """`payload:` in the agent's config file (issue 14) switches capture off where it
    says: the factory hands it to the enricher, whose switch then asks for the probes'
    map (factory.Attached binds it: agent/probes/capture.py)."""
    conf = tmp_path / "agent.yaml"
    conf.write_text("payload:\n  capture: on\n  namespaces:\n    payments: off\n")
    on = factory.options_from_args(_agent_args())
    off = factory.options_from_args(_agent_args("--config", str(conf)))
    try:
        assert not on.enricher.capture.policy.switches_anything
        assert off.enricher.capture.policy.switches_anything
        assert off.enricher.capture.may_switch()
        assert off.enricher.capture.policy.pod("payments", {}) is False
        assert off.enricher.capture.policy.pod("shop", {}) is True
    finally:
        on.enricher.close()
        off.enricher.close()


@pytest.mark.kernel
def test_the_config_files_limits_bound_the_running_agent(tmp_path, monkeypatch):
    """limits: in the agent's file reach its stitcher, its shedder and its ring."""
    for var in ("ZEROTRACE_CONFIG", "ZEROTRACE_CPU_BUDGET", "ZEROTRACE_RING_MB"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "agent.yaml"
    conf.write_text("limits: {cpu_budget: 0.2, ring_mb: 2, backlog_spans: 4096, "
                    "emitted_spans: 3000}\n")
    seen: list[tuple[factory.Attached, object]] = []
    real_attach = factory.attach

    def spy(pipeline, tracer, cfg, opts):
        att = real_attach(pipeline, tracer, cfg, opts)
        seen.append((att, cfg))
        return att

    monkeypatch.setattr(factory, "attach", spy)
    assert runner.run(_agent_args("--duration", "1", "--port", "1",
                                  "--config", str(conf))) == 0
    (att, cfg), = seen
    assert att.pipeline.stitcher.max_emitted == 3000
    assert (att.shedder.cpu_budget, att.shedder.max_backlog) == (0.2, 4096)
    from agent.probes.loader import ring_pages_from_env

    assert cfg.ring_pages == ring_pages_from_env(2) != ring_pages_from_env(runner.AGENT_RING_MB)
