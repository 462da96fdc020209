"""Real cgroups for tests: directories named the way container runtimes name them,
under a test-owned parent, each holding a real `sleep` process.  Everything made is
undone on exit: processes moved back out and killed, directories removed."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from agent.enrich.cgroup import cgroup2_mount


def _mount_of(fstype_opt: str) -> str | None:
    """Mount point of a v1 hierarchy by its option (e.g. "name=systemd")."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if fields and fields[0] == "cgroup" and fstype_opt in fields[-1].split(","):
                return left.split()[4]
    return None


def _own_path(hierarchy: str) -> str:
    """This process's cgroup path in a hierarchy ("0" for v2, or a v1 option)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            hier, ctrls, path = line.rstrip("\n").split(":", 2)
            if (hierarchy == "0" and hier == "0") or (hierarchy != "0" and hierarchy in ctrls):
                return path
    return "/"


class CgroupLab:
    """Makes cgroups and puts processes in them; `close()` undoes all of it."""

    def __init__(self) -> None:
        self.v2 = cgroup2_mount()
        self.v1_systemd = _mount_of("name=systemd")
        self.parent_name = f"zerotrace-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._dirs: list[Path] = []  # in creation order
        self._procs: list[subprocess.Popen] = []
        self._homes: dict[str, Path] = {}

    def _home(self, mount: str, key: str) -> Path:
        # Processes go back where this test process lives when the lab closes.
        if key not in self._homes:
            self._homes[key] = Path(mount + _own_path(key))
        return self._homes[key]

    def make(self, rel: str, v1: bool = False) -> Path:
        """Create `<parent>/<rel>` (v2, or the v1 name=systemd hierarchy)."""
        mount = self.v1_systemd if v1 else self.v2
        assert mount, "no such cgroup hierarchy on this host"
        self._home(mount, "name=systemd" if v1 else "0")
        path = Path(mount)
        for part in [self.parent_name, *rel.strip("/").split("/")]:
            path = path / part
            if not path.exists():
                path.mkdir()
                self._dirs.append(path)
        if path not in self._dirs:
            self._dirs.append(path)
        return path

    def spawn(self, *cgroups: Path) -> subprocess.Popen:
        """A `sleep` moved into each given cgroup (one per hierarchy)."""
        proc = subprocess.Popen(["sleep", "300"])
        self._procs.append(proc)
        for cg in cgroups:
            (cg / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                for home in self._homes.values():
                    try:
                        (home / "cgroup.procs").write_text(str(proc.pid))
                    except OSError:
                        pass
                proc.kill()
            proc.wait()
        for d in reversed(self._dirs):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
        for mount in {self.v2, self.v1_systemd} - {None}:
            p = Path(mount) / self.parent_name
            if p.exists():
                p.rmdir()
