"""TlsStream.rewrite on hand-made ring records: marks consumed, sk|1 opened and closed,
stray ciphertext dropped, an address reused by a clear-text connection left alone."""

from __future__ import annotations

import struct

from agent.probes import abi, tls

SK = 0xFFFF888812345600
OTHER = 0xFFFF888800000800


def rec(sock_id: int, typ: int = abi.EV_DATA, syscall: int = abi.SYS_WRITE,
        role: int = 0, flags: int = 0) -> bytes:
    r = bytearray(abi.EVENT_SIZE + 8)
    struct.pack_into("<Q", r, abi.ZtEvent.sock_id.offset, sock_id)
    r[abi.ZtEvent.type.offset] = typ
    r[abi.ZtEvent.syscall.offset] = syscall
    r[abi.ZtEvent.role.offset] = role
    r[abi.ZtEvent.flags.offset] = flags
    return bytes(r)


def sock_of(r: bytes) -> int:
    return struct.unpack_from("<Q", r, abi.ZtEvent.sock_id.offset)[0]


def test_mark_open_drop_close_and_reuse():
    ts = tls.TlsStream()
    connect = rec(SK, abi.EV_CONN, abi.SYS_CONNECT, abi.ROLE_CLIENT)
    mark = rec(SK, abi.EV_CONN, tls.SYS_TLS_MARK, abi.ROLE_CLIENT)
    plain = rec(SK | 1, flags=tls.F_TLS | abi.F_HAS_SEQ)
    cipher = rec(SK)
    other = rec(OTHER)
    out = ts.rewrite([connect, mark, cipher, plain, other], marks=1)
    # the mark became an open of sk|1 as a client, without seq (bases learnt later)
    assert [sock_of(r) for r in out] == [SK, SK | 1, SK | 1, OTHER]
    opened = out[1]
    assert opened[abi.ZtEvent.syscall.offset] == abi.SYS_CONNECT
    assert opened[abi.ZtEvent.flags.offset] == 0
    assert ts.stats["tls_ciphertext_events_dropped"] == 1
    # same mark count: the fast path; nothing of a TLS socket in the batch: unchanged
    batch = [plain, other]
    assert ts.rewrite(batch, marks=1) is batch
    # stray ciphertext, then the close: sk closes and so does sk|1
    close = rec(SK, abi.EV_CONN, abi.SYS_CLOSE)
    out = ts.rewrite([cipher, plain, close], marks=1)
    assert [sock_of(r) for r in out] == [SK | 1, SK, SK | 1]
    assert all(r[abi.ZtEvent.syscall.offset] == abi.SYS_CLOSE for r in out[1:])
    assert not ts.tls_socks
    # the address reused by a clear-text connection whose TLS predecessor's close was
    # lost: its data is kept
    ts.rewrite([mark], marks=2)
    out = ts.rewrite([connect, cipher], marks=2)
    assert out == [connect, cipher] and not ts.tls_socks


def test_midstream_mark_opens_nothing_and_wake_records_pass():
    ts = tls.TlsStream()
    mark = rec(SK, abi.EV_CONN, tls.SYS_TLS_MARK, abi.ROLE_UNKNOWN)
    wake = bytes(abi.WAKE_SIZE)
    out = ts.rewrite([wake, mark, rec(SK)], marks=1)
    assert out == [wake]
    assert ts.stats["tls_connections_midstream"] == 1
