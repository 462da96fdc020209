# cython: language_level=3, boundscheck=True, wraparound=False
"""Compiled per-event connection layer (issue 13): ConnTracker, SpanAssembler and the
record -> span step, replacing the Python code of agent/conn/{tracker,assembler,spans}.py
(those modules re-export these names; their docstrings describe the rules).

Events that are the compiled SocketEvent (agent/probes/_events.pyx) are read and
annotated through its C struct, without a Python object per field; any other object
with the same attribute names (tests' stand-ins) goes through attribute access, with
the same results.  Stream offsets are computed in 64-bit integers: a direction would
need 2^63 bytes to overflow them."""

from collections import OrderedDict, Counter
from dataclasses import fields as _fields
import logging
import os

from cpython.object cimport PyObject, PyTypeObject
from cpython.dict cimport PyDict_Copy, PyDict_GetItem, PyDict_SetItem
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from agent.conn._ctx cimport SpanContext, new_context
from agent.export._slots cimport put_slot as _put
from agent.export._slots cimport slot_offset
from agent.probes._events cimport SocketEvent
from agent.protocols._stream cimport StreamParser

from agent.probes import abi
from agent.protocols import registry
from agent.protocols.base import EGRESS, Chunk, Message, Record
from agent.stitch.runtime import GOROUTINE_BASE as _GOROUTINE_BASE_PY
from proto.span import KIND_CLIENT, KIND_SERVER, SOURCE_SYSCALL, Endpoint, Span

log = logging.getLogger("agent.conn.assembler")

cdef extern from "Python.h":
    object _PyLong_FromByteArray(const unsigned char* b, size_t n, int little_endian,
                                 int is_signed)
    PyObject** _PyObject_GetDictPtr(object o)
    # What object.__new__(cls) comes down to for the slots classes below.
    object _alloc "PyType_GenericAlloc"(PyTypeObject* cls, Py_ssize_t nitems)
    PyObject* PyType_GenericAlloc(PyTypeObject* cls, Py_ssize_t nitems)
    ctypedef PyObject* (*allocfunc)(PyTypeObject* cls, Py_ssize_t nitems)
    ctypedef struct _AllocSlot "PyTypeObject":  # the one type field read here
        allocfunc tp_alloc


# -- objects made per event and per span, without a Python __init__ frame -----------------
# Span, Endpoint and Chunk are slots dataclasses: their generated __init__ is a Python
# function (~0.9 us for Span's 32 arguments, ~0.3 us for a Chunk) that only stores its
# arguments.  Here a fresh instance (object.__new__) gets its slots stored directly, at
# the offsets their member descriptors give; the field lists are checked at import,
# so a change of those classes fails loudly instead of filling the wrong slot.

cdef Py_ssize_t _offsets(cls, tuple names, Py_ssize_t* out) except -1:
    if tuple(f.name for f in _fields(cls)) != names:
        raise ImportError(f"{cls.__qualname__} fields changed: update agent/conn/_core.pyx")
    cdef Py_ssize_t i
    for i in range(len(names)):
        out[i] = slot_offset(cls, names[i])
        if out[i] < 0:
            raise ImportError(f"{cls.__qualname__}.{names[i]} is not a plain slot")
    return 0


cdef tuple _SPAN_NAMES = (
    "trace_id", "span_id", "parent_span_id", "kind", "source", "protocol", "operation",
    "status", "status_code", "error", "start_ns", "end_ns", "service", "pid", "tid",
    "process", "cgroup_id", "netns", "transport", "local", "remote", "req_seq", "resp_seq",
    "req_offset", "resp_offset", "req_bytes", "resp_bytes", "trace_headers", "attributes",
    "resource", "incomplete", "agent")
cdef Py_ssize_t _SO[32]
_offsets(Span, _SPAN_NAMES, _SO)
cdef Py_ssize_t _EO[2]
_offsets(Endpoint, ("addr", "port"), _EO)
cdef Py_ssize_t _CO[7]
_offsets(Chunk, ("direction", "data", "size", "offset", "ts_ns", "tid", "seq"), _CO)
cdef Py_ssize_t _RO[10]
_offsets(Record, ("protocol", "request", "response", "operation", "status", "status_code",
                  "error", "attributes", "trace_headers", "incomplete"), _RO)
cdef Py_ssize_t _MO[7]
_offsets(Message, ("offset", "size", "start_ns", "end_ns", "tid", "end_tid", "seq"), _MO)
cdef object _RecordT = Record, _MessageT = Message
cdef object _SpanT = Span, _EndpointT = Endpoint, _ChunkT = Chunk
# object.__new__(cls) for these comes down to PyType_GenericAlloc (checked here); called
# directly it spares a Python call (argument tuple, checks) a span and an endpoint.
for _cls in (_SpanT, _EndpointT, _ChunkT):
    if (type(_cls).__call__ is not type.__call__ or _cls.__new__ is not object.__new__
            or (<_AllocSlot*><PyObject*>_cls).tp_alloc != PyType_GenericAlloc):
        raise ImportError(f"{_cls.__qualname__} is no longer a plain slots class: "
                          "update agent/conn/_core.pyx")


cdef inline object _new(object cls):
    """object.__new__(cls) for the plain slots classes checked above."""
    return _alloc(<PyTypeObject*>cls, 0)


