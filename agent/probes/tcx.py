"""tcx: a TC program on a device's ingress or egress through a BPF link (Linux 6.6+).

The TC hop probes (agent/probes/tc.py) attach this way when the kernel can: no clsact
qdisc, no classifier chain walked per packet (an empty program on the four veth ends
of a bridge path cost 2.7 % of wrk's requests/s with clsact, 0.2 % with tcx, measured
side by side), and a link that dies with its file descriptor: an agent killed with
SIGKILL leaves nothing attached.  Neither pyroute2 nor bcc 0.26 creates tcx links, so
this module makes the bpf(2) calls itself (BPF_LINK_CREATE, BPF_PROG_QUERY; uapi
linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import os

_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_PROG_QUERY = 16
_BPF_LINK_CREATE = 28
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
_CLONE_NEWNET = 0x40000000
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _LinkCreate(ctypes.Structure):
    """union bpf_attr's link_create member, tcx variant (the rest zero)."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64), ("_rest", ctypes.c_uint8 * 80)]


class _Query(ctypes.Structure):
    """union bpf_attr's query member."""

    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("prog_attach_flags", ctypes.c_uint64),
                ("link_ids", ctypes.c_uint64), ("link_attach_flags", ctypes.c_uint64),
                ("revision", ctypes.c_uint64), ("_rest", ctypes.c_uint8 * 56)]


class _InfoByFd(ctypes.Structure):
    """union bpf_attr's info member."""

    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """bpf(2); OSError naming `what` when the kernel refuses."""
    r = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(r)


def _hook(ingress: bool) -> int:
    return BPF_TCX_INGRESS if ingress else BPF_TCX_EGRESS


def attach(prog_fd: int, ifindex: int, ingress: bool, netns: str | None = None) -> int:
    """A tcx link of prog_fd (a SCHED_CLS program) on device ifindex of netns (a name
    under /run/netns or a path; None: this thread's), appended after the programs
    already there; returns the link's fd (closing it detaches).  OSError when the
    kernel has no tcx (EINVAL before 6.6) or refuses."""
    attr = _LinkCreate(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=_hook(ingress))
    return _in_netns(netns, lambda: _bpf(_BPF_LINK_CREATE, attr,
                                         f"tcx link on ifindex {ifindex}"))


def attached(ifindex: int, ingress: bool, netns: str | None = None) -> list[int]:
    """The ids of the programs tcx runs on device ifindex of netns, in order (what
    `zerotrace check` and the tests read; bpftool 7.1 does not show tcx)."""
    ids = (ctypes.c_uint32 * 64)()
    q = _Query(target_ifindex=ifindex, attach_type=_hook(ingress),
               prog_ids=ctypes.addressof(ids), prog_cnt=len(ids))
    _in_netns(netns, lambda: _bpf(_BPF_PROG_QUERY, q, f"tcx query of ifindex {ifindex}"))
    return list(ids[:q.prog_cnt])


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program."""
    info = (ctypes.c_uint8 * 256)()
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(bpf_fd=prog_fd, info_len=len(info),
                                            info=ctypes.addressof(info)), "program info")
    return int.from_bytes(bytes(info[4:8]), "little")  # struct bpf_prog_info: type, id


def _in_netns(netns: str | None, call):  # noqa: ANN001, ANN202 - a thunk, its result
    """call() in network namespace netns: an ifindex is its namespace's.  The calling
    thread enters it for the call (setns moves this thread only) and comes back
    whatever happens."""
    if netns is None:
        return call()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns if netns.startswith("/") else f"/run/netns/{netns}",
                         os.O_RDONLY)
        try:
            _setns(target)
            try:
                return call()
            finally:
                _setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")
