# cython: language_level=3, boundscheck=True, wraparound=False, cdivision=True
# cython: infer_types=False
"""Compiled N span making (issue 18): `hop_spans` of agent/net/hops.py, same output.

Why: with S spans to join, making N spans was the agent's largest hop cost (place():
~53 us CPU a request of 6 hops, ~9 us an N span, 40x the drain).  About a third of an
N span was `Span(...)` itself: the dataclass __init__ parses keyword arguments and
calls the default factories (Endpoint() twice, three dicts).  Here a span is made
with `object.__new__` and each of Span's fields is stored through its slot's member
descriptor (tp_descr_set, a C call); a field not given gets its dataclass default or
factory, read from `dataclasses.fields(Span)` at import, so a field added to Span
later is filled too (tests/net/test_nspans.py compares every field with `Span(...)`).

The Python version stays in agent/net/hops.py (`hop_spans_py`): the reference the
tests compare against and bench/bench_hops.py measures side by side.
"""

from cpython.object cimport Py_TYPE, PyObject, descrsetfunc
from cpython.ref cimport Py_INCREF, Py_XDECREF

import dataclasses
import os
import types

from agent.net.sighting import Sighting
from proto.span import KIND_INTERNAL, SOURCE_NETWORK, STATUS_OK, Endpoint, Span

cdef extern from "Python.h":
    """
    #include "structmember.h"
    """
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    int T_OBJECT_EX
    int READONLY

TCP_RST = 0x04
MAX_FIELDS = 64

cdef object _new = object.__new__
cdef object _UNSET = object()  # a field not given: its default applies
cdef object _Span = Span
cdef object _Endpoint = Endpoint

# Span's fields, in declaration order: name, member descriptor, and how to fill it
# when not given (0: a constant, 1: a new dict, 2: a new empty Endpoint, 3: call it)
cdef list _names = []
cdef list _descrs = []
cdef list _kinds = []
cdef list _defaults = []
cdef dict _pos = {}
# where each field's slot is in a Span (PyMemberDef.offset), so that a new span's
# slots are written directly; 0 when a slot is not a plain object slot (then its
# descriptor's __set__ is called)
cdef Py_ssize_t _offsets[64]


cdef int _kind_of(object f) except -1:
    if f.default is not dataclasses.MISSING:
        return 0
    if f.default_factory is dict:
        return 1
    if f.default_factory is Endpoint:
        return 2
    return 3


cdef Py_ssize_t _slot_offset(object d):
    """The slot's offset in the object when it is a writable object slot, else 0."""
    if type(d) is not types.MemberDescriptorType:
        return 0
    cdef PyMemberDef *m = (<PyMemberDescrObject *><PyObject *>d).d_member
    if m.type != T_OBJECT_EX or m.flags & READONLY or m.offset <= 0:
        return 0
    return m.offset


def _setup() -> None:
    """Read Span's and Endpoint's fields once; refuse a layout this module can't fill."""
    for f in dataclasses.fields(Span):
        d = Span.__dict__.get(f.name)
        if d is None or type(d).__name__ != "member_descriptor":
            raise TypeError(f"Span.{f.name} is not a slot: Span must stay slots=True")
        if len(_names) >= MAX_FIELDS:
            raise TypeError(f"Span has more than {MAX_FIELDS} fields")
        _offsets[len(_names)] = _slot_offset(d)
        _pos[f.name] = len(_names)
        _names.append(f.name)
        _descrs.append(d)
        _kinds.append(_kind_of(f))
        _defaults.append(f.default if f.default is not dataclasses.MISSING
                         else f.default_factory)
    if [f.name for f in dataclasses.fields(Endpoint)] != ["addr", "port"]:
        raise TypeError("Endpoint's fields changed: update _endpoint")
    for f in dataclasses.fields(Endpoint):
        if f.default is dataclasses.MISSING:
            raise TypeError(f"Endpoint.{f.name} has no default")


_setup()
cdef Py_ssize_t _NF = len(_names)
cdef object _EP_ADDR = Endpoint.__dict__["addr"]
cdef object _EP_PORT = Endpoint.__dict__["port"]
cdef object _EP_ADDR_DEF = dataclasses.fields(Endpoint)[0].default
cdef object _EP_PORT_DEF = dataclasses.fields(Endpoint)[1].default