cdef inline object _get(object o, Py_ssize_t off, str name):
    """The object in the slot at byte offset off of o (name: for an unset slot's
    AttributeError, as attribute access would raise)."""
    cdef PyObject* v = (<PyObject**>((<char*><PyObject*>o) + off))[0]
    if v == NULL:
        return getattr(o, name)
    return <object>v


cdef inline object _mf(object m, int i, str name):
    """Field i (of _MO's order) of a Message, or attribute `name` of another object."""
    if type(m) is _MessageT:
        return _get(m, _MO[i], name)
    return getattr(m, name)


cdef object _endpoint(object addr, object port):
    cdef object ep = _new(_EndpointT)
    _put(ep, _EO[0], addr)
    _put(ep, _EO[1], port)
    return ep


cdef object _chunk(object d, object data, object size, object offset, object ts, object tid,
                   object seq):
    cdef object c = _new(_ChunkT)
    _put(c, _CO[0], d)
    _put(c, _CO[1], data)
    _put(c, _CO[2], size)
    _put(c, _CO[3], offset)
    _put(c, _CO[4], ts)
    _put(c, _CO[5], tid)
    _put(c, _CO[6], seq)
    return c


# -- a data event straight into a compiled parser -----------------------------------------
# A compiled parser's feed(chunk) only unpacks the chunk into StreamParser.feed_raw.
# Calling feed_raw with the event's fields spares a Chunk, a Python method call and
# seven attribute reads a data event, unless feed was overridden: by a Python subclass
# (its type's feed is not StreamParser's) or on the instance (tests replace it).
cdef object _BASE_FEED = StreamParser.feed
cdef dict _FEED_DIRECT = {}  # parser type -> its feed is StreamParser's


cdef inline bint _direct(object parser) except -1:
    cdef PyObject* ok
    cdef PyObject** dp
    if not isinstance(parser, StreamParser):
        return False
    t = type(parser)
    ok = PyDict_GetItem(_FEED_DIRECT, t)
    if ok == NULL:
        if len(_FEED_DIRECT) >= 256:  # a few parser types in practice
            _FEED_DIRECT.clear()
        _FEED_DIRECT[t] = getattr(t, "feed", None) is _BASE_FEED
        ok = PyDict_GetItem(_FEED_DIRECT, t)
    if <object>ok is not True:
        return False
    dp = _PyObject_GetDictPtr(parser)
    return dp == NULL or dp[0] == NULL or PyDict_GetItem(<object>dp[0], "feed") == NULL


cdef object _BASE_REQ_DIR = StreamParser.req_dir
cdef dict _REQ_DIR_C = {}  # parser type -> its req_dir is StreamParser's property


cdef inline bint _base_req_dir(object parser) except -1:
    """parser's req_dir is StreamParser's (rdir read as C gives the same value); a
    property is a data descriptor: an instance attribute cannot shadow it."""
    cdef PyObject* ok
    if not isinstance(parser, StreamParser):
        return False
    t = type(parser)
    ok = PyDict_GetItem(_REQ_DIR_C, t)
    if ok == NULL:
        if len(_REQ_DIR_C) >= 256:
            _REQ_DIR_C.clear()
        _REQ_DIR_C[t] = getattr(t, "req_dir", None) is _BASE_REQ_DIR
        ok = PyDict_GetItem(_REQ_DIR_C, t)
    return <object>ok is True


cdef long long MASK = 0xFFFFFFFF
cdef long long NOT_MASK = ~MASK
cdef long long WRAP = 1LL << 32
cdef long long HALF = WRAP >> 1
cdef int EV_CONN = abi.EV_CONN
cdef int EV_DATA = abi.EV_DATA
cdef int SYS_CONNECT = abi.SYS_CONNECT
cdef int SYS_ACCEPT = abi.SYS_ACCEPT
cdef int SYS_ACCEPT4 = abi.SYS_ACCEPT4
cdef int SYS_CLOSE = abi.SYS_CLOSE
cdef int SYS_STATE_CLOSE = abi.SYS_STATE_CLOSE
cdef int UDP = abi.IPPROTO_UDP
cdef int F_HAS_SEQ = abi.F_HAS_SEQ
cdef int F_RESUMED = abi.F_RESUMED
cdef int F_MIDSTREAM = abi.F_MIDSTREAM
cdef int F_TLS = abi.F_TLS
cdef int INGRESS = abi.DIR_INGRESS
cdef int ROLE_CLIENT = abi.ROLE_CLIENT
cdef int ROLE_SERVER = abi.ROLE_SERVER
cdef int ROLE_UNKNOWN = abi.ROLE_UNKNOWN
cdef long long GOROUTINE_BASE = _GOROUTINE_BASE_PY
cdef Py_ssize_t RADDR_OFF = abi.ZtEvent.raddr.offset

# Undecided connections keep their first chunks until inference succeeds.
INFER_MAX_CHUNKS = 8
INFER_MAX_BYTES = 16 * 1024
# Connections silent this long are flushed (pending requests out as incomplete).
IDLE_NS = 120 * 10**9
MAX_SESSIONS = 50_000
cdef Py_ssize_t C_INFER_MAX_CHUNKS = INFER_MAX_CHUNKS
cdef Py_ssize_t C_INFER_MAX_BYTES = INFER_MAX_BYTES
cdef Py_ssize_t C_MAX_SESSIONS = MAX_SESSIONS


