"""TC hop probes (bpf/tc.c): compile, attach to clsact ingress+egress of the interfaces
whose names match a regex, in the host and in given network namespaces, and read the
hop records (one per sighting of a socket write's first byte at a hook), IPv4 and IPv6.

A separate BPF object from the socket tracer (agent/probes/loader.py): it is loaded only
when `--interfaces` asks for it, and its maps are its own.  Attached through tcx links
where the kernel has them (6.6+, agent/probes/tcx.py: cheaper per packet, gone with
the agent's process), else as clsact filters with pyroute2, the project's netlink
dependency; clsact qdiscs it creates are removed again on close, ones it found are
left with only its own filters removed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import select
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from agent.clock import wall_offset
from agent.net._hops import RECORD_SIZE, HopRing
from agent.probes import btf, tcx
from agent.probes.csource import inline_includes

log = logging.getLogger(__name__)

TC_C = Path(__file__).resolve().parents[2] / "bpf" / "tc.c"
RING_PAGES = 256  # BPF_RINGBUF_OUTPUT(hops, 256) in bpf/tc.c
MAX_SAMPLE_SHIFT = 10  # at most 1 message in 1 024 is marked
PARENT_INGRESS = "ffff:fff2"
PARENT_EGRESS = "ffff:fff3"
FILTER_PRIO = 49152 - 7  # ours, below tc's default priorities, easy to tell apart
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772

# struct zt_hop of bpf/tc.c (88 bytes).
HOP = struct.Struct("<QI4xQIII16s16sIHHHHHBBHBB")
assert HOP.size == 88 == RECORD_SIZE  # the compiled reader's (agent/net/_hops.pyx)


class TcError(RuntimeError):
    """The TC probes could not be loaded or attached; the message says why."""


@dataclass(frozen=True, slots=True)
class HopRecord:
    """One sighting of a message start at one hook (decoded struct zt_hop)."""

    ts: int
    netns: int  # inode of the interface's netns
    start_ts: int
    seq: int
    ifindex: int
    writer_netns: int
    saddr: str
    daddr: str
    length: int
    sport: int
    dport: int
    writer_lport: int
    writer_rport: int
    payload: int
    direction: int  # 0 egress, 1 ingress
    tcp_flags: int
    window: int
    role: int = 0  # 0: writer_* is the socket that wrote the seq; 1: the one reading it
    family: int = 4  # the packet's IP version

    @classmethod
    def decode(cls, raw: bytes) -> HopRecord:
        if len(raw) < HOP.size:
            raise ValueError(f"hop record of {len(raw)} bytes, want {HOP.size}")
        (ts, netns, start_ts, seq, ifindex, wns, sa, da, length, sport, dport, wl, wr,
         payload, direction, flags, window, role, family) = HOP.unpack_from(raw, 0)
        if family == 6:
            s, d = socket.inet_ntop(socket.AF_INET6, sa), socket.inet_ntop(socket.AF_INET6, da)
        else:
            s, d = socket.inet_ntoa(sa[:4]), socket.inet_ntoa(da[:4])
        return cls(ts, netns, start_ts, seq, ifindex, wns, s, d, length, sport, dport, wl,
                   wr, payload, direction, flags, window, role, family)

    @property
    def packet(self) -> str:
        """`saddr:sport>daddr:dport` (IPv6 addresses in brackets)."""
        if self.family == 6:
            return f"[{self.saddr}]:{self.sport}>[{self.daddr}]:{self.dport}"
        return f"{self.saddr}:{self.sport}>{self.daddr}:{self.dport}"


@dataclass(frozen=True, slots=True)
class Hook:
    """An interface the probes are attached to, and how to name it."""

    netns: str  # "host" or the namespace name
    netns_inode: int
    ifindex: int
    ifname: str
    l3: bool  # no MAC header (tun)
    # IFLA_LINK_NETNSID: the netns of the device's peer (a veth's other end), as this
    # netns numbers it; None when the peer is in the same netns or there is none
    peer_nsid: int | None = None


@dataclass
class _Attached:
    hook: Hook
    made_clsact: bool = False
    links: list[int] = field(default_factory=list)  # tcx link fds (egress, ingress)


def _close_all(fds: list[int]) -> None:
    """Close tcx link fds (the links go with them) and forget them."""
    for fd in fds:
        os.close(fd)
    fds.clear()


@dataclass
class TcConfig:
    interfaces: str  # regex on interface names, matched with re.search
    netns: list[str] = field(default_factory=list)  # names under /run/netns
    host: bool = True
    # where writes are marked: "auto" (tcp_sendmsg_locked when the kernel has it),
    # "raw" (that, or fail) or "syscalls" (write-family syscall entry)
    marks: str = "auto"
    # sockets of which netns are marked (names under /run/netns, "host" for the host's);
    # None: every netns of the kernel, the agent's whole node
    mark_netns: list[str] | None = None
    # mark the next incoming seq of sockets that have read all they received (kernels
    # with sock:sock_recv_length): the receiving end alone then matches the packets of
    # a message written on another node
    read_marks: bool = True
    # messages marked (and so recorded at every hook): 1 in 2**sample_shift, chosen by
    # a hash of the message's seq (bpf/tc.c zt_sampled: every end, hook and node agrees);
    # None: adaptive, the smallest shift that keeps the hop records under
    # max_records_per_s (TcTracer.adapt, called about once a second by the drainer)
    sample_shift: int | None = None
    max_records_per_s: int = 50_000
    # how the programs attach: "auto" (tcx links where the kernel has them, else clsact
    # filters), "tcx" (or fail) or "clsact"
    attach: str = "auto"


def netns_inode(name: str | None) -> int:
    """Inode of namespace `name` (under /run/netns, or a path; None: the agent's own)."""
    if name is None:
        return os.stat("/proc/self/ns/net").st_ino
    return os.stat(name if name.startswith("/") else f"/run/netns/{name}").st_ino


def has_sendmsg_tracepoint() -> bool:
    """The kernel has tcp:tcp_sendmsg_locked (6.10+): writes are marked there, where
    only TCP sends pay, instead of at every write-family syscall's entry.  Asked of the
    BTF (its btf_trace_ typedef), which needs no tracefs mount."""
    with open(btf.VMLINUX_BTF, "rb") as f:
        return b"\0btf_trace_tcp_sendmsg_locked\0" in f.read()


def has_recv_tracepoint() -> bool:
    """The kernel has sock:sock_recv_length (6.2+), where reads are marked."""
    with open(btf.VMLINUX_BTF, "rb") as f:
        return b"\0btf_trace_sock_recv_length\0" in f.read()


def _skb_offsets() -> list[str]:
    """-D flags for the members only the TC probes walk (sk_buff.dev, net_device's
    netns, tcp_sock.rcv_nxt), read from this kernel's BTF like every other offset."""
    with open(btf.VMLINUX_BTF, "rb") as f:
        b = btf.BTF(f.read())
    return [f"-DOFF_SKB_DEV={b.offset('sk_buff', 'dev')}",
            f"-DOFF_DEV_ND_NET={b.offset('net_device', 'nd_net.net')}",
            f"-DOFF_TCP_RCV_NXT={b.offset('tcp_sock', 'rcv_nxt')}"]


class TcTracer:
    """The loaded TC probes; a context manager so filters and qdiscs always go."""

    def __init__(self, config: TcConfig) -> None:
        self.config = config
        self._pattern = re.compile(config.interfaces)
        self._bpf = None
        self._ring: HopRing | None = None
        self._epoll: select.epoll | None = None
        self._fns: dict[tuple[bool, int], int] = {}  # (l3, direction) -> prog fd
        self._attached: list[_Attached] = []
        # tcx links in use: None until the first attach decides (config.attach "auto")
        self._tcx: bool | None = {"tcx": True, "clsact": False}.get(config.attach)
        self.hooks: dict[tuple[int, int], Hook] = {}  # (netns inode, ifindex) -> hook
        self.wall_offset = wall_offset()  # add to a record's ts: Unix ns
        self.sample_shift = 0
        # tc_sample[1], the packets' filter; nothing is marked yet, so it takes the
        # first shift at once
        self._filter_shift = MAX_SAMPLE_SHIFT
        self._filter_at: float | None = None  # when it takes a raised shift
        self.drained = 0  # records drained since start (TcTracer.drain_into)
        self._adapted: tuple[float, int] | None = None  # (when, drained + lost) then
        self._load()
        try:
            self.refresh()
        except Exception:
            self.close()
            raise

    def _load(self) -> None:
        try:
            from bcc import BPF
        except ImportError as e:
            raise TcError("python module bcc is missing (Debian python3-bpfcc)") from e
        cflags = btf.cflags(btf.kernel_offsets()) + _skb_offsets() + [
            f"-I{TC_C.parent}", "-Wno-macro-redefined", "-Wno-pass-failed"]
        self.raw_marks = (self.config.marks == "raw" or
                          (self.config.marks == "auto" and has_sendmsg_tracepoint()))
        if self.raw_marks:
            cflags.append("-DZT_TC_MARK_RAW")
        self.read_marks = self.config.read_marks and has_recv_tracepoint()
        if self.read_marks:
            cflags.append("-DZT_TC_READ_MARKS")
        try:
            self._bpf = BPF(text=inline_includes(TC_C).encode(), cflags=cflags)
            self._bpf[b"tc_self"][ctypes.c_int(0)] = ctypes.c_uint32(os.getpid())
            self._mark_netns()
            self.set_sampling(self.config.sample_shift or 0)
            for l3 in (False, True):
                for direction, d in ((0, "egress"), (1, "ingress")):
                    fn = self._bpf.load_func(
                        f"zt_tc_{'l3' if l3 else 'eth'}_{d}".encode(), BPF.SCHED_CLS)
                    self._fns[(l3, direction)] = fn.fd
            hops = self._bpf[b"hops"]
            self._ring = HopRing(hops.map_fd, RING_PAGES * os.sysconf("SC_PAGESIZE"))
            self._epoll = select.epoll()
            self._epoll.register(hops.map_fd, select.EPOLLIN)
        except Exception as e:  # bcc raises bare Exception
            self.close()
            raise TcError(f"the kernel or bcc refused the TC probes: {e}") from e

    FILTER_LAG = 1.0  # seconds a raised sampling waits before the packets' filter

    def set_sampling(self, shift: int, now: float | None = None) -> None:
        """Mark 1 in 2**shift messages from now on (0: every one).  The packets' filter
        (tc_sample[1]: unsampled seqs skip the slot table) follows a lower shift at once
        and a higher one FILTER_LAG later: messages marked at the old rate are still on
        their way through the hooks."""
        import time

        now = time.monotonic() if now is None else now
        shift = max(0, min(int(shift), MAX_SAMPLE_SHIFT))
        table = self._bpf[b"tc_sample"]
        if shift <= self._filter_shift:
            table[ctypes.c_int(1)] = ctypes.c_uint32(shift)
            self._filter_shift, self._filter_at = shift, None
        else:
            self._filter_at = now + self.FILTER_LAG
        table[ctypes.c_int(0)] = ctypes.c_uint32(shift)
        self.sample_shift = shift

    def _settle_filter(self, now: float) -> None:
        """The packets' filter takes a raised shift once FILTER_LAG has passed."""
        if self._filter_at is not None and now >= self._filter_at:
            self._bpf[b"tc_sample"][ctypes.c_int(1)] = ctypes.c_uint32(self.sample_shift)
            self._filter_shift, self._filter_at = self.sample_shift, None

    def adapt(self, now: float | None = None) -> int:
        """Adaptive sampling (config.sample_shift None), called about once a second by
        whoever drains: from the records made since the last call (drained, or lost to
        a full ring) at the current sampling, the rate of every message's records;
        the sampling becomes the smallest 1 in 2**k that keeps it under
        config.max_records_per_s.  It is raised at once, and lowered one step at a
        time and only when half the budget would still hold (no flapping at the
        edge).  Returns the shift in force."""
        import time

        now = time.monotonic() if now is None else now
        self._settle_filter(now)
        made = self.drained + self.lost()
        last, self._adapted = self._adapted, (now, made)
        if self.config.sample_shift is not None or last is None or now <= last[0]:
            return self.sample_shift
        full = (made - last[1]) / (now - last[0]) * (1 << self.sample_shift)
        budget = self.config.max_records_per_s
        want = 0
        while want < MAX_SAMPLE_SHIFT and full / (1 << want) > budget:
            want += 1
        if want < self.sample_shift:
            lower = self.sample_shift - 1
            want = lower if full / (1 << lower) <= budget / 2 else self.sample_shift
        if want != self.sample_shift:
            log.info("TC hop sampling 1 in %d (every message's records: %.0f/s, budget %d/s)",
                     1 << want, full, budget)
            self.set_sampling(want, now)
        return self.sample_shift

    def _mark_netns(self) -> None:
        names = self.config.mark_netns
        if names is None:
            self._bpf[b"mark_all"][ctypes.c_int(0)] = ctypes.c_uint32(1)
            return
        table = self._bpf[b"mark_netns"]
        for name in names:
            inode = netns_inode(None if name == "host" else name)
            table[ctypes.c_uint32(inode)] = ctypes.c_uint8(1)

    def _namespaces(self) -> list[str | None]:
        return ([None] if self.config.host else []) + list(self.config.netns)

    def refresh(self) -> int:
        """Attach to matching interfaces not yet attached (ones that appeared since);
        returns how many were added."""
        from pyroute2 import IPRoute

        known = {(a.hook.netns_inode, a.hook.ifindex) for a in self._attached}
        added = 0
        for ns in self._namespaces():
            inode = netns_inode(ns)
            with (IPRoute() if ns is None else IPRoute(netns=ns)) as ipr:
                links = ipr.get_links()
                # devices gone since (a pod's veth): forgotten, so that a later device
                # with the same key is attached and named afresh (agent/net/pods.py)
                present = {(inode, link["index"]) for link in links}
                gone = {k for k in known if k[0] == inode and k not in present}
                if gone:
                    kept = []
                    for a in self._attached:
                        if (a.hook.netns_inode, a.hook.ifindex) in gone:
                            _close_all(a.links)  # the kernel detached them with the device
                        else:
                            kept.append(a)
                    self._attached = kept
                    for k in gone:
                        self.hooks.pop(k, None)
                    known -= gone
                for link in links:
                    name = link.get_attr("IFLA_IFNAME")
                    idx = link["index"]
                    if (link["ifi_type"] == ARPHRD_LOOPBACK or (inode, idx) in known
                            or not self._pattern.search(name)):
                        continue
                    hook = Hook(ns or "host", inode, idx, name,
                                l3=link["ifi_type"] != ARPHRD_ETHER,
                                peer_nsid=link.get_attr("IFLA_LINK_NETNSID"))
                    self._attach(ipr, hook)
                    added += 1
        return added

    @property
    def attach_mode(self) -> str:
        """"tcx" or "clsact": how the programs are attached ("" before any attach)."""
        return {True: "tcx", False: "clsact"}.get(self._tcx, "")

    def _attach(self, ipr, hook: Hook) -> None:
        links = self._tcx_links(hook) if self._tcx is not False else None
        att = _Attached(hook, links=links or [])
        if links is None:
            att.made_clsact = self._clsact(ipr, hook)
        # registered before the filters go on: a failure among them still removes the
        # qdisc made
        self._attached.append(att)
        self.hooks[(hook.netns_inode, hook.ifindex)] = hook
        if links is None:
            for direction, parent in ((0, PARENT_EGRESS), (1, PARENT_INGRESS)):
                ipr.tc("add-filter", "bpf", hook.ifindex, ":1",
                       fd=self._fns[(hook.l3, direction)], name=f"zt_tc_{direction}",
                       parent=parent, prio=FILTER_PRIO, classid=1, direct_action=True)
        log.info("TC hop probes on %s/%s (ifindex %d, %s)", hook.netns, hook.ifname,
                 hook.ifindex, self.attach_mode)

    @staticmethod
    def _clsact(ipr, hook: Hook) -> bool:
        """A clsact qdisc on the hook's device; True when made here (not found there)."""
        try:
            ipr.tc("add", "clsact", hook.ifindex)
            return True
        except Exception as e:  # pyroute2 NetlinkError: EEXIST means one is there
            if getattr(e, "code", None) != 17:
                raise TcError(f"clsact on {hook.netns}/{hook.ifname}: {e}") from e
            return False

    def _tcx_links(self, hook: Hook) -> list[int] | None:
        """The tcx links (egress, ingress) of the hook; None when the kernel has none
        (attach="auto": clsact filters then, for this hook and every later one)."""
        links: list[int] = []
        try:
            for direction in (0, 1):
                links.append(tcx.attach(self._fns[(hook.l3, direction)], hook.ifindex,
                                        ingress=direction == 1,
                                        netns=None if hook.netns == "host" else hook.netns))
        except OSError as e:
            _close_all(links)
            if self._tcx:  # asked for, or it worked on an earlier hook: not the kernel
                raise TcError(f"tcx on {hook.netns}/{hook.ifname}: {e}") from e
            log.info("TC hop probes: no tcx links on this kernel (%s): clsact filters", e)
            self._tcx = False
            return None
        self._tcx = True
        return links

    def _detach_all(self) -> None:
        from pyroute2 import IPRoute

        by_ns: dict[str, list[_Attached]] = {}
        for a in self._attached:
            if a.links:  # a tcx link goes with its last fd
                _close_all(a.links)
                continue
            by_ns.setdefault(a.hook.netns, []).append(a)
        for ns, atts in by_ns.items():
            try:
                ipr = IPRoute() if ns == "host" else IPRoute(netns=ns)
            except Exception as e:  # the namespace went away: its devices with it
                log.debug("netns %s gone: %s", ns, e)
                continue
            with ipr:
                for a in atts:
                    try:
                        if a.made_clsact:  # ours: goes with every filter on it
                            ipr.tc("del", "clsact", a.hook.ifindex)
                        else:
                            for parent in (PARENT_EGRESS, PARENT_INGRESS):
                                ipr.tc("del-filter", "bpf", a.hook.ifindex, ":1",
                                       parent=parent, prio=FILTER_PRIO)
                    except Exception as e:  # device deleted meanwhile
                        log.debug("detach %s/%s: %s", ns, a.hook.ifname, e)
        self._attached.clear()

    MARK_TRACEPOINTS = (b"sys_enter_write", b"sys_enter_writev", b"sys_enter_sendto",
                        b"sys_enter_sendmsg")

    READ_MARK_TRACEPOINTS = (b"sock_recv_length", b"inet_sock_set_state")

    def set_marking(self, on: bool, writes: bool = True, reads: bool = True) -> None:
        """Attach or detach the marking tracepoints (benchmarks' baselines): the write
        marks, the read marks, or both (attached at load, so detach before attach)."""
        if self.read_marks and reads:
            for tp in self.READ_MARK_TRACEPOINTS:
                if on:
                    self._bpf.attach_raw_tracepoint(tp=tp, fn_name=b"raw_tracepoint__" + tp)
                else:
                    self._bpf.detach_raw_tracepoint(tp=tp)
        if not writes:
            return
        if self.raw_marks:
            if on:
                self._bpf.attach_raw_tracepoint(tp=b"tcp_sendmsg_locked",
                                                fn_name=b"raw_tracepoint__tcp_sendmsg_locked")
            else:
                self._bpf.detach_raw_tracepoint(tp=b"tcp_sendmsg_locked")
            return
        for ev in self.MARK_TRACEPOINTS:
            tp = b"syscalls:" + ev
            if on:
                self._bpf.attach_tracepoint(tp=tp, fn_name=b"tracepoint__syscalls__" + ev)
            else:
                self._bpf.detach_tracepoint(tp)

    def detach_filters(self) -> None:
        """Remove every filter (and clsact qdisc made); refresh() puts them back."""
        self._detach_all()

    def wait(self, timeout_s: float = 0.05) -> bool:
        """True when hop records wait; else sleeps up to timeout_s first (the records
        wake no one: bpf/tc.c writes them with BPF_RB_NO_WAKEUP)."""
        if self._ring.pending():
            return True
        self._epoll.poll(timeout_s)
        return self._ring.pending() > 0

    def drain_into(self, index) -> int:
        """Index the records waiting (agent/net/_hops.HopIndex), compiled, no Python
        object per record; returns how many."""
        n = self._ring.drain_into(index)
        self.drained += n
        return n

    def poll(self, timeout_s: float = 0.05) -> list[HopRecord]:
        """Hop records waiting, decoded (waits up to timeout_s when none are)."""
        return [HopRecord.decode(r) for r in self.poll_raw(timeout_s)]

    def poll_raw(self, timeout_s: float = 0.05) -> list[bytes]:
        """Hop records waiting, as bytes (tools and tests; the agent uses drain_into)."""
        self.wait(timeout_s)
        return self._ring.drain_raw()

    def lost(self) -> int:
        """Hop records the kernel could not put in the full ring, since start."""
        if self._bpf is None:
            return 0
        return sum(self._bpf[b"tc_lost"][ctypes.c_int(0)])

    def close(self) -> None:
        """Detach every filter (and clsact qdisc we made) and free the maps; idempotent."""
        self._detach_all()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> TcTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