# the fields an N span sets, by position in _names
cdef Py_ssize_t F_TRACE = _pos["trace_id"], F_ID = _pos["span_id"]
cdef Py_ssize_t F_PARENT = _pos["parent_span_id"], F_KIND = _pos["kind"]
cdef Py_ssize_t F_SOURCE = _pos["source"], F_PROTO = _pos["protocol"]
cdef Py_ssize_t F_OP = _pos["operation"], F_STATUS = _pos["status"]
cdef Py_ssize_t F_START = _pos["start_ns"], F_END = _pos["end_ns"]
cdef Py_ssize_t F_SERVICE = _pos["service"], F_NETNS = _pos["netns"]
cdef Py_ssize_t F_TRANSPORT = _pos["transport"], F_AGENT = _pos["agent"]
cdef Py_ssize_t F_ATTRS = _pos["attributes"]


cdef inline int _set(object descr, object obj, object value) except -1:
    cdef descrsetfunc f = Py_TYPE(descr).tp_descr_set
    return f(descr, obj, value)


cdef object _endpoint():
    e = _new(_Endpoint)
    _set(_EP_ADDR, e, _EP_ADDR_DEF)
    _set(_EP_PORT, e, _EP_PORT_DEF)
    return e


cdef object _span(list given):
    """A Span from `given` (one value per field, _UNSET where the default applies)."""
    s = _new(_Span)
    cdef Py_ssize_t i
    cdef int k
    cdef PyObject **slot
    for i in range(_NF):
        v = given[i]
        if v is _UNSET:
            k = _kinds[i]
            if k == 0:
                v = _defaults[i]
            elif k == 1:
                v = {}
            elif k == 2:
                v = _endpoint()
            else:
                v = _defaults[i]()
        if _offsets[i]:  # what the descriptor's __set__ does, without the call
            slot = <PyObject **>(<char *><PyObject *>s + _offsets[i])
            Py_INCREF(v)
            Py_XDECREF(slot[0])
            slot[0] = <PyObject *>v
        else:
            _set(_descrs[i], s, v)
    return s


# Sighting's slots read the same way (offsets checked at import; 0: getattr), for a
# Sighting proper only: ~10 attribute reads an N span
cdef object _Sighting = Sighting
cdef Py_ssize_t S_HOOK = _slot_offset(Sighting.__dict__["hook"])
cdef Py_ssize_t S_TIMES = _slot_offset(Sighting.__dict__["times"])
cdef Py_ssize_t S_FLAGS = _slot_offset(Sighting.__dict__["flags"])
cdef Py_ssize_t S_ZW = _slot_offset(Sighting.__dict__["zero_window"])
cdef Py_ssize_t S_TEXT = _slot_offset(Sighting.__dict__["text"])


cdef inline object _sget(object obj, Py_ssize_t off, str name):
    """obj.name, straight from its slot when obj is a Sighting and the slot is set."""
    cdef PyObject *v
    if off and type(obj) is _Sighting:
        v = (<PyObject **>(<char *><PyObject *>obj + off))[0]
        if v != NULL:
            return <object>v
    return getattr(obj, name)


def sighting_slots() -> int:
    """How many of the Sighting fields read here are read straight from slots (tests)."""
    return sum(1 for o in (S_HOOK, S_TIMES, S_FLAGS, S_ZW, S_TEXT) if o)


def make_span(**kw) -> object:
    """`Span(**kw)` the way hop_spans makes it (tests compare the two)."""
    given = [_UNSET] * _NF
    for k, v in kw.items():
        given[_pos[k]] = v
    return _span(given)


# Span ids: random 64-bit, from a pool of 512 filled by one getrandom call.  Under load
# on this VM a getrandom call cost ~1-3 us, as much as making a span; ids drawn from
# the pool are the same CSPRNG bytes.  A forked child starts a new pool (else it
# would hand out its parent's next ids).
cdef str _pool = ""
cdef Py_ssize_t _pool_at = 0
POOL_BYTES = 4096


def _reset_pool() -> None:
    global _pool, _pool_at
    _pool = ""
    _pool_at = 0


os.register_at_fork(after_in_child=_reset_pool)


cdef str _ids(Py_ssize_t n):
    """16 * n hex digits of fresh random ids, none handed out before."""
    global _pool, _pool_at
    cdef Py_ssize_t need = 16 * n
    if need > 2 * POOL_BYTES:
        return os.urandom(8 * n).hex()
    if _pool_at + need > len(_pool):
        _pool = os.urandom(POOL_BYTES).hex()
        _pool_at = 0
    out = _pool[_pool_at:_pool_at + need]
    _pool_at += need
    return out


def span_ids(Py_ssize_t n) -> str:
    """n span ids, 16 hex digits each, as one string (tests)."""
    return _ids(n)