# -- connections (agent/conn/tracker.py) ------------------------------------------------

cdef class Conn:
    """One connection: role, whether first seen mid-way, per-direction base seq and
    last offset (TCP) or byte count (UDP)."""

    cdef public object sock_id
    cdef public unsigned long long conn_id
    cdef public int role
    cdef public bint midstream
    cdef public object pid
    cdef long long base[2]
    cdef bint has_base[2]
    cdef long long last[2]
    cdef long long udp_bytes[2]

    def __init__(self, sock_id, unsigned long long conn_id, int role=ROLE_UNKNOWN,
                 bint midstream=True, pid=0):
        self.sock_id, self.conn_id, self.role, self.midstream, self.pid = (
            sock_id, conn_id, role, midstream, pid)

    @property
    def base(self) -> list:
        return [self.base[d] if self.has_base[d] else None for d in range(2)]

    @property
    def last(self) -> list:
        return [self.last[0], self.last[1]]

    @property
    def udp_bytes(self) -> list:
        return [self.udp_bytes[0], self.udp_bytes[1]]

    def __repr__(self) -> str:
        return (f"Conn(sock_id={self.sock_id}, conn_id={self.conn_id}, role={self.role}, "
                f"midstream={self.midstream}, base={self.base}, last={self.last})")


cdef inline long long _offset(Conn c, int d, long long seq):
    """The stream offset of seq in direction d (d is 0 or 1): nearest to the last
    offset seen, wrapped forward, or a slightly late event."""
    if not c.has_base[d]:
        c.base[d] = seq
        c.has_base[d] = True
    cdef long long last = c.last[d]
    cdef long long off = (last & NOT_MASK) | ((seq - c.base[d]) & MASK)
    if off < last - HALF:
        off += WRAP
    elif off > last + HALF and off >= WRAP:
        off -= WRAP
    if off > last:
        c.last[d] = off
    return off


cdef object _OrderedDictT = OrderedDict


cdef inline object _conn_of(object conns, object sid):
    """conns.get(sid): a C lookup for the tracker's own OrderedDict (what its get
    does, without a method lookup and call an event), the method for anything else."""
    cdef PyObject* v
    if type(conns) is _OrderedDictT:
        v = PyDict_GetItem(conns, sid)
        return <object>v if v != NULL else None
    return conns.get(sid)


cdef class ConnTracker:
    """Fills offset/role/MIDSTREAM of data events; forgets connections on close."""

    cdef public object conns
    cdef public object roles
    cdef public Py_ssize_t max_conns
    cdef public dict stats
    cdef unsigned long long _serial
    cdef dict __dict__

    def __init__(self, Py_ssize_t max_conns=65536, roles=None):
        self.conns = OrderedDict()
        # the role of TCP connections first seen mid-way, from listening ports
        self.roles = roles
        self.max_conns = max_conns
        self.stats = {"evicted": 0, "closed": 0, "midstream": 0}
        self._serial = 0

    cdef Conn _new(self, sock_id):
        self._serial += 1
        c = Conn(sock_id, self._serial)
        self.conns[sock_id] = c
        if len(self.conns) > self.max_conns:
            self.conns.popitem(last=False)
            self.stats["evicted"] += 1
        return c

    def closed(self, sock_id):
        c = self.conns.pop(sock_id, None)
        if c is not None:
            self.stats["closed"] += 1
        return c

    cpdef Conn update(self, e):
        """Annotate e in place; returns its connection (None for closes)."""
        if type(e) is SocketEvent:
            return self._update_ev(<SocketEvent>e)
        return self._update_obj(e)

    cdef Conn _update_ev(self, SocketEvent e):
        cdef Conn c
        cdef int d, flags
        sid = e.ev.sock_id
        if e.ev.type == EV_CONN:
            if e.ev.syscall == SYS_CONNECT or e.ev.syscall == SYS_ACCEPT \
                    or e.ev.syscall == SYS_ACCEPT4:
                c = self._new(sid)  # a new connection, even if the address was seen
                c.role, c.midstream, c.pid = e.role, False, e.ev.pid
                e.conn_id = c.conn_id
                if e.flags & F_HAS_SEQ:
                    c.base[0], c.base[1] = e.ev.seq, e.offset & MASK
                    c.has_base[0] = c.has_base[1] = True
                    c.last[0] = c.last[1] = 0
                return c
            c = _conn_of(self.conns, sid)
            if c is not None:
                e.conn_id = c.conn_id
            return None  # close / tcp_close: the caller flushes, then calls closed()
        c = _conn_of(self.conns, sid)
        if c is None:
            c = self._new(sid)
            c.pid = e.ev.pid
            if e.ev.transport == UDP:
                c.midstream = False  # datagrams: no stream start to have missed
            else:
                self.stats["midstream"] += 1
                if self.roles is not None:
                    c.role = self.roles.role_of(e.ev.pid, e.ev.netns, e.ev.lport)
        d = e.ev.direction
        if d != 0 and d != 1:
            raise ValueError(f"event direction {d}")
        e.role = c.role
        e.conn_id = c.conn_id
        flags = e.flags
        if c.midstream:
            e.flags = flags = flags | F_MIDSTREAM
        if flags & F_HAS_SEQ:
            e.offset = _offset(c, d, e.ev.seq)
        else:
            e.offset = c.udp_bytes[d]
            c.udp_bytes[d] += e.ev.ret
        return c

    cdef Conn _update_obj(self, e):
        cdef Conn c
        cdef int d
        sid = e.sock_id
        if e.type == EV_CONN:
            syscall = e.syscall
            if syscall == SYS_CONNECT or syscall == SYS_ACCEPT or syscall == SYS_ACCEPT4:
                c = self._new(sid)
                c.role, c.midstream, c.pid = e.role, False, e.pid
                e.conn_id = c.conn_id
                if e.flags & F_HAS_SEQ:
                    c.base[0], c.base[1] = e.seq, e.offset & MASK
                    c.has_base[0] = c.has_base[1] = True
                    c.last[0] = c.last[1] = 0
                return c
            c = _conn_of(self.conns, sid)
            if c is not None:
                e.conn_id = c.conn_id
            return None
        c = _conn_of(self.conns, sid)
        if c is None:
            c = self._new(sid)
            c.pid = e.pid
            if e.transport == UDP:
                c.midstream = False
            else:
                self.stats["midstream"] += 1
                if self.roles is not None:
                    c.role = self.roles.role_of(e.pid, e.netns, e.lport)
        d = e.direction
        if d != 0 and d != 1:
            raise ValueError(f"event direction {d}")
        e.role = c.role
        e.conn_id = c.conn_id
        flags = e.flags
        if c.midstream:
            e.flags = flags = flags | F_MIDSTREAM
        if flags & F_HAS_SEQ:
            e.offset = _offset(c, d, e.seq)
        else:
            e.offset = c.udp_bytes[d]
            c.udp_bytes[d] += e.ret
        return c

    def update_all(self, events) -> None:
        """update() each event, and forget connections their close events end."""
        for e in events:
            self.update(e)
            if e.type == EV_CONN and e.syscall in (SYS_CLOSE, SYS_STATE_CLOSE):
                self.closed(e.sock_id)


