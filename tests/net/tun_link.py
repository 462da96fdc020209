"""A slow point-to-point link for tests: two TUN devices, one in each of two network
namespaces, joined by this process, which copies packets between them and delays (and
optionally drops a share of) the packets going one way (SLOW: "ab" or "ba").

    python tun_link.py NS_A DEV_A NS_B DEV_B DELAY_MS LOSS SEED [SLOW]

This kernel has no netem (docs/network.md), so the delay is a real one: the packet sits
in this process for DELAY_MS.  Prints "ready" once both devices exist; runs until
killed.  The other direction is copied at once.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def open_tun(netns: str, name: str) -> int:
    """Open TUN device `name` inside netns (entered for the open, then left)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        if libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)
        os.close(target)
    os.set_blocking(fd, False)
    return fd


def send(fd: int, pkt: bytes) -> None:
    try:
        os.write(fd, pkt)
    except OSError:  # EIO while the other end is still down: the packet is lost
        pass


def main() -> None:
    ns_a, dev_a, ns_b, dev_b, delay_ms, loss, seed = sys.argv[1:8]
    slow_ab = (sys.argv[8] if len(sys.argv) > 8 else "ab") == "ab"
    delay_ns = int(float(delay_ms) * 1e6)
    drop = float(loss)
    rng = random.Random(int(seed))
    a = open_tun(ns_a, dev_a)
    b = open_tun(ns_b, dev_b)
    try:  # the delay is the thing measured: keep it from waiting behind other work
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        pass
    print("ready", flush=True)
    src, dst = (a, b) if slow_ab else (b, a)
    due: list[tuple[int, int, bytes]] = []  # (deliver at, order, packet) src->dst
    n = 0
    while True:
        now = time.monotonic_ns()
        while due and due[0][0] <= now:
            send(dst, heapq.heappop(due)[2])
        wait = None
        if due:
            left = due[0][0] - now
            if left < 300_000:  # the last 0.3 ms: spin, select() oversleeps
                continue
            wait = (left - 250_000) / 1e9
        ready, _, _ = select.select([a, b], [], [], wait)
        for fd in ready:
            try:
                pkt = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if fd != src:
                send(src, pkt)
            elif drop and rng.random() < drop:
                continue
            else:
                n += 1
                heapq.heappush(due, (time.monotonic_ns() + delay_ns, n, pkt))


if __name__ == "__main__":
    main()
