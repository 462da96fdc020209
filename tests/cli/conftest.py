"""The `server` fixture: a real `zerotrace server` process on loopback."""

from __future__ import annotations

import pytest
from cli_proc import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`zerotrace server` on a loopback port, its own data directory; yields HOST:PORT."""
    proc, addr = start_server(tmp_path_factory.mktemp("zt-cli-data"))
    yield addr
    proc.stop()
