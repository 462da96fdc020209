"""cgroup path -> container id / pod UID / unit, for every runtime layout we know."""

from __future__ import annotations

import pytest

from agent.enrich.cgroup import parse_path, parse_proc_cgroup

CID = "c7761e58969f7edd498186641b2021e8477e1bcd230de4cf3435242da4a40d14"
UID = "5f1c3a2e-8d4b-4f6a-9c2e-7b1d0e3f4a51"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("path", "runtime", "pod_uid"),
    [
        # kubelet systemd driver + containerd / CRI-O / Docker (cri-dockerd)
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope",
            "containerd",
            UID,
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"crio-{CID}.scope",
            "cri-o",
            UID,
        ),
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope", "docker", UID),
        # kubelet cgroupfs driver: the id alone, runtime not said
        (f"/kubepods/burstable/pod{UID}/{CID}", "", UID),
        (f"/kubepods/pod{UID}/{CID}", "", UID),
        # plain Docker and Podman outside Kubernetes
        (f"/docker/{CID}", "docker", ""),
        (f"/system.slice/docker-{CID}.scope", "docker", ""),
        (f"/machine.slice/libpod-{CID}.scope", "podman", ""),
        # seen from inside a private cgroup namespace
        (
            f"/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
            "containerd",
            UID,
        ),
        # kind / k3d: a node container holds the pods; the innermost id wins
        (f"/docker/{'a' * 64}/kubepods/besteffort/pod{UID}/{CID}", "", UID),
    ],
)
def test_container_paths(path: str, runtime: str, pod_uid: str) -> None:
    ref = parse_path(path)
    assert ref.container_id == CID
    assert ref.runtime == runtime
    assert ref.pod_uid == pod_uid
    assert not ref.unknown


def test_pod_slice_without_container_keeps_the_pod_uid() -> None:
    ref = parse_path(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice")
    assert ref.pod_uid == UID and ref.container_id == ""


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx.service"),
        ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"),
        ("/user.slice/user-0.slice/session-3.scope", ""),
        ("/", ""),
    ],
)
def test_host_paths(path: str, unit: str) -> None:
    ref = parse_path(path)
    assert (ref.container_id, ref.systemd_unit, ref.unknown) == ("", unit, False)


@pytest.mark.parametrize(
    "path",
    ["/kubepods/burstable/podXYZ/sandbox-1234", "/lxc.payload.web1", "/garden/abc"],
)
def test_unknown_runtime_paths_are_flagged(path: str) -> None:
    ref = parse_path(path)
    assert ref.unknown and ref.container_id == ""


def test_v2_line_is_preferred_and_v1_used_when_v2_says_nothing() -> None:
    v2 = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    hybrid_v1 = "12:memory:/process_api/x\n9:name=systemd:/system.slice/nginx.service\n"
    assert parse_proc_cgroup(hybrid_v1 + v2).container_id == CID
    v1_only = f"4:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n"
    ref = parse_proc_cgroup(v1_only)
    assert (ref.container_id, ref.runtime) == (CID, "docker")
    assert parse_proc_cgroup(hybrid_v1 + "0::/\n").systemd_unit == "nginx.service"
    assert parse_proc_cgroup("garbage line\n").container_id == ""
