"""pid -> container: parse `/proc/PID/cgroup` paths into a container id and pod UID.

Covers cgroup v1 (one line per hierarchy) and v2 (`0::/path`), and the path shapes
written by containerd (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`),
Docker (`docker-<id>.scope`, `/docker/<id>`), Podman (`libpod-<id>.scope`), the
kubelet's systemd driver (`kubepods-burstable-pod<uid_with_underscores>.slice`) and
its cgroupfs driver (`/kubepods/burstable/pod<uid>/<id>`).  The innermost match wins,
so nested set-ups (kind, k3d: a node container holding pod cgroups) resolve to the
pod's container, not the node's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# A container id is 64 lower-case hex digits for every runtime we know; matching the
# whole segment (not a substring) keeps systemd unit names and pod slices out.
_ID_SEGMENT = re.compile(
    r"^(?:(?P<prefix>cri-containerd|crio|docker|libpod|containerd)[-:])?"
    r"(?P<id>[0-9a-f]{64})(?:\.scope)?$"
)
_POD_SEGMENT = re.compile(
    r"^(?:kubepods(?:-(?:burstable|besteffort|guaranteed))?-)?pod"
    r"(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
    r"(?:\.slice)?$"
)
_RUNTIMES = {
    "cri-containerd": "containerd",
    "containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
}
# Words that say "a container runtime made this path": such a path without an id we
# can read is an unknown runtime layout, worth counting; host paths are not.
_CONTAINER_HINTS = ("kubepods", "docker", "containerd", "crio", "libpod", "lxc", "garden")


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """What a cgroup path says about the process: its container, pod and unit."""

    container_id: str = ""
    runtime: str = ""  # containerd | cri-o | docker | podman | "" (unknown)
    pod_uid: str = ""  # dashed form, as in the Pod's metadata.uid
    systemd_unit: str = ""  # e.g. "nginx.service" for host processes
    path: str = ""  # the cgroup path the answer came from
    unknown: bool = False  # path looks container-made but matched no known layout


HOST = ContainerRef()


def segment_pod_uid(name: str) -> str:
    """The pod UID (dashed) a cgroup directory name carries, e.g.
    `kubepods-burstable-pod<uid_with_underscores>.slice` or `pod<uid>`; else ""."""
    if "pod" not in name:
        return ""
    m = _POD_SEGMENT.match(name)
    return m.group("uid").replace("_", "-") if m else ""


def segment_container_id(name: str) -> str:
    """The container id a cgroup directory name carries (`cri-containerd-<id>.scope`,
    `crio-<id>.scope`, `<id>` ...); else ""."""
    if len(name) < 64:
        return ""
    m = _ID_SEGMENT.match(name)
    return m.group("id") if m else ""


def parse_path(path: str) -> ContainerRef:
    """Read one cgroup path (v1 or v2) into a ContainerRef."""
    segments = [s for s in path.split("/") if s and s != ".."]
    cid = runtime = pod_uid = unit = ""
    for i, seg in enumerate(segments):
        m = _ID_SEGMENT.match(seg)
        if m:
            cid = m.group("id")
            prefix = m.group("prefix")
            if prefix:
                runtime = _RUNTIMES[prefix]
            elif i > 0 and segments[i - 1] == "docker":
                runtime = "docker"
            else:
                runtime = ""
            continue
        m = _POD_SEGMENT.match(seg)
        if m:
            pod_uid = m.group("uid").replace("_", "-")
            continue
        if seg.endswith(".service"):
            unit = seg
    if cid:
        # A service unit *above* a container (dockerd's containerd.service) is not the
        # process's unit.
        unit = ""
    unknown = not cid and not unit and any(h in path for h in _CONTAINER_HINTS)
    return ContainerRef(cid, runtime, pod_uid, unit, path, unknown)


def parse_proc_cgroup(text: str) -> ContainerRef:
    """Read the content of `/proc/PID/cgroup` into a ContainerRef.

    The v2 line (`0::`) is what `bpf_get_current_cgroup_id()` refers to, so it is
    preferred; v1 lines answer on hosts where containers only appear there.
    """
    v2: ContainerRef | None = None
    v1_best: ContainerRef | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        ref = parse_path(path)
        if hier == "0" and controllers == "":
            v2 = ref
        elif ref.container_id and (v1_best is None or not v1_best.container_id):
            v1_best = ref
        elif v1_best is None and "name=systemd" in controllers:
            v1_best = ref
    if v2 is not None and v2.container_id:
        return v2
    if v1_best is not None and v1_best.container_id:
        return v1_best
    if v2 is not None and (v2.systemd_unit or v2.unknown or v1_best is None):
        return v2
    return v1_best or v2 or HOST


def read_pid_cgroup(pid: int, proc_root: str = "/proc") -> ContainerRef:
    """ContainerRef of a live process; raises OSError when the pid is gone."""
    with open(f"{proc_root}/{pid}/cgroup") as f:
        return parse_proc_cgroup(f.read())


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` or, on hybrid hosts,
    `/sys/fs/cgroup/unified`), or None."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def cgroup_id_of(directory: str) -> int:
    """The cgroup id of a v2 cgroup directory: its kernfs inode number, which is what
    `bpf_get_current_cgroup_id()` returns for tasks inside it."""
    return os.stat(directory).st_ino