def hop_spans(list path, hooks, parent, str leg, wall_offset, pods=None) -> list:
    """agent/net/hops.py hop_spans_py, compiled: one N span per consecutive pair of
    hooks of `path` (Sightings), children of `parent`; `pods` None: no pod names."""
    cdef list out = []
    cdef Py_ssize_t n = len(path), i
    if n < 2:
        return out
    cdef list info = []
    cdef object hk
    for s in path:
        hk = _sget(s, S_HOOK, "hook")
        k2 = (hk[0], hk[1])
        h = hooks.get(k2)
        if h is None:
            ns, ifname = f"netns:{hk[0]}", f"if{hk[1]}"
        else:
            ns, ifname = h.netns, h.ifname
        info.append((ns, ifname, "egress" if hk[2] == 0 else "ingress",
                     None if pods is None else pods.get(k2)))
    cdef str ids = _ids(n - 1)
    cdef list given
    trace_id = parent.trace_id
    parent_id = parent.span_id
    protocol = parent.protocol
    service = parent.service
    agent = parent.agent
    cdef list at, bt
    for i in range(n - 1):
        a = path[i]
        b = path[i + 1]
        a_ns, a_if, a_dir, pa = info[i]
        b_ns, b_if, b_dir, pb = info[i + 1]
        at = _sget(a, S_TIMES, "times")
        bt = _sget(b, S_TIMES, "times")
        arrived = bt[0]
        last = at[len(at) - 1]  # times are sorted: the last copy, unless it came after
        if last > arrived:
            before = [t for t in at if t <= arrived]
            last = before[len(before) - 1] if before else at[0]
        pkt = _sget(b, S_TEXT, "text")  # Sighting.packet's value, without its call
        if not pkt:
            pkt = b.packet
        attrs = {
            "zerotrace.net.leg": leg,
            "zerotrace.net.from.interface": a_if, "zerotrace.net.from.netns": a_ns,
            "zerotrace.net.from.direction": a_dir,
            "zerotrace.net.interface": b_if, "zerotrace.net.netns": b_ns,
            "zerotrace.net.direction": b_dir,
            "zerotrace.net.hop_latency_ns": arrived - last,
            "zerotrace.net.retransmissions": len(at) - 1,
            "zerotrace.net.lost": max(0, len(at) - len(bt)),
            "zerotrace.net.rst": bool((_sget(a, S_FLAGS, "flags") | _sget(b, S_FLAGS, "flags"))
                                      & TCP_RST),
            "zerotrace.net.zero_window": (_sget(a, S_ZW, "zero_window")
                                          or _sget(b, S_ZW, "zero_window")),
            "zerotrace.net.packet": pkt,
        }
        if pa is not None:
            attrs.update(pa.attributes("zerotrace.net.from."))
        if pb is not None:
            attrs.update(pb.attributes("zerotrace.net."))
        given = [_UNSET] * _NF
        given[F_TRACE] = trace_id
        given[F_ID] = ids[16 * i:16 * i + 16]
        given[F_PARENT] = parent_id
        given[F_KIND] = KIND_INTERNAL
        given[F_SOURCE] = SOURCE_NETWORK
        given[F_PROTO] = protocol
        given[F_OP] = f"{leg} {a_if} {a_dir} -> {b_if} {b_dir}"
        given[F_STATUS] = STATUS_OK
        given[F_START] = at[0] + wall_offset
        given[F_END] = arrived + wall_offset
        given[F_SERVICE] = service
        given[F_NETNS] = _sget(b, S_HOOK, "hook")[0]
        given[F_TRANSPORT] = "tcp"
        given[F_AGENT] = agent
        given[F_ATTRS] = attrs
        out.append(_span(given))
    return out


def direct_slots() -> int:
    """How many of Span's fields are written straight into their slot (tests)."""
    return sum(1 for i in range(_NF) if _offsets[i])


def boundary(s, hooks, wall_offset, pods=None) -> dict:
    """agent/net/hops.py boundary_py, compiled: a message's sightings at one hook, for
    the hop that crosses to another node; `pods` None: no pod names."""
    hk = s.hook
    k2 = (hk[0], hk[1])
    h = hooks.get(k2)
    if h is None:
        ns, ifname = f"netns:{hk[0]}", f"if{hk[1]}"
    else:
        ns, ifname = h.netns, h.ifname
    cdef list t = s.times
    pkt = s.text
    if not pkt:
        pkt = s.packet
    out = {"netns": ns, "interface": ifname,
           "direction": "egress" if hk[2] == 0 else "ingress",
           "first_ns": t[0] + wall_offset, "last_ns": t[len(t) - 1] + wall_offset,
           "copies": len(t), "rst": bool(s.flags & TCP_RST),
           "zero_window": s.zero_window, "packet": pkt}
    if pods is not None:
        ref = pods.get(k2)
        if ref is not None:
            out.update(ref.attributes(""))
    return out
