"""DNS over UDP (one datagram per chunk) and TCP (2-byte length prefix).

Queries and responses are matched by message id.  The header, question and the
common answer types (A, AAAA, CNAME, PTR, NS) are decoded by hand: building a
`dns.message.Message` costs ~75 us a message, which alone would cap the parser near
6 000 pairs/s.  dnspython still supplies the mnemonics (type, rcode names) and decodes
the rarer answer types.
"""

from __future__ import annotations

import socket
import struct

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    DirStream,
    Message,
    Pending,
    Record,
    StreamParser,
    incomplete_record,
    new_stats,
)

STATS = new_stats()

MAX_ANSWERS = 16
_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_TYPE_NAMES: dict[int, str] = {}
_RCODE_NAMES: dict[int, str] = {}


def type_name(t: int) -> str:
    s = _TYPE_NAMES.get(t)
    if s is None:
        s = _TYPE_NAMES[t] = dns.rdatatype.to_text(t)
    return s


def rcode_name(r: int) -> str:
    s = _RCODE_NAMES.get(r)
    if s is None:
        s = _RCODE_NAMES[r] = dns.rcode.to_text(r)
    return s


def read_name(data: bytes, i: int) -> tuple[str, int]:
    """(name, index after it) with compression pointers followed; raises ValueError."""
    labels = []
    end = -1
    hops = 0
    n = len(data)
    while True:
        if i >= n:
            raise ValueError("name runs past the message")
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln >= 0xC0:
            if i + 1 >= n:
                raise ValueError("cut pointer")
            if end < 0:
                end = i + 2
            i = ((ln & 0x3F) << 8) | data[i + 1]
            hops += 1
            if hops > 32:
                raise ValueError("pointer loop")
            continue
        if ln > 63 or i + 1 + ln > n:
            raise ValueError("bad label")
        labels.append(data[i + 1:i + 1 + ln])
        i += 1 + ln
    return (b".".join(labels).decode("latin-1") or "."), (end if end >= 0 else i)


def parse(data: bytes) -> dict | None:
    """Header, question and answers of one DNS message; None if it is not one."""
    if len(data) < 12:
        return None
    ident, flags, qd, an, _ns, _ar = _H.unpack_from(data)
    if qd > 4 or (flags >> 11) & 0xF > 5:
        return None
    info = {"id": ident, "qr": flags >> 15, "rcode": flags & 0xF, "name": "", "qtype": 0,
            "answers": [], "truncated": False}
    try:
        i = 12
        for k in range(qd):
            name, i = read_name(data, i)
            if i + 4 > len(data):
                raise ValueError("cut question")
            if k == 0:
                info["name"] = name
                info["qtype"] = (data[i] << 8) | data[i + 1]
            i += 4
        answers = info["answers"]
        for _ in range(min(an, MAX_ANSWERS)):
            _, i = read_name(data, i)
            if i + 10 > len(data):
                raise ValueError("cut answer")
            rtype, rclass, _ttl, rdlen = _RR.unpack_from(data, i)
            i += 10
            if i + rdlen > len(data):
                raise ValueError("cut rdata")
            answers.append(_rdata(data, i, rtype, rclass, rdlen))
            i += rdlen
    except (ValueError, IndexError):
        if not info["name"] and qd:
            return None
        info["truncated"] = True
    return info


def _rdata(data: bytes, i: int, rtype: int, rclass: int, rdlen: int) -> str:
    if rtype == 1 and rdlen == 4:
        return f"A {socket.inet_ntop(socket.AF_INET, data[i:i + 4])}"
    if rtype == 28 and rdlen == 16:
        return f"AAAA {socket.inet_ntop(socket.AF_INET6, data[i:i + 16])}"
    if rtype in (5, 12, 2):
        return f"{type_name(rtype)} {read_name(data, i)[0]}"
    if rtype == 15 and rdlen >= 3:  # MX
        return f"MX {(data[i] << 8) | data[i + 1]} {read_name(data, i + 2)[0]}."
    if rtype == 16:  # TXT: length-prefixed strings
        parts, j, end = [], i, i + rdlen
        while j < end:
            ln = data[j]
            parts.append('"' + data[j + 1:j + 1 + ln].decode("latin-1") + '"')
            j += 1 + ln
        return "TXT " + " ".join(parts)
    if rtype == 33 and rdlen >= 7:  # SRV
        prio, weight, port = struct.unpack_from("!HHH", data, i)
        return f"SRV {prio} {weight} {port} {read_name(data, i + 6)[0]}."
    try:
        rd = dns.rdata.from_wire(rclass, rtype, data, i, rdlen, origin=None)
        return f"{type_name(rtype)} {rd.to_text()}"
    except (dns.exception.DNSException, ValueError, TypeError):
        return type_name(rtype)


