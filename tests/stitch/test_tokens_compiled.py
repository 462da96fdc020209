"""The compiled stitcher's payload tokens (agent/stitch/_stitcher.pyx span_tokens) are
evidence.tokens' (the reference): the same id-like tokens of a span's operation and
request fields, on random text built from token characters, separators, common words
and non-ASCII characters."""

from __future__ import annotations

from agent.stitch._stitcher import span_tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.stitch import evidence
from proto.span import Span

PIECES = st.one_of(
    st.text(alphabet="abcXYZ019_-", min_size=0, max_size=14),
    st.sampled_from(sorted(evidence._COMMON) + ["Keep-Alive", "user0001a", "12345678",
                                                "--------", "a1b2c3d4e5", "ünïcode123"]),
    st.text(min_size=0, max_size=6),  # anything, separators and non-ASCII included
)
TEXT = st.lists(PIECES, max_size=8).map("".join)


def _span(op: str, attrs: dict) -> Span:
    return Span(operation=op, attributes=attrs)


@settings(max_examples=400, deadline=None)
@given(op=TEXT, path=TEXT, query=st.one_of(st.none(), TEXT), other=TEXT,
       n=st.integers(min_value=0, max_value=5))
def test_compiled_tokens_are_the_reference_tokens(op, path, query, other, n):
    attrs = {"url.path": path, "http.other": other, "rpc.method": n}
    if query is not None:
        attrs["url.query"] = query
    s = _span(op, attrs)
    assert span_tokens(s) == evidence.tokens(s)


def test_known_tokens():
    s = _span("GET /users/user0001a/cart?id=12345678", {"db.query.text": "x content-length1"})
    assert span_tokens(s) == evidence.tokens(s) == frozenset(
        {"user0001a", "cart", "id", "12345678", "content-length1"}) - {"cart", "id"}
    # a common word is no id, whatever its case; 7 characters are too few
    s = _span("Transfer-Encoding1 abc1234 transfer-encoding", {})
    assert span_tokens(s) == evidence.tokens(s) == frozenset({"Transfer-Encoding1"})


def test_trace_ids_are_w3c_ids_and_do_not_repeat():
    """The stitcher's trace ids (no getrandom call a trace): 32 lower-case hex digits,
    not all zeros, none repeated, and not the same sequence in a forked child."""
    import os

    from agent.stitch._stitcher import new_trace_id_compiled

    ids = [new_trace_id_compiled() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(t) == 32 and set(t) <= set("0123456789abcdef") and t != "0" * 32
               for t in ids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id, to the parent
        os.write(w, new_trace_id_compiled().encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    assert len(child) == 32 and child != new_trace_id_compiled()
