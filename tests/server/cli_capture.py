"""Run the `zerotrace` CLI in-process and capture what it prints.

A module of its own, not conftest.py: `from conftest import ...` resolves to whichever
conftest.py pytest put on sys.path first, which broke collecting tests/server together
with tests/stitch.
"""

from __future__ import annotations


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`zerotrace <argv>` in-process; (exit code, stdout, stderr)."""
    from server.cli import main

    capsys.readouterr()
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err