# -- spans (agent/conn/spans.py) ----------------------------------------------------------

# Span ids: a span id needs to be unique, not secret.  splitmix64 over a counter seeded
# from os.urandom (reseeded in a forked child, as the random module is): a bijection
# of the counter, so one process repeats no id before 2^64 of them, and the ids of
# two agents collide as random 64-bit values do.  0.3 us (random.getrandbits and
# "%016x") -> a few ns: it ran once a span.
cdef uint64_t _id_state = 0
cdef const char* _HEX = b"0123456789abcdef"


def _seed_span_ids() -> None:
    global _id_state
    _id_state = int.from_bytes(os.urandom(8), "little")


_seed_span_ids()
os.register_at_fork(after_in_child=_seed_span_ids)


cdef inline str _span_id():
    global _id_state
    cdef char buf[16]
    cdef int i
    _id_state += <uint64_t>0x9E3779B97F4A7C15ULL
    cdef uint64_t z = _id_state
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    z = z ^ (z >> 31)
    if z == 0:
        z = 1  # all zeros is an invalid span id (W3C)
    for i in range(15, -1, -1):
        buf[i] = _HEX[z & 15]
        z >>= 4
    return PyUnicode_DecodeASCII(buf, 16, NULL)


def new_span_id() -> str:
    """A 64-bit span id, 16 lower-case hex digits, never all zeros."""
    return _span_id()


cdef class ConnMeta:
    """What every span of one connection shares, computed once per connection."""

    cdef public object laddr, lport, raddr, rport, comm, pid, cgroup_id, netns
    cdef public str transport
    cdef public bint midstream
    cdef public bint tls  # plaintext read from the TLS library (bpf/tls.c)
    # The two ends as Endpoints, made once: the spans of a connection share them (no
    # code changes a span's Endpoint; the exporters and the server copy them out).
    cdef public object local, remote

    def __init__(self, e):
        self._init(e)

    cdef _init(self, e):
        cdef SocketEvent se
        if type(e) is SocketEvent:
            # the ring record's struct: addresses and comm decoded once per distinct
            # value (_text), not by a Python property call per connection
            se = <SocketEvent>e
            self.laddr = _text(se, 0)
            self.raddr = _text(se, 1)
            self.comm = _text(se, 2)
            self.lport, self.rport = se.ev.lport, se.ev.rport
            self.pid, self.cgroup_id, self.netns = se.ev.pid, se.ev.cgroup_id, se.ev.netns
            self.transport = "udp" if se.ev.transport == UDP else "tcp"
            flags = se.flags
        else:
            self.laddr, self.lport, self.raddr, self.rport = e.laddr, e.lport, e.raddr, e.rport
            self.comm, self.pid, self.cgroup_id, self.netns = (
                e.comm, e.pid, e.cgroup_id, e.netns)
            self.transport = "udp" if e.transport == UDP else "tcp"
            flags = e.flags
        self.midstream = bool(flags & F_MIDSTREAM)
        self.tls = bool(flags & F_TLS)
        self.local = _endpoint(self.laddr, self.lport)
        self.remote = _endpoint(self.raddr, self.rport)


