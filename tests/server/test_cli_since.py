"""`--since` and durations are checked by the CLI with one clear line (issue 14, item 6):
absurd values printed a protobuf traceback ("Value out of range") before."""

from __future__ import annotations

import pytest
from cli_capture import run_cli


@pytest.mark.parametrize("cmd", ["services", "traces", "dependencies"])
def test_since_before_1970(capsys, cmd):
    rc, out, err = run_cli(capsys, cmd, "--since", "30000d", "--server", "127.0.0.1:1")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "--since reaches back before 1970" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["services", "--since", "99999999999d"],
                                  ["traces", "--min-duration", "99999999999999999999"],
                                  ["traces", "--since", "soon"]])
def test_absurd_durations_refused_by_argparse(capsys, argv):
    rc, out, err = run_cli(capsys, *argv, "--server", "127.0.0.1:1")
    assert rc == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert "duration" in last and ("too large" in last or "bad duration" in last)
    assert "Traceback" not in err


def test_since_zero_means_all_time(capsys):
    rc, _out, err = run_cli(capsys, "services", "--since", "0", "--server", "127.0.0.1:1",
                            "--timeout", "2")
    assert rc == 1 and "cannot reach" in err  # got as far as calling the server
