"""A fake /proc tree (pid/cgroup, stat, comm, cmdline) for tests that need a process
"in a pod" without root; real cgroups are in test_enrich_cgroups_real.py."""

from __future__ import annotations

from pathlib import Path


def add_process(
    root: Path,
    pid: int,
    cgroup: str,
    comm: str = "app",
    cmdline: str = "app --serve",
    start: int = 4242,
    environ: dict[str, str] | None = None,
) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    (d / "comm").write_text(comm + "\n")
    env = {"PATH": "/usr/bin", "DB_PASSWORD": "hunter2", **(environ or {})}
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    (d / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")
    rest = " ".join(["0"] * 16)  # fields 4..19 of /proc/PID/stat
    (d / "stat").write_text(f"{pid} ({comm}) S {rest} 0 1 {start} 0\n")


def remove_process(root: Path, pid: int) -> None:
    d = root / str(pid)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