# Text of raw address (with its family) and comm bytes, as SocketEvent decodes them:
# most connections of a node share a few addresses and process names, and a new
# connection per request (DNS, short-lived HTTP) paid inet_ntop and a property call
# for each.  Bounded: cleared when full (a scan over many addresses).
cdef dict _TEXT = {}
cdef Py_ssize_t _TEXT_MAX = 16384


cdef str _text(SocketEvent se, int which):
    """which 0: local address, 1: remote address, 2: comm."""
    # The key: the 16 raw bytes, then whether it is an address and its family, as one
    # int (no bytes slice and tuple to make and hash a connection)
    cdef unsigned char buf[18]
    if which == 0:
        memcpy(buf, se.ev.laddr, 16)
    elif which == 1:
        memcpy(buf, se.ev.raddr, 16)
    else:
        memcpy(buf, se.ev.comm, 16)
    buf[16] = 1 if which != 2 else 0
    buf[17] = se.ev.family if which != 2 else 0
    key = _PyLong_FromByteArray(buf, 18, 1, 0)
    v = _TEXT.get(key)
    if v is None:
        v = se.laddr if which == 0 else se.raddr if which == 1 else se.comm
        if len(_TEXT) >= _TEXT_MAX:
            _TEXT.clear()
        _TEXT[key] = v
    return v


def record_to_span(r, ConnMeta e, int role, req_dir, agent="", conn_id=0):
    """The span of record r on the connection described by e (a SpanContext, or None
    when the record says nothing usable)."""
    return _record_to_span(r, e, role, req_dir, agent, conn_id)


cdef object _record_to_span(r, ConnMeta e, int role, req_dir, agent, conn_id):
    # the assembler's path: a C call, not a Python one, per span
    cdef bint rec = type(r) is _RecordT  # the parsers' records: slots read directly
    if rec:
        req, resp = _get(r, _RO[1], "request"), _get(r, _RO[2], "response")
    else:
        req, resp = r.request, r.response
    if req is None and resp is None:
        return None
    if role == ROLE_CLIENT or (role == ROLE_UNKNOWN and req_dir == EGRESS):
        kind = KIND_CLIENT
    elif role == ROLE_SERVER or req_dir is not None:
        kind = KIND_SERVER
    else:
        return None  # neither the socket nor the bytes say who asked
    if req is not None:
        start = _mf(req, 2, "start_ns")
        tid = _mf(req, 4, "tid")
        req_seq, req_offset, req_bytes = (
            _mf(req, 6, "seq"), _mf(req, 0, "offset"), _mf(req, 1, "size"))
    else:
        start = _mf(resp, 2, "start_ns")
        tid = _mf(resp, 4, "tid")
        req_seq = req_offset = None
        req_bytes = 0
    if resp is not None:
        end = _mf(resp, 3, "end_ns")
        resp_seq, resp_offset, resp_bytes = (
            _mf(resp, 6, "seq"), _mf(resp, 0, "offset"), _mf(resp, 1, "size"))
    else:
        end = _mf(req, 3, "end_ns")
        resp_seq = resp_offset = None
        resp_bytes = 0
    if rec:
        protocol, operation, status, status_code, error, attrs, headers, incomplete = (
            _get(r, _RO[0], "protocol"), _get(r, _RO[3], "operation"),
            _get(r, _RO[4], "status"), _get(r, _RO[5], "status_code"),
            _get(r, _RO[6], "error"), _get(r, _RO[7], "attributes"),
            _get(r, _RO[8], "trace_headers"), _get(r, _RO[9], "incomplete"))
    else:
        protocol, operation, status, status_code, error, attrs, headers, incomplete = (
            r.protocol, r.operation, r.status, r.status_code, r.error, r.attributes,
            r.trace_headers, r.incomplete)
    remote = e.remote
    # copies (the span owns its dicts): PyDict_Copy for plain dicts, not a call of dict
    cdef dict a = PyDict_Copy(attrs) if type(attrs) is dict else dict(attrs)
    if tid >= GOROUTINE_BASE:  # Go: the pipeline keyed work by goroutine
        a["go.goroutine.id"] = tid - GOROUTINE_BASE
        tid = 0
    comm = e.comm
    transport = e.transport
    cdef object span = _new(_SpanT)
    cdef Py_ssize_t* o = _SO
    _put(span, o[0], "")
    _put(span, o[1], _span_id())
    _put(span, o[2], "")
    _put(span, o[3], kind)
    _put(span, o[4], SOURCE_SYSCALL)
    _put(span, o[5], protocol)
    _put(span, o[6], operation)
    _put(span, o[7], status)
    _put(span, o[8], status_code)
    _put(span, o[9], error)
    _put(span, o[10], start)
    _put(span, o[11], end if end > start else start)
    _put(span, o[12], comm)
    _put(span, o[13], e.pid)
    _put(span, o[14], tid)
    _put(span, o[15], comm)
    _put(span, o[16], e.cgroup_id)
    _put(span, o[17], e.netns)
    _put(span, o[18], transport)
    _put(span, o[19], e.local)
    _put(span, o[20], remote)
    _put(span, o[21], req_seq)
    _put(span, o[22], resp_seq)
    _put(span, o[23], req_offset)
    _put(span, o[24], resp_offset)
    _put(span, o[25], req_bytes)
    _put(span, o[26], resp_bytes)
    _put(span, o[27], PyDict_Copy(headers) if type(headers) is dict else dict(headers))
    _put(span, o[28], a)
    _put(span, o[29], {})
    _put(span, o[30], incomplete)
    _put(span, o[31], agent)
    if "network.transport" not in a:
        a["network.transport"] = transport
    if kind == KIND_CLIENT:
        if "server.address" not in a:
            a["server.address"] = remote.addr
        if "server.port" not in a:
            a["server.port"] = remote.port
    else:
        if "client.address" not in a:
            a["client.address"] = remote.addr
        if "client.port" not in a:
            a["client.port"] = remote.port
    if e.midstream:
        a["zerotrace.midstream"] = True
    if e.tls:
        a["tls"] = True  # the bytes were encrypted on the wire (docs/tls.md)
    # Moments on threads (request end/response start, or request start/response end).
    if kind == KIND_SERVER:
        in_tid, in_ns = ((_mf(req, 5, "end_tid"), _mf(req, 3, "end_ns")) if req is not None
                         else (0, start))
        out_tid, out_ns = ((_mf(resp, 4, "tid"), _mf(resp, 2, "start_ns")) if resp is not None
                           else (0, end))
    else:
        out_tid, out_ns = ((_mf(req, 4, "tid"), _mf(req, 2, "start_ns")) if req is not None
                           else (0, start))
        in_tid, in_ns = ((_mf(resp, 5, "end_tid"), _mf(resp, 3, "end_ns")) if resp is not None
                         else (0, end))
    return new_context(span, conn_id, in_tid, in_ns, out_tid, out_ns, resp is not None)


