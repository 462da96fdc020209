"""Shared test set-up: the `kernel` marker and its skip rule.

Kernel tests load real eBPF probes.  Outside CI they are skipped, with the reason,
where they cannot run (not root, no bcc); in CI (CI=true) they must run, so a missing
capability is a failure there, never a skip."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI") == "true"


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load eBPF probes"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run scripts/setup.sh)"
    if not os.path.isdir("/sys/kernel/tracing/events/syscalls"):
        return "tracefs is not mounted (run scripts/setup.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _kernel_unavailable()
    if reason is None or IN_CI:  # in CI they run, and fail loudly if they cannot
        return
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
