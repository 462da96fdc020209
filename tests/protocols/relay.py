"""Loopback TCP/UDP relays that record each recv() as a chunk, for golden captures.

Directions are those of the client process: what the client wrote is EGRESS (0), what
it read is INGRESS (1).  Timestamps are nanoseconds since the relay started, so golden
files stay stable across re-captures apart from the real timings.
"""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpRelay:
    """Accepts clients on `port`, forwards each to 127.0.0.1:`upstream`, records chunks."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.t0 = time.time_ns()
        self.lock = threading.Lock()
        self.connections: list[list[tuple[int, int, bytes]]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.stopping = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                chunks: list[tuple[int, int, bytes]] = []
                self.connections.append(chunks)
            for src, dst, d in ((c, u, 0), (u, c, 1)):
                t = threading.Thread(target=self._pump, args=(src, dst, d, chunks), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, d: int, chunks: list) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self.lock:
                chunks.append((d, time.time_ns() - self.t0, data))
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> list[list[tuple[int, int, bytes]]]:
        self.stopping = True
        for t in self.threads:
            t.join(timeout=5)
        self.sock.close()
        return self.connections


class UdpRelay:
    """One UDP flow per client address, forwarded to 127.0.0.1:`upstream`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.t0 = time.time_ns()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.flows: dict[tuple, tuple[socket.socket, list]] = {}
        self.connections: list[list[tuple[int, int, bytes]]] = []
        self.stopping = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.back: list[threading.Thread] = []

    def _run(self) -> None:
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            flow = self.flows.get(addr)
            if flow is None:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.connect(("127.0.0.1", self.upstream))
                u.settimeout(0.2)
                chunks: list = []
                flow = self.flows[addr] = (u, chunks)
                self.connections.append(chunks)
                t = threading.Thread(target=self._back, args=(u, addr, chunks), daemon=True)
                t.start()
                self.back.append(t)
            with self.lock:
                flow[1].append((0, time.time_ns() - self.t0, data))
            flow[0].send(data)

    def _back(self, u: socket.socket, addr: tuple, chunks: list) -> None:
        while not self.stopping:
            try:
                data = u.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                chunks.append((1, time.time_ns() - self.t0, data))
            self.sock.sendto(data, addr)

    def close(self) -> list[list[tuple[int, int, bytes]]]:
        self.stopping = True
        self.thread.join(timeout=2)
        for t in self.back:
            t.join(timeout=2)
        self.sock.close()
        for u, _ in self.flows.values():
            u.close()
        return self.connections