# Counters: collections.Counter defines __delitem__, so its item assignment goes through
# a Python-level slot (~0.7k instructions); a Counter is a dict, and adding to one is
# setting the dict item (what Counter does: it has no __setitem__ of its own).
cdef object _CounterT = Counter
cdef dict _CONNS_KEYS = {}  # protocol -> "conns_<protocol>", made once


cdef inline void _inc(object c, object key, object n=1) except *:
    cdef PyObject* v
    if type(c) is _CounterT:
        v = PyDict_GetItem(c, key)
        PyDict_SetItem(c, key, (<object>v if v != NULL else 0) + n)
    else:
        c[key] += n


# -- sessions and parsers (agent/conn/assembler.py) ---------------------------------------

cdef class Session:
    """One connection as the agent follows it."""

    cdef public object key  # conn_id or, for unconnected UDP, (conn_id, peer addr, port)
    cdef public object event  # first data event: tuple, process, cgroup, netns
    cdef public int role
    cdef public object parser
    cdef public object protocol
    cdef public list undecided
    cdef public Py_ssize_t undecided_bytes
    cdef public bint unknown
    cdef public long long last_ns
    cdef public ConnMeta meta  # addresses and process, decoded once

    def __init__(self, key, event, int role, parser=None, protocol=None, undecided=None,
                 Py_ssize_t undecided_bytes=0, bint unknown=False, long long last_ns=0,
                 ConnMeta meta=None):
        self.key, self.event, self.role, self.parser, self.protocol = (
            key, event, role, parser, protocol)
        self.undecided = undecided if undecided is not None else []
        self.undecided_bytes, self.unknown, self.last_ns, self.meta = (
            undecided_bytes, unknown, last_ns, meta)


cdef dict _CLIENT_SIDE = {ROLE_CLIENT: True, ROLE_SERVER: False}


