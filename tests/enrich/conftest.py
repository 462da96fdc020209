"""Shared fixtures: ids tying the recorded API responses to the cgroups tests make,
root gating for real-cgroup tests, a replay API server, an Enricher factory."""

from __future__ import annotations

import os

import pytest

from agent.enrich import EnrichConfig, Enricher

from .cgroups import CgroupLab
from .kubereplay import ReplayApi

# These appear in tests/enrich/fixtures/*.json (containerID / metadata.uid).
C_CHECKOUT = "c7761e58969f7edd498186641b2021e8477e1bcd230de4cf3435242da4a40d14"
C_ENVOY = "84532b306f259587c364bd7301e0813963d5b84fd27c9338f0862dab8f0499d7"
C_DB = "7bdc25d1694ef984782a16f6f1710c1c6bc83ba7a131b515baf532bea021d011"
C_EXPORTER = "29b220d49cd6a1ed8396172f46fce4211ca0fa0d9926dee6710a289b6bd7a08e"
C_REPORT = "845e91831319e89c4d656bdb80c278ac09a7230d61e5dfd2e1b1fbb436ac8917"
C_CART = "1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980"
U_CHECKOUT = "5f1c3a2e-8d4b-4f6a-9c2e-7b1d0e3f4a51"
U_DB = "0b7e9d14-2c3a-4e8f-b6d1-93a5c8e2f017"
U_CART = "e1d2c3b4-a596-4877-8695-a4b3c2d1e0f9"


def systemd_pod_slice(qos: str, uid: str) -> str:
    """The kubelet's systemd-driver slice path for a pod (underscored uid)."""
    u = uid.replace("-", "_")
    return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice"


def require_root() -> None:
    """Real cgroups need root: skip with the reason on a developer machine, but
    never in CI, where a skipped kernel test would hide a regression."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("kernel test needs root, and CI=true never skips it")
    pytest.skip("needs root to create cgroups and move processes into them (not in CI)")


@pytest.fixture
def lab():
    require_root()
    lab = CgroupLab()
    if not lab.v2:
        pytest.fail("no cgroup v2 hierarchy mounted")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def replay():
    api = ReplayApi().start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def make_enricher():
    made: list[Enricher] = []

    def make(api_url: str | None = None, pods=None, **overrides) -> Enricher:
        settings = dict(
            node_name="node-a" if api_url else "",
            api_host=api_url,
            host_name="test-host",
            backoff_initial=0.02,
            backoff_max=0.1,
            request_timeout=1.0,
            sweep_interval=0.2,
        )
        settings.update(overrides)
        e = Enricher(EnrichConfig(**settings), pods=pods)
        made.append(e)
        return e

    try:
        yield make
    finally:
        for e in made:
            e.close()
