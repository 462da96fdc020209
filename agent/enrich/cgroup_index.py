"""cgroup id -> cgroup path, for spans whose process exited before it was resolved.

The span still carries the cgroup id the probe saw; while the container lives its
cgroup directory does too, so walking the v2 hierarchy for the directory with that
inode number recovers the path (and the container id in it).  Walks are rate-limited
because a busy node has thousands of cgroups and a dead pid may arrive per span.
"""

from __future__ import annotations

import os
import time

from agent.enrich.cgroup import cgroup2_mount


class CgroupIndex:
    """Lazy inode -> relative path map of the cgroup v2 tree."""

    def __init__(self, root: str | None = None, min_interval: float = 2.0) -> None:
        self._root = root if root is not None else cgroup2_mount()
        self._min_interval = min_interval
        self._paths: dict[int, str] = {}
        self._last_walk = float("-inf")

    def path_of(self, cgroup_id: int) -> str | None:
        """Path (relative to the v2 root, starting with "/") of a cgroup id, or None."""
        if not cgroup_id or not self._root:
            return None
        path = self._paths.get(cgroup_id)
        if path is not None:
            return path
        now = time.monotonic()
        if now - self._last_walk < self._min_interval:
            return None
        self._last_walk = now
        self._paths = self._walk()
        return self._paths.get(cgroup_id)

    def _walk(self) -> dict[int, str]:
        return walk_cgroups(self._root)


def walk_cgroups(root: str | None = None) -> dict[int, str]:
    """cgroup id (directory inode) -> path relative to the v2 root, for every cgroup
    below `root` (None: the v2 mount).  Directories removed while walking are skipped."""
    root = root if root is not None else cgroup2_mount()
    if not root:
        return {}
    paths: dict[int, str] = {}
    stack = [(root, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        sub = f"{rel}/{entry.name}"
                        paths[entry.inode()] = sub
                        stack.append((entry.path, sub))
        except OSError:
            continue  # removed while walking: the next walk sees the new tree
    return paths
