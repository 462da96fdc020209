"""Compiled protocol inference (agent/protocols/_infer.pyx) against the Python rules it
replaced: every built-in test of first bytes, and the registry's ordered run of them,
must answer alike on the golden connections' chunks, on their cut and damaged copies,
on near-misses of every shape the tests look for, and on noise, for either transport
and for ports that are and are not the protocols' own.

The Python rules are the protocol modules (http1.py, redis.py, ...) and the registry as
of PYTHON_INFER, loaded from git history; their relative imports resolve to this tree's
package (the compiled parsers they import names from).  Inputs come from seeded
`random.Random`s, so a failure names its input and replays.
"""

from __future__ import annotations

import random
import sys
import types

import pytest

from agent.protocols import _infer, registry

from .equivalence import _git_show, needs_history
from .golden import captures, load_capture

# The last commit with the inference rules in Python (registry.infer and each protocol
# module's rule functions).
PYTHON_INFER = "06f02ce1cc5d8079a6caef84d01feb6407bb1c25"
MODULES = ("http2", "http1", "redis", "postgresql", "mysql", "memcached", "dns")
PORTS = (40000, 8080, 80, 6379, 6380, 26379, 11211, 53, 5353, 853, 3306, 3307, 4000, 5432,
         50051)
CASES = 6000

pytestmark = needs_history(PYTHON_INFER)


def _load(module: str) -> types.ModuleType:
    name = f"_zt_infer_{PYTHON_INFER[:12]}_{module}"
    mod = sys.modules.get(name)
    if mod is None:
        src = _git_show(PYTHON_INFER, f"agent/protocols/{module}.py")
        assert src is not None, module
        mod = types.ModuleType(name)
        mod.__package__ = "agent.protocols"  # relative imports: this tree's modules
        mod.__file__ = f"{PYTHON_INFER}:agent/protocols/{module}.py"
        sys.modules[name] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


@pytest.fixture(scope="module")
def python_rules() -> dict[str, list]:
    rules: dict[str, list] = {"tcp": [], "udp": []}
    for m in MODULES:
        for rule in _load(m).PROTOCOL.rules:
            rules[rule.transport].append(rule)
    for r in rules.values():
        r.sort(key=lambda x: x.order)
    return rules


def _python_infer(rules: dict, data: bytes, lport: int, rport: int, transport: str):
    """registry.infer as of PYTHON_INFER."""
    if not data:
        return None
    for rule in rules.get(transport, ()):
        found = rule.match(data, (lport, rport))
        if found is not None:
            return found
    return None


def _builtin_rules() -> dict[str, list]:
    """The compiled rules the registry holds for the package's own protocols."""
    return {t: [r for r in registry._RULES[t] if type(r.match) is _infer.Matcher]
            for t in ("tcp", "udp")}


# -- inputs ---------------------------------------------------------------------------------

def _golden_chunks() -> list[bytes]:
    out = []
    for path in captures():
        for conn in load_capture(path)["connections"]:
            out.extend(data for _d, _ts, data in conn[:4])
    return out