class DnsParser(StreamParser):
    """One DNS flow (UDP socket or TCP connection), both directions."""

    protocol = "dns"
    stats = STATS

    def __init__(self, client_side: bool | None = None, transport: str | None = None) -> None:
        super().__init__(client_side)
        self.pending: dict[int, Pending] = {}
        self.tcp: bool | None = None if transport is None else transport == "tcp"

    def feed(self, chunk):  # noqa: ANN001 - same signature as the base
        if self.tcp is None:
            self.tcp = _looks_tcp(chunk.data, chunk.size, chunk.seq)
        if self.tcp:
            return StreamParser.feed(self, chunk)
        # UDP: one message per datagram, no stream to reassemble.
        out: list[Record] = []
        if self.closed:
            return out
        data = chunk.data
        info = parse(data)
        if info is None:
            self.stats["bad_frame"] += 1
            return out
        if chunk.size > len(data):
            info["truncated"] = True
        msg = Message(chunk.offset, chunk.size, chunk.ts_ns, chunk.ts_ns, chunk.tid,
                      chunk.tid, chunk.seq)
        self._message(chunk.direction, info, msg, out)
        return out

    def _parse(self, d: int, st: DirStream, out: list[Record]) -> None:
        buf = st.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            ln = (buf[pos] << 8) | buf[pos + 1]
            if ln < 12:
                self.stats["bad_frame"] += 1
                self._desync(d, st, out)
                return
            if n - pos - 2 < ln:
                break
            info = parse(buf[pos + 2:pos + 2 + ln])
            if info is None:
                self.stats["bad_frame"] += 1
                self._desync(d, st, out)
                return
            self._message(d, info, st.message(st.base + pos, st.base + pos + 2 + ln), out)
            pos += 2 + ln
        st.consume(pos)

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        buf = st.buf
        if len(buf) < 14:
            return False
        ln = (buf[0] << 8) | buf[1]
        info = parse(buf[2:])
        if info is None:
            return False
        info["truncated"] = True
        msg = st.message(st.base, st.base + len(buf))
        msg.size = ln + 2
        self._message(d, info, msg, out)
        if ln + 2 < len(buf) + g:
            return False  # the next message started inside the hole
        st.consume(len(buf))
        st.skip = ln + 2 - len(buf) - g
        return True

    def _resync(self, d: int, data: bytes) -> int:
        return 0 if len(data) >= 14 and parse(data[2:]) is not None else -1

    def _message(self, d: int, info: dict, msg: Message, out: list[Record]) -> None:
        if self.req_dir is None:
            self.req_dir = d if info["qr"] == 0 else 1 - d
        if info["qr"] == 0:
            name = info["name"]
            qtype = type_name(info["qtype"]) if info["qtype"] else ""
            attrs = {"dns.question.name": name, "dns.question.type": qtype}
            p = Pending(msg, f"{qtype} {name}".strip(), attrs, {},
                        "truncated" if info["truncated"] else "")
            old = self.pending.pop(info["id"], None)
            if old is not None:
                # Same id asked again before an answer (a retry): the first is lost.
                out.append(incomplete_record(self.protocol, old, "no response"))
            if len(self.pending) >= MAX_PENDING:
                self.stats["pending_overflow"] += 1
                first = next(iter(self.pending))
                out.append(incomplete_record(self.protocol, self.pending.pop(first), "evicted"))
            self.pending[info["id"]] = p
            return
        p = self.pending.pop(info["id"], None)
        if p is None:
            self.stats["unmatched_response"] += 1
            return
        rcode = rcode_name(info["rcode"])
        attrs = dict(p.attributes)
        attrs["dns.response_code"] = rcode
        attrs["dns.answers"] = info["answers"]
        status = STATUS_OK if info["rcode"] == 0 else STATUS_ERROR
        why = ",".join(x for x in (p.incomplete, "truncated" if info["truncated"] else "") if x)
        out.append(Record(self.protocol, p.msg, msg, p.operation, status, rcode,
                          "" if info["rcode"] == 0 else rcode, attrs, {}, why))

    def _on_desync(self, d: int, out: list[Record]) -> None:
        pass  # matching is by id: nothing goes out of step

    def _flush(self, reason: str, out: list[Record]) -> None:
        for p in self.pending.values():
            out.append(incomplete_record(self.protocol, p, reason or "no response"))
        self.pending.clear()
        self.closed = True


def _looks_tcp(data: bytes, size: int, seq: int | None) -> bool:
    """Whether a flow's first chunk is length-prefixed DNS (TCP) rather than a datagram."""
    if size == 2:
        return True
    if len(data) < 14:
        return False
    ln = (data[0] << 8) | data[1]
    udp_ok = data[4:6] == b"\x00\x01"
    tcp_ok = data[6:8] == b"\x00\x01" and ln + 2 <= size
    if tcp_ok and udp_ok:
        return ln + 2 == size
    return tcp_ok