cdef class SpanAssembler:
    """Feeds events (already annotated by ConnTracker) to parsers; emits spans."""

    cdef public object emit
    cdef public object agent_name
    cdef public ConnTracker tracker
    cdef public dict sessions
    cdef public dict udp_keys
    cdef object _stats  # a Counter; read through the stats property
    cdef Py_ssize_t _spans_n, _unusable_n  # not yet added to it
    cdef dict __dict__  # instance overrides (tests replace handle)

    def __init__(self, emit, agent_name=""):
        self.emit = emit
        self.agent_name = agent_name
        self.tracker = ConnTracker()
        self.sessions = {}
        self.udp_keys = {}  # conn_id -> its per-peer sessions
        self._stats = Counter()
        self._spans_n = self._unusable_n = 0

    @property
    def stats(self):
        """The assembler's counters (a Counter): spans made, records unusable,
        connections by protocol, ... (spans are counted in C and added here when read)."""
        self._fold()
        return self._stats

    @stats.setter
    def stats(self, value) -> None:
        self._fold()
        self._stats = value

    cdef _fold(self):
        if self._spans_n:
            _inc(self._stats, "spans", self._spans_n)
            self._spans_n = 0
        if self._unusable_n:
            _inc(self._stats, "records_unusable", self._unusable_n)
            self._unusable_n = 0

    # -- events -----------------------------------------------------------------------
    def handle(self, e) -> None:
        self._handle(e)

    cdef _handle(self, e):
        # the body of handle(); process_events calls it without a Python call an event
        cdef Conn conn = self.tracker.update(e)
        cdef SocketEvent se
        cdef int etype, syscall, transport, d, flags
        cdef bint typed = type(e) is SocketEvent
        if typed:
            se = <SocketEvent>e
            etype, syscall, transport = se.ev.type, se.ev.syscall, se.ev.transport
        else:
            etype, syscall, transport = e.type, e.syscall, e.transport
        conn_id = e.conn_id
        if etype == EV_CONN:
            if syscall == SYS_CLOSE or syscall == SYS_STATE_CLOSE:
                if conn_id:
                    if (se.flags if typed else e.flags) & F_RESUMED:
                        self._drop_conn(conn_id)
                    else:
                        self._close_conn(conn_id, "closed")
                self.tracker.closed(e.sock_id)
            return
        if transport == UDP:
            if typed:
                key = (conn_id, se._rec[RADDR_OFF:RADDR_OFF + 16], se.ev.rport)
            else:
                key = (conn_id, e._rec[RADDR_OFF:RADDR_OFF + 16], e.rport)
        else:
            key = conn_id
        cdef Session s = self.sessions.get(key)
        if s is None:
            if len(self.sessions) >= C_MAX_SESSIONS:
                _inc(self._stats, "sessions_full")
                return
            # Session(key, e, role) without a Python call (once a connection)
            s = Session.__new__(Session)
            s.key, s.event, s.role = key, e, conn.role if conn is not None else 0
            s.undecided = []
            self.sessions[key] = s
            if type(key) is tuple:
                self.udp_keys.setdefault(conn_id, []).append(key)
        if typed:
            d = se.ev.direction
            ts_exit, ts_enter, ret = se.ts_exit, se.ts_enter, se.ev.ret
            flags = se.flags
            payload, offset, tid = se.payload, se.offset, se.tid
            seq = se.ev.seq if flags & F_HAS_SEQ else None
        else:
            d = e.direction
            ts_exit, ts_enter, ret = e.ts_exit, e.ts_enter, e.ret
            flags = e.flags
            payload, offset, tid = e.payload, e.offset, e.tid
            seq = e.seq if flags & F_HAS_SEQ else None
        s.last_ns = ts_exit
        if s.unknown:
            _inc(self._stats, "unknown_protocol_bytes", ret)
            return
        ts = ts_exit if d == INGRESS else ts_enter
        parser = s.parser
        if parser is None:
            self._infer(s, _chunk(d, payload, ret, offset, ts, tid, seq))
            return
        try:
            if _direct(parser):
                records = (<StreamParser>parser).feed_raw(d, payload, ret, offset, ts, tid,
                                                          seq)
            else:
                records = parser.feed(_chunk(d, payload, ret, offset, ts, tid, seq))
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the agent
            self._parser_failed(s, exc)
            return
        if records:
            self._records(s, records)

    cdef _parser_failed(self, Session s, exc):
        """A parser raised: stop parsing this connection (its bytes are counted as
        unknown from now on), count it, and say it once per protocol."""
        s.unknown = True
        s.parser = None
        self._stats["parser_errors"] += 1
        key = f"parser_errors_{s.protocol}"
        self._stats[key] += 1
        if self._stats[key] == 1:
            log.warning("the %s parser failed on a connection (%s: %s); that connection is "
                        "no longer parsed, later failures are only counted "
                        "(zerotrace_stage_events_total{stage=\"assembler\"})",
                        s.protocol, type(exc).__name__, exc)

    cdef bint _guarded(self, Session s, call, arg):
        """Records of the parser's `call(arg)` (feed or flush); False if it raised."""
        try:
            records = call(arg)
        except Exception as exc:  # noqa: BLE001 - as in handle()
            self._parser_failed(s, exc)
            return False
        self._records(s, records)
        return True

    cdef bint _guarded_feed(self, Session s, chunk):
        """_guarded(s, s.parser.feed, chunk), a compiled parser's feed_raw called as C."""
        parser = s.parser
        try:
            if _direct(parser) and type(chunk) is _ChunkT:  # slots read directly
                records = (<StreamParser>parser).feed_raw(
                    _get(chunk, _CO[0], "direction"), _get(chunk, _CO[1], "data"),
                    _get(chunk, _CO[2], "size"), _get(chunk, _CO[3], "offset"),
                    _get(chunk, _CO[4], "ts_ns"), _get(chunk, _CO[5], "tid"),
                    _get(chunk, _CO[6], "seq"))
            else:
                records = parser.feed(chunk)
        except Exception as exc:  # noqa: BLE001 - as in handle()
            self._parser_failed(s, exc)
            return False
        self._records(s, records)
        return True

    cdef _flush(self, Session s, reason):
        if s.parser is not None:
            self._guarded(s, s.parser.flush, reason)

    cdef _infer(self, Session s, chunk):
        cdef SocketEvent se
        s.undecided.append(chunk)
        # chunk is _chunk's (slots read directly); the event's fields from its struct
        data = _get(chunk, _CO[1], "data") if type(chunk) is _ChunkT else chunk.data
        s.undecided_bytes += len(data)
        e = s.event
        if type(e) is SocketEvent:
            se = <SocketEvent>e
            transport = "udp" if se.ev.transport == UDP else "tcp"
            lport, rport = se.ev.lport, se.ev.rport
        else:
            transport = "udp" if e.transport == UDP else "tcp"
            lport, rport = e.lport, e.rport
        direction = _get(chunk, _CO[0], "direction") if type(chunk) is _ChunkT \
            else chunk.direction
        proto = registry.infer(data, direction, lport, rport, transport)
        if proto is None:
            if (len(s.undecided) >= C_INFER_MAX_CHUNKS
                    or s.undecided_bytes >= C_INFER_MAX_BYTES):
                s.unknown = True
                s.undecided = []
                _inc(self._stats, "unknown_protocol_conns")
            return
        client_side = _CLIENT_SIDE.get(s.role)
        s.protocol = proto
        s.parser = registry.new_parser(proto, client_side, transport)
        ck = _CONNS_KEYS.get(proto)
        if ck is None:
            ck = f"conns_{proto}"
            if len(_CONNS_KEYS) < 1024:  # protocols are a few names
                _CONNS_KEYS[proto] = ck
        _inc(self._stats, ck)
        chunks, s.undecided = s.undecided, []
        for c in chunks:
            if not self._guarded_feed(s, c):
                return

    cdef _records(self, Session s, records):
        if not records:
            return
        cdef ConnMeta meta = s.meta
        if meta is None:  # made without a Python call (once a connection)
            meta = ConnMeta.__new__(ConnMeta)
            meta._init(s.event)
            s.meta = meta
        parser = s.parser
        if _base_req_dir(parser):  # StreamParser.req_dir, read as C
            rdir = (<StreamParser>parser).rdir
            req_dir = None if rdir < 0 else rdir
        else:
            req_dir = getattr(parser, "req_dir", None)
        role = s.role
        agent, conn_id, emit = self.agent_name, s.event.conn_id, self.emit
        for r in records:
            ctx = _record_to_span(r, meta, role, req_dir, agent, conn_id)
            if ctx is None:
                self._unusable_n += 1
                continue
            # counted in C, added to the Counter when stats is read (an update a span)
            self._spans_n += 1
            emit(ctx)

    # -- life -------------------------------------------------------------------------
    cdef _drop_conn(self, conn_id):
        """The probes resume a connection they sampled out (flag RESUMED): what its
        parser still holds is a request whose answer was not traced, not a request the
        connection's close cut short.  Counted, never made an incomplete span."""
        cdef Session s
        for key in self.udp_keys.pop(conn_id, None) or (conn_id,):
            s = self.sessions.pop(key, None)
            if s is None or s.parser is None:
                continue
            try:
                records = s.parser.flush("resumed")
            except Exception as exc:  # noqa: BLE001 - as in handle()
                self._parser_failed(s, exc)
                continue
            if records:
                self._stats["resumed_dropped_records"] += len(records)

    cdef _close_conn(self, conn_id, reason):
        for key in self.udp_keys.pop(conn_id, None) or (conn_id,):
            s = self.sessions.pop(key, None)
            if s is not None:
                self._flush(s, reason)

    def expire(self, now_ns, idle_ns=IDLE_NS) -> None:
        """Flush connections idle for longer than idle_ns."""
        cdef Session s
        for key in [k for k, s in self.sessions.items() if now_ns - s.last_ns > idle_ns]:
            s = self.sessions.pop(key)
            if type(key) is tuple:
                keys = self.udp_keys.get(key[0], [])
                if key in keys:
                    keys.remove(key)
                if not keys:
                    self.udp_keys.pop(key[0], None)
            _inc(self._stats, "sessions_expired")
            self._flush(s, "idle")

    def close(self) -> None:
        self.udp_keys.clear()
        for key in list(self.sessions):
            s = self.sessions.pop(key)
            self._flush(s, "agent stopped")


