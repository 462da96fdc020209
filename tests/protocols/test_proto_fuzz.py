"""Fuzz run with a fixed number of examples per protocol: protocol-shaped messages cut
at random points, truncated to a capture prefix, with lost chunks and retransmitted
bytes.  Parsers must never raise, must keep bounded buffers and must return
well-formed records.  scripts/asan-tests.sh runs this against an AddressSanitizer
build of the compiled parsers with ZT_FUZZ_EXAMPLES raised."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols.base import MAX_BUFFER, MAX_PENDING, Chunk, Message, Record
from agent.protocols.registry import PROTOCOLS, new_parser

EXAMPLES = int(os.environ.get("ZT_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_TOKENS = [b"GET", b"POST", b"HEAD", b"CONNECT", b"HTTP/1.1", b"HTTP/1.0", b" ", b"\r\n",
           b"\r\n\r\n", b":", b";", b",", b"0", b"5", b"ff", b"-1", b"200", b"204", b"101",
           b"100", b"304", b"999", b"Host", b"Content-Length", b"Transfer-Encoding",
           b"chunked", b"Expect", b"100-continue", b"traceparent", b"Cookie", b"Set-Cookie",
           b"Authorization", b"/", b"?", b"\x00", b"\xff", b"\t", b"*1", b"$3", b"+OK",
           b"Q\x00\x00\x00", b"get k", b"VALUE k 0 5", b"\x80", b"\x81"]
_HEADERS = [b"Host: a:8080", b"host:b", b"Content-Length: 5", b"content-length: 5, 5",
            b"Content-Length: 99999999999999999999999", b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked", b"Expect: 100-continue",
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"tracestate: a=b", b"X-Request-ID: r1", b"sw8: x", b"Cookie: c=1",
            b"Authorization: Bearer t", b"Set-Cookie: s=1", b"User-Agent: fuzz",
            b"Connection: close"]


@st.composite
def http_message(draw) -> bytes:
    """A request or response head with a body that may not match its framing."""
    if draw(st.booleans()):
        line = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b"PURGE", b"X"]))
        line += b" " + draw(st.sampled_from([b"/", b"/a?b=c", b"/a?", b"*", b"h:443"]))
        line += b" " + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"]))
    else:
        line = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.x"]))
        line += b" " + draw(st.sampled_from([b"100", b"101", b"200", b"204", b"304", b"404",
                                             b"500", b"999", b"20"])) + b" X"
    heads = draw(st.lists(st.one_of(st.sampled_from(_HEADERS),
                                    st.binary(max_size=30)), max_size=6))
    body = draw(st.one_of(st.just(b""), st.sampled_from([b"hello", b"5\r\nhello\r\n0\r\n\r\n",
                                                         b"0\r\n\r\n", b"zz\r\n"]),
                          st.binary(max_size=40)))
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in heads) + b"\r\n" + body


def _chunks(draw, stream: list[tuple[int, bytes]]) -> list[Chunk]:
    """Cut, truncate, drop and repeat pieces of a two-way stream into chunks."""
    offs = [0, 0]
    out = []
    for i, (d, data) in enumerate(stream):
        cut = draw(st.integers(1, 64))
        for j in range(0, max(len(data), 1), cut):
            piece = data[j:j + cut]
            fate = draw(st.sampled_from(["keep"] * 6 + ["prefix", "drop", "back"]))
            if fate == "drop":
                offs[d] += len(piece)
                continue
            if fate == "back" and offs[d] >= 3:
                offs[d] -= 3  # overlapping (retransmitted) bytes
            kept = piece[:draw(st.integers(0, len(piece)))] if fate == "prefix" else piece
            out.append(Chunk(d, kept, len(piece), offs[d], 1000 + i, 7 + d,
                             None if i % 3 == 0 else offs[d] + 10))
            offs[d] += len(piece)
    return out


def _check(p, recs: list) -> None:
    assert isinstance(recs, list)
    for s in p.streams:
        assert len(s.buf) <= MAX_BUFFER
    assert len(getattr(p, "pending", ())) <= MAX_PENDING
    for r in recs:
        assert isinstance(r, Record)
        assert r.request is not None or r.response is not None
        for m in (r.request, r.response):
            if m is not None:
                assert isinstance(m, Message) and m.offset >= 0
        assert isinstance(r.attributes, dict) and isinstance(r.trace_headers, dict)


@pytest.mark.parametrize("proto", PROTOCOLS)
@SETTINGS
@given(side=st.sampled_from([True, False, None]), data=st.data())
def test_shaped_streams_cut_and_holed(proto, side, data):
    parts = st.one_of(http_message(), st.lists(st.sampled_from(_TOKENS), max_size=12)
                      .map(b"".join), st.binary(max_size=80))
    stream = data.draw(st.lists(st.tuples(st.integers(0, 1), parts), max_size=10))
    p = new_parser(proto, side)
    for c in _chunks(data.draw, stream):
        _check(p, p.feed(c))
    _check(p, p.flush("closed"))


def test_asan_run_tests_the_asan_build():
    """Under scripts/asan-tests.sh the compiled modules imported are its ASan build."""
    tree = os.environ.get("ZT_ASAN_TREE")
    if not tree:
        pytest.skip("only under scripts/asan-tests.sh")
    from agent.protocols import _http1

    assert os.path.realpath(_http1.__file__).startswith(os.path.realpath(tree) + "/")
