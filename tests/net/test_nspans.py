"""The compiled N span maker (agent/net/_nspans.pyx) against the Python reference
(agent/net/hops.py hop_spans_py): the same spans, field by field, on randomized paths
(retransmitted copies, copies after the arrival, RST, zero window, IPv4/IPv6, hooks
with and without names and pods), and its Span builder against Span(...)."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from agent.net import _nspans
from agent.net.hops import NO_PODS, hop_spans, hop_spans_py
from agent.net.pods import PodRef
from agent.net.sighting import Sighting
from agent.probes.tc import Hook
from proto.span import Endpoint, Span

ID = re.compile(r"[0-9a-f]{16}")


class Pods:
    """A hook -> pod map over some of the hooks."""

    def __init__(self, refs: dict) -> None:
        self.refs = refs

    def get(self, key):
        return self.refs.get(key)


def random_path(rng: random.Random) -> tuple[list[Sighting], dict, Pods]:
    hooks, refs, path = {}, {}, []
    t = rng.randrange(1, 1 << 40)
    for i in range(rng.randrange(0, 7)):
        ns, ifx, d = rng.choice([0, 4026531840 + i]), rng.randrange(1, 40), rng.randrange(2)
        if rng.random() < 0.7:
            hooks[(ns, ifx)] = Hook(f"ns{i}", ns, ifx, f"veth{i}", False)
        if rng.random() < 0.4:
            refs[(ns, ifx)] = PodRef(f"pod{i}", "default", f"uid{i}",
                                     rng.choice(["", "deploy/x"]), rng.choice(["pod", "host"]))
        t += rng.randrange(0, 5000)
        times = sorted(t + rng.randrange(0, 9000) for _ in range(rng.randrange(1, 4)))
        times[0] = t  # the first copy set the order of the path
        fam = rng.choice([4, 6])
        addr = (fam, bytes(rng.randrange(256) for _ in range(16)), rng.randrange(65536),
                bytes(rng.randrange(256) for _ in range(16)), rng.randrange(65536))
        path.append(Sighting((ns, ifx, d), times, rng.choice([0x18, 0x10, 0x04, 0x14]),
                             rng.random() < 0.2, addr[4], "", addr))
    return path, hooks, Pods(refs)


def without_ids(spans: list[Span]) -> list[dict]:
    out = []
    for s in spans:
        d = {f.name: getattr(s, f.name) for f in dataclasses.fields(Span)}
        d.pop("span_id")
        out.append(d)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_compiled_equals_python(seed: int) -> None:
    assert _nspans.sighting_slots() == 5  # the Sightings below are read from slots
    rng = random.Random(seed)
    n = 0
    for _ in range(500):
        path, hooks, pods = random_path(rng)
        parent = Span(trace_id=f"{rng.getrandbits(128):032x}", kind="client",
                      protocol=rng.choice(["http", "", "grpc"]), service="svc",
                      agent=rng.choice(["", "node-a"]))
        leg = rng.choice(["request", "response"])
        off = rng.randrange(-10**6, 10**12)
        for p in (pods, NO_PODS):
            old = hop_spans_py(path, hooks, parent, leg, off, p)
            new = hop_spans(path, hooks, parent, leg, off, p)
            assert without_ids(new) == without_ids(old)
            assert len(new) == max(0, len(path) - 1)
            ids = [s.span_id for s in new]
            assert all(ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
            for s, o in zip(new, old, strict=True):
                assert type(s) is Span
                assert [type(v) for v in s.attributes.values()] == \
                    [type(v) for v in o.attributes.values()]
                assert list(s.attributes) == list(o.attributes)  # key order too
            n += len(new)
    assert n > 1000  # the paths were not all too short to make spans


def test_no_pods_default() -> None:
    path, hooks, _ = random_path(random.Random(9))
    while len(path) < 2:
        path, hooks, _ = random_path(random.Random(len(path) + 10))
    parent = Span(trace_id="t" * 32)
    assert without_ids(hop_spans(path, hooks, parent, "request", 0)) == \
        without_ids(hop_spans_py(path, hooks, parent, "request", 0))


def test_span_builder_equals_dataclass() -> None:
    # every field written straight into its slot: the path the comparisons below test
    assert _nspans.direct_slots() == len(dataclasses.fields(Span))
    rng = random.Random(1)
    for _ in range(200):
        kw = {}
        for f in dataclasses.fields(Span):
            if rng.random() < 0.5:
                continue
            if f.type in ("int", "int | None"):
                kw[f.name] = rng.randrange(1 << 40)
            elif f.type == "str":
                kw[f.name] = f"v{rng.randrange(99)}"
            elif f.name in ("local", "remote"):
                kw[f.name] = Endpoint("10.0.0.1", rng.randrange(65536))
            else:
                kw[f.name] = {"k": rng.randrange(9)}
        kw.setdefault("span_id", "0" * 16)  # the factory's is random
        a, b = _nspans.make_span(**kw), Span(**kw)
        assert a == b
        for f in dataclasses.fields(Span):  # every slot set, defaults not shared
            v = getattr(a, f.name)
            if f.name not in kw and isinstance(v, (dict, Endpoint)):
                assert v is not getattr(_nspans.make_span(**kw), f.name)


def test_path_sightings_are_whole() -> None:
    # path() makes Sightings without the dataclass __init__: every field set, and
    # equal to the one __init__ makes (IPv4 text from the record, IPv6 formatted later)
    import socket

    from agent.net.hops import HopIndex
    from agent.probes.tc import HOP

    idx = HopIndex()
    for fam, sa, da in ((4, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")),
                        (6, socket.inet_pton(socket.AF_INET6, "fd00::1"),
                         socket.inet_pton(socket.AF_INET6, "fd00::2"))):
        # the second hook's copy is older than the first's: the path is reordered
        idx.add_raw([HOP.pack(ts, ns, 0, 7 + fam, ifx, 5, sa, da, 100, 40000, 80, 40000,
                              80, 40, d, 0x18, win, 0, fam)
                     for ts, ns, ifx, d, win in ((50, 1, 2, 0, 500), (20, 9, 3, 1, 0),
                                                 (60, 1, 2, 0, 500))])
        path = idx.path((5, 40000, 80, 7 + fam))
        assert [s.hook for s in path] == [(9, 3, 1), (1, 2, 0)]
        assert [s.times for s in path] == [[20], [50, 60]]
        assert [s.zero_window for s in path] == [True, False]
        for s in path:
            assert type(s) is Sighting
            assert s == Sighting(s.hook, list(s.times), s.flags, s.zero_window, s.dport,
                                 s.text, s.addr)
        assert path[0].packet == ("10.0.0.1:40000>10.0.0.2:80" if fam == 4
                                  else "[fd00::1]:40000>[fd00::2]:80")


def test_span_ids_fresh_and_not_shared_with_a_forked_child() -> None:
    import os

    ids = [_nspans.span_ids(k) for k in (1, 5, 2, 600, 3) * 40]
    flat = [s[i:i + 16] for s in ids for i in range(0, len(s), 16)]
    assert all(ID.fullmatch(i) for i in flat) and len(set(flat)) == len(flat)
    _nspans.span_ids(1)  # a pool with ids left in it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id: must not be the parent's next
        os.write(w, _nspans.span_ids(1).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    assert ID.fullmatch(child) and child != _nspans.span_ids(1)


def test_ipv4_packet_text_at_the_widths_limits() -> None:
    import socket

    from agent.net.hops import HopIndex
    from agent.probes.tc import HOP

    rng = random.Random(4)
    idx = HopIndex()
    cases = [("255.255.255.255", 65535, "0.0.0.0", 0), ("0.0.0.0", 0, "255.255.255.255", 65535)]
    cases += [(socket.inet_ntoa(rng.randbytes(4)), rng.randrange(65536),
               socket.inet_ntoa(rng.randbytes(4)), rng.randrange(65536)) for _ in range(50)]
    for i, (sa, sp, da, dp) in enumerate(cases):
        idx.add_raw([HOP.pack(10, 1, 0, 1000 + i, 2, 5, socket.inet_aton(sa) + bytes(12),
                              socket.inet_aton(da) + bytes(12), 100, sp, dp, 40000, 80, 40,
                              0, 0x18, 500, 0, 4)])
        (s,) = idx.path((5, 40000, 80, 1000 + i))
        assert s.packet == s.text == f"{sa}:{sp}>{da}:{dp}"


def test_boundary_compiled_equals_python() -> None:
    from agent.net.hops import boundary, boundary_py

    rng = random.Random(7)
    n = 0
    for _ in range(300):
        path, hooks, pods = random_path(rng)
        off = rng.randrange(-10**6, 10**12)
        for s in path:
            for p in (pods, NO_PODS):
                old, new = boundary_py(s, hooks, off, p), boundary(s, hooks, off, p)
                assert new == old and list(new) == list(old)
                assert [type(v) for v in new.values()] == [type(v) for v in old.values()]
                n += 1
            assert boundary(s, hooks, off) == boundary_py(s, hooks, off)
    assert n > 500


def test_duck_typed_sightings_read_by_attribute() -> None:
    # not a Sighting: no slot reads, the same spans through getattr
    from types import SimpleNamespace

    rng = random.Random(3)
    for _ in range(100):
        path, hooks, pods = random_path(rng)
        ducks = [SimpleNamespace(hook=s.hook, times=s.times, flags=s.flags,
                                 zero_window=s.zero_window, text=s.text, packet=s.packet)
                 for s in path]
        parent = Span(trace_id="t" * 32, protocol="http")
        assert without_ids(hop_spans(ducks, hooks, parent, "response", 5, pods)) == \
            without_ids(hop_spans_py(path, hooks, parent, "response", 5, pods))
