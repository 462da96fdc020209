"""The agent leaves nothing attached: after a normal stop, SIGTERM, or SIGKILL then a
restart, no probe of ours stays loaded.  And `check` tells the truth about this host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kernel
ZT = [sys.executable, "-m", "agent.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def programs_of(pid: int) -> set[int]:
    """Ids of the BPF programs process pid holds (its fds on bpf-prog inodes)."""
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ids
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def loaded_programs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def start_agent(*extra: str) -> subprocess.Popen:
    return subprocess.Popen(ZT + ["agent", "--port", "1", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def tracepoint_programs() -> int:
    """How many programs the socket probes load (several tracepoints share one)."""
    from agent.probes import loader

    src = loader.inline_includes(loader.SOCKET_TRACE_C)
    return len({fn for _tp, fn in loader.tracepoint_attachments(src)})


def wait_attached(p: subprocess.Popen, timeout: float = 90) -> set[int]:
    """The agent's program ids, once its probes are loaded (tracepoints + socket maps)."""
    deadline = time.monotonic() + timeout
    want = tracepoint_programs()
    while time.monotonic() < deadline:
        ids = programs_of(p.pid)
        if len(ids) >= want:  # every tracepoint program is loaded
            time.sleep(0.3)
            return programs_of(p.pid)
        if p.poll() is not None:
            pytest.fail(f"agent exited early: {p.stderr.read()}")
        time.sleep(0.2)
    pytest.fail("agent never attached its probes")


def wait_gone(ids: set[int], timeout: float = 10) -> set[int]:
    """Which of ids are still loaded after timeout (programs unload asynchronously)."""
    deadline = time.monotonic() + timeout
    left = ids & loaded_programs()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = ids & loaded_programs()
    return left


def test_normal_exit_detaches():
    p = start_agent("--duration", "3")
    ids = wait_attached(p)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "lost in kernel: 0" in err
    assert wait_gone(ids) == set()


def test_sigterm_detaches():
    p = start_agent()
    ids = wait_attached(p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert wait_gone(ids) == set()


def test_sigkill_then_restart_leaves_nothing():
    p = start_agent()
    ids = wait_attached(p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    # perf-event attachments die with their fds: nothing to recover at the next start
    assert wait_gone(ids) == set()
    p2 = start_agent("--duration", "3")
    ids2 = wait_attached(p2)
    _, err = p2.communicate(timeout=60)
    assert p2.returncode == 0, err
    assert wait_gone(ids2) == set()


def test_check_reports_this_host():
    r = subprocess.run(ZT + ["check", "-o", "json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rep = {c["name"]: c["ok"] for c in json.loads(r.stdout)["checks"]}
    assert rep["syscall tracepoints"] and rep["BTF"] and rep["tracefs"] and rep["ring buffer"]
    assert rep["kprobes"] == os.path.isdir("/sys/bus/event_source/devices/kprobe")
    if os.environ.get("CI") == "true":  # the CI machine's kernel, per environment.md
        assert (rep["kprobes"], rep["fentry"], rep["uprobes"], rep["TC (clsact)"],
                rep["TC (tcx)"]) == (False, False, True, True, True)


def _in_mount_ns(script: str) -> subprocess.CompletedProcess:
    """Run shell `script` in a private mount namespace: what it unmounts stays there."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_no_tracefs_is_a_clear_error():
    py = sys.executable
    r = _in_mount_ns(f"umount /sys/kernel/tracing && {py} -m agent.cli agent --duration 1")
    assert r.returncode == 1
    assert "tracefs: not mounted" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_no_btf_is_a_clear_error(tmp_path):
    py = sys.executable
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    # The offset cache is keyed by the BTF's hash, so an empty BTF cannot hit it.
    r = _in_mount_ns(f"mount --bind {empty} /sys/kernel/btf/vmlinux && "
                     f"{py} -m agent.cli check --quick")
    assert r.returncode == 1
    assert "BTF" in r.stderr and "Traceback" not in r.stderr


def test_not_root_is_a_clear_error():
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-m", "agent.cli", "agent", "--duration", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == ("zerotrace: the agent cannot run here: root: not root: "
                                "run as root (or sudo)")


def test_a_probe_the_kernel_refuses_is_a_clear_error_and_leaves_nothing(tmp_path,
                                                                         monkeypatch):
    import shutil

    from agent.probes import loader

    bad = tmp_path / "bpf"
    shutil.copytree(loader.BPF_DIR, bad)
    # an unbounded loop: the verifier must refuse it, and so the whole object
    with open(bad / "socket_trace.c", "a") as f:
        f.write("\nTRACEPOINT_PROBE(syscalls, sys_enter_getppid)"
                " { volatile int i = 0; while (1) { i++; } return 0; }\n")
    monkeypatch.setattr(loader, "BPF_DIR", bad)
    monkeypatch.setattr(loader, "SOCKET_TRACE_C", bad / "socket_trace.c")
    before = programs_of(os.getpid())
    with pytest.raises(loader.ProbeError, match="refused the socket probes") as err:
        loader.SocketTracer(loader.ProbeConfig(ports={1}))
    assert programs_of(os.getpid()) - before == set()
    assert "see `zerotrace check`" in str(err.value)