def _near_misses(rng: random.Random) -> bytes:
    """A shape one of the tests looks for, slightly off (or not)."""
    digits = lambda k: "".join(rng.choice("0123456789") for _ in range(k))  # noqa: E731
    word = lambda: rng.choice(["GET", "POST", "OPTIONS", "PROPPATCH", "PROPPATCHES", "GE",  # noqa: E731
                               "get", "M-SEARCH", "DELETE"])
    ws = lambda: rng.choice([" ", "  ", "\t", "\x0b", "\x0c", "", "\r", "\n"])  # noqa: E731
    k = rng.randrange(14)
    if k == 0:
        end = rng.choice(["\r\n", "\n", "\r", ""])
        target = rng.choice(["/", "/a?b=1", "*", "", "x y"])
        return f"{word()}{ws()}{target}{ws()}HTTP/1.{rng.choice('0129')}{end}".encode()
    if k == 1:
        head = rng.choice([b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/1.1", b"HTTP/2 ", b"http/1.1 "])
        return head + b"200"
    if k == 2:
        eol1, eol2 = rng.choice(["\r\n", "\n"]), rng.choice(["\r\n", "\r", ""])
        return (f"*{digits(rng.randrange(0, 10))}{eol1}"
                f"${digits(rng.randrange(0, 13))}{eol2}PING\r\n").encode()
    if k == 3:
        ln = rng.choice([8, 16, 9999, 10000, 7, rng.randrange(1 << 16)])
        code = rng.choice([80877103, 80877104, 80877102, 196608, 196609])
        return ln.to_bytes(4, "big") + code.to_bytes(4, "big") + bytes(rng.randrange(8))
    if k == 4:
        body = rng.choice([b"SELECT 1", b"BEGIN", b"x"]) + b"\x00" * rng.randrange(2)
        t = rng.choice(b"QPRX")
        ln = len(body) + 4 + rng.choice([0, 0, 1, -1, 100])
        tail = bytes([rng.choice(b"BDSHQZ")]) if rng.random() < 0.7 else b""
        if t == 82:
            return b"R" + rng.choice([b"\x00\x00\x00\x08", b"\x00\x00\x00\x0c",
                                      b"\x00\x00\x00\x0a"]) + bytes(rng.randrange(2, 8))
        return bytes([t]) + max(ln, 0).to_bytes(4, "big") + body + tail
    if k == 5:
        text = rng.choice([b"SELECT 1", b"select now()", b"COMMIT", b"usex", b"SET a=1",
                           b"Show tables", b"CALL p()", b"SELECTION x", b"drop", b"", b" SELECT"])
        first = rng.choice([3, 22, 10, 1])
        if first == 10:
            text = rng.choice([b"10.11.6-MariaDB\x00", b"8.0.33\x00", b"x8\x00", b"5", b"\x00"])
        payload = bytes([first]) + text
        ln = len(payload) + rng.choice([0, 0, 1, -1])
        seq = rng.choice([0, 0, 1])
        return max(ln, 0).to_bytes(3, "little") + bytes([seq]) + payload
    if k == 6:
        hdr = bytearray(rng.randbytes(12))
        hdr[4:6] = rng.choice([b"\x00\x01", b"\x00\x02", b"\x00\x00"])
        hdr[2] = rng.choice([0x01, 0x81, 0x29, 0x11, 0x21, 0x79])
        body = rng.choice([b"\x03api\x04demo\x02zt\x00\x00\x01\x00\x01", b"\x00\x00\x01\x00\x01",
                           b"\x03api", b"\xc0\x0c\x00\x01\x00\x01", b""])
        msg = bytes(hdr) + body
        if rng.random() < 0.4:
            msg = (len(msg) + rng.choice([0, 0, 5])).to_bytes(2, "big") + msg
        return msg
    if k == 7:
        ln = rng.choice([0, 6, 12, 18, 60, 66, 7])
        return (ln.to_bytes(3, "big") + bytes([rng.choice([4, 1, 8]), rng.choice([0, 1, 2])])
                + rng.choice([b"\x00\x00\x00\x00", b"\x00\x00\x00\x01"]) + bytes(ln))
    if k == 8:
        return rng.choice([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n",
                           b"PRI * HTTP/1.1\r\n"]) + rng.randbytes(rng.randrange(4))
    if k == 9:
        return rng.choice([b"+OK\r\n", b"-ERR x\r\n", b":12\r\n", b"$5\r\n", b"*2\r\n", b"_\r\n",
                           b"#t\r\n", b"%1\r\n", b",1.5\r\n", b"(123\r\n", b"=5\r\n", b"+OK\n",
                           b"PING\r\n", b"ping\n", b"HELLO 3\r\n", b"hello x\r\n", b"AUTH pw\r\n",
                           b"auth \r\n", b"QUIT\r\n", b"INFO\r\n", b"PINGX\r\n", b"PIN"])
    if k == 10:
        return rng.choice([b"get k\r\n", b"gets a b c\n", b"set k 0 3600 5\r\nhello\r\n",
                           b"set k 0 x 5\r\n", b"cas k 1 2 3 4 noreply\r\n", b"delete k 0\r\n",
                           b"incr k 5\r\n", b"touch k -1\r\n", b"mg k v t\r\n", b"mn\r\n",
                           b"version\r\n", b"stats slabs\r\n", b"flush_all -1 noreply\r\n",
                           b"verbosity 1\r\n", b"gat 10 k1 k2\r\n", b"get\r\n", b"GET k\r\n",
                           b"get k", b"ms k 5 T10\r\n", b"x\r\n"])
    if k == 11:
        return rng.choice([b"VALUE k 0 5\r\nhello\r\nEND\r\n", b"VALUE k 0\r\n", b"STORED\r\n",
                           b"END\r\n", b"VERSION 1.6.21\r\n", b"STAT pid 1\r\n", b"HD\r\n",
                           b"VA 5 f\r\n", b"SERVER_ERROR out of memory\r\n", b"OK", b"NS \r\n",
                           b"CLIENT_ERROR bad\r\n", b"NOPE\r\n"])
    if k == 12:
        magic = rng.choice([0x80, 0x81, 0x82])
        op = rng.choice([0x00, 0x01, 0x0a, 0x0b, 0x09, 0x55])
        key = rng.choice([b"", b"k", b"key1"])
        extras = rng.choice([b"", bytes(4), bytes(8)])
        body = extras + key + rng.choice([b"", b"v"])
        hdr = (bytes([magic, op]) + len(key).to_bytes(2, "big") + bytes([len(extras), 0])
               + rng.choice([b"\x00\x00", b"\x00\x01", b"\x00\x81"])
               + (len(body) + rng.choice([0, 0, 1])).to_bytes(4, "big") + bytes(12))
        return hdr + body
    return rng.randbytes(rng.randrange(40))


def _damaged(rng: random.Random, data: bytes) -> bytes:
    k = rng.randrange(5)
    if k == 0 and data:
        return data[:rng.randrange(len(data))]
    if k == 1 and data:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if k == 2:
        return data + rng.randbytes(rng.randrange(8))
    if k == 3 and len(data) > 2:
        i = rng.randrange(len(data))
        return data[:i] + data[i + 1:]
    return data


def _inputs(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    golden = _golden_chunks()
    out = list(golden)
    for data in golden:
        out.extend(data[:i] for i in range(min(len(data), 40)))
    while len(out) < n + len(golden) * 41:
        base = _near_misses(rng) if rng.random() < 0.7 else rng.choice(golden)
        out.append(_damaged(rng, base) if rng.random() < 0.5 else base)
    return out


# -- tests ----------------------------------------------------------------------------------

def test_every_builtin_rule_kept_its_place(python_rules):
    compiled = _builtin_rules()
    for t in ("tcp", "udp"):
        assert [r.order for r in compiled[t]] == [r.order for r in python_rules[t]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_rule_answers_as_before(python_rules, seed):
    compiled = _builtin_rules()
    rng = random.Random(seed * 7919)
    for data in _inputs(seed, CASES):
        ports = (rng.choice(PORTS), rng.choice(PORTS))
        for t in ("tcp", "udp"):
            for old, new in zip(python_rules[t], compiled[t], strict=True):
                assert new.match(data, ports) == old.match(data, ports), (
                    t, old.order, data, ports)


@pytest.mark.parametrize("seed", [4, 5])
def test_registry_infers_as_before(python_rules, seed):
    rng = random.Random(seed)
    for data in _inputs(seed, CASES):
        lport, rport = rng.choice(PORTS), rng.choice(PORTS)
        for t in ("tcp", "udp", "sctp"):
            want = _python_infer(python_rules, data, lport, rport, t)
            assert registry.infer(data, rng.randrange(2), lport, rport, t) == want, (
                t, data, lport, rport)


def test_infer_takes_other_byte_types_and_a_matcher_is_callable():
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert registry.infer(bytearray(data), 0, 40000, 80, "tcp") == "http"
    assert registry.infer(memoryview(data), 0, 40000, 80, "tcp") == "http"
    assert _infer.HTTP1(data, (1, 2)) == "http" and _infer.HTTP1(data[:5], (1, 2)) is None
    assert "http/1" in repr(_infer.HTTP1)


def test_new_parser_builds_each_protocols_parser():
    for proto in registry.PROTOCOLS:
        p = registry.new_parser(proto, True, "tcp")
        assert type(p) is type(registry._SPECS[proto].new_parser(True, "tcp"))
        assert p.req_dir == 0
    assert registry.new_parser("dns", None, "udp").tcp is False
    with pytest.raises(KeyError):
        registry.new_parser("gopher", True)
