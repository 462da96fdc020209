"""A client and a server that move bytes with every socket syscall the probes hook.

Run as `peer.py tcp-server ADDR PORT`, `peer.py tcp-client ADDR PORT`, and the udp-
equivalents.  Each side prints one JSON line of what it is (pid, ports) and exits when
its script is done.  sendmmsg/recvmmsg and plain accept() go through libc, because
Python's socket module does not expose them."""

from __future__ import annotations

import ctypes as ct
import json
import os
import socket
import sys

libc = ct.CDLL(None, use_errno=True)


class IOVec(ct.Structure):
    _fields_ = [("base", ct.c_void_p), ("len", ct.c_size_t)]


class MsgHdr(ct.Structure):
    _fields_ = [("name", ct.c_void_p), ("namelen", ct.c_uint32), ("iov", ct.POINTER(IOVec)),
                ("iovlen", ct.c_size_t), ("control", ct.c_void_p), ("controllen", ct.c_size_t),
                ("flags", ct.c_int)]


class MMsgHdr(ct.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ct.c_uint)]


def sockaddr_in(addr: str, port: int) -> ct.Array:
    raw = (2).to_bytes(2, "little") + port.to_bytes(2, "big") + socket.inet_aton(addr) + bytes(8)
    return ct.create_string_buffer(raw, 16)


def mmsg(fd: int, payloads: list[bytes] | None, n: int, size: int, send: bool,
         peer: tuple[str, int] | None = None) -> list[bytes]:
    """sendmmsg (payloads given) or recvmmsg (n buffers of size) through libc."""
    msgs = (MMsgHdr * n)()
    keep = []
    for i in range(n):
        n_bytes = len(payloads[i]) if send else size
        buf = ct.create_string_buffer(payloads[i] if send else size, n_bytes)
        iov = IOVec(ct.cast(buf, ct.c_void_p), len(buf))
        keep += [buf, iov]
        msgs[i].hdr.iov = ct.pointer(iov)
        msgs[i].hdr.iovlen = 1
        if peer is not None:
            name = sockaddr_in(*peer)
            keep.append(name)
            msgs[i].hdr.name = ct.cast(name, ct.c_void_p)
            msgs[i].hdr.namelen = 16
    fn = libc.sendmmsg if send else libc.recvmmsg
    args = (fd, msgs, n, 0) if send else (fd, msgs, n, 0x100, None)  # MSG_WAITFORONE
    r = fn(*args)
    if r < 0:
        raise OSError(ct.get_errno(), "mmsg")
    return [bytes(keep[3 * i if peer else 2 * i])[: msgs[i].len] for i in range(r)]


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(s.fileno(), n - len(out))
        if not chunk:
            break
        out += chunk
    return out


TCP_SCRIPT = [  # (client syscall, payload parts, server syscall)
    ("write", [b"write:hello"], "read"),
    ("writev", [b"writev:", b"part2"], "readv"),
    ("sendto", [b"sendto:data"], "recvfrom"),
    ("sendmsg", [b"sendmsg:", b"x"], "recvmsg"),
    ("sendmmsg", [b"mm1:aaaa", b"mm2:bbbb"], "read"),
    ("write", [b"B" * 5000], "read"),
]


def tcp_server(addr: str, port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen()
    print(json.dumps({"pid": os.getpid()}), flush=True)
    fd = libc.accept(srv.fileno(), None, None)  # the plain accept syscall
    c = socket.socket(fileno=fd)
    for _sys, parts, rsys in TCP_SCRIPT:
        total = sum(len(p) for p in parts)
        if rsys == "readv":
            bufs = [bytearray(len(p)) for p in parts]
            os.readv(c.fileno(), bufs)
        elif rsys == "recvfrom":
            c.recvfrom(total)
        elif rsys == "recvmsg":
            c.recvmsg(total)
        else:
            recv_exact(c, total)
        os.write(c.fileno(), b"ack")
    recv_exact(c, 1)  # wait for the client's close
    c.close()
    srv.close()


def tcp_client(addr: str, port: int) -> None:
    s = socket.create_connection((addr, port))
    print(json.dumps({"pid": os.getpid(), "lport": s.getsockname()[1]}), flush=True)
    for sys_name, parts, _rsys in TCP_SCRIPT:
        if sys_name == "write":
            os.write(s.fileno(), parts[0])
        elif sys_name == "writev":
            os.writev(s.fileno(), parts)
        elif sys_name == "sendto":
            s.send(parts[0])  # a connected send() is the sendto syscall
        elif sys_name == "sendmsg":
            s.sendmsg(parts)
        elif sys_name == "sendmmsg":
            mmsg(s.fileno(), parts, len(parts), 0, True)
        recv_exact(s, 3)
    s.close()


def udp_server(addr: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    print(json.dumps({"pid": os.getpid()}), flush=True)
    data, peer = s.recvfrom(100)
    s.sendto(b"re:" + data, peer)
    data, _anc, _fl, peer = s.recvmsg(100)
    s.sendmsg([b"re:", data], [], 0, peer)
    got = mmsg(s.fileno(), None, 2, 100, False)
    while len(got) < 2:  # MSG_WAITFORONE may return the first alone
        got += mmsg(s.fileno(), None, 2 - len(got), 100, False)
    s.close()


def udp_client(addr: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    print(json.dumps({"pid": os.getpid(), "lport": s.getsockname()[1]}), flush=True)
    s.sendto(b"udp:sendto", (addr, port))
    s.recvfrom(100)
    s.sendmsg([b"udp:", b"sendmsg"], [], 0, (addr, port))
    s.recvmsg(100)
    mmsg(s.fileno(), [b"udp:mm1", b"udp:mm2"], 2, 0, True, (addr, port))
    s.close()


if __name__ == "__main__":
    role, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"tcp-server": tcp_server, "tcp-client": tcp_client,
     "udp-server": udp_server, "udp-client": udp_client}[role](addr, port)