# -- the pipeline's loop (agent/pipeline.py Pipeline.process) ---------------------------

def process_events(events, handle, observe, set pids, new_pid, ignore, stats) -> None:
    """Pipeline.process's per-event loop: events of sockets bound to `ignore` ports
    dropped (counted in stats), `new_pid` told of each pid not in `pids`, Go events
    keyed by goroutine (tid = GOROUTINE_BASE + goid), then `handle(e)` and, for data
    events, `observe(e)`.  `handle` may be a SpanAssembler: its
    handle() is then called as C (unless the instance replaced it)."""
    cdef SocketEvent se
    cdef int etype
    cdef bint ign = bool(ignore)
    cdef SpanAssembler asm = None
    cdef dict over
    if type(handle) is SpanAssembler:  # exactly: a subclass may override handle
        asm = <SpanAssembler>handle
        over = (<object>handle).__dict__
        if over is not None and "handle" in over:  # replaced on the instance (tests)
            handle = over["handle"]
            asm = None
        else:
            handle = asm.handle
    elif isinstance(handle, SpanAssembler):
        handle = handle.handle
    for e in events:
        if type(e) is SocketEvent:
            se = <SocketEvent>e
            if ign and se.ev.lport in ignore:
                stats["ignored_own_export_port"] += 1
                continue
            if se.ev.pid not in pids:
                new_pid(se.ev.pid)
            if se.ev.goid:
                se.tid = GOROUTINE_BASE + <long long>se.ev.goid
            if asm is not None:
                asm._handle(e)
            else:
                handle(e)
            etype = se.ev.type
        else:
            if ign and e.lport in ignore:
                stats["ignored_own_export_port"] += 1
                continue
            pid = e.pid
            if pid not in pids:
                new_pid(pid)
            goid = e.goid
            if goid:
                e.tid = GOROUTINE_BASE + goid
            if asm is not None:
                asm._handle(e)
            else:
                handle(e)
            etype = e.type
        if etype == EV_DATA:
            observe(e)
