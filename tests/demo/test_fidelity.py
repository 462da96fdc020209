"""Fidelity measurement on synthetic traces: perfect, wrong parent, split, missing hops."""

from __future__ import annotations

from agent.demo.fidelity import REQUIRED_HOPS, group_traces, measure, span_hop, span_nonce
from proto.span import Endpoint, Span

NONCES = ["n" + f"{i:016x}" for i in (0xA1, 0xB2, 0xC3)]
ADDRS = {"client": "10.232.0.8", "gw": "10.232.0.3", "api": "10.232.0.4",
         "inventory": "10.232.0.5", "redis": "10.232.0.6", "postgres": "10.232.0.7",
         "dns": "10.232.0.2"}


def sp(parent: Span | None, pod: str, kind: str, proto: str, op: str, **attrs) -> Span:
    return Span(trace_id="t", parent_span_id=parent.span_id if parent else "", kind=kind,
                protocol=proto, operation=op, service=pod, attributes=attrs,
                local=Endpoint(ADDRS[pod], 0))


def dns(parent: Span, pod: str, name: str) -> list[Span]:
    c = sp(parent, pod, "client", "dns", "A", **{"dns.question.name": name})
    return [c, sp(c, "dns", "server", "dns", "A", **{"dns.question.name": name})]


def request(x: str) -> list[Span]:
    """One request's spans, as a perfect stitcher would link them."""
    root = sp(None, "client", "client", "http", f"GET /order/{x}", **{"url.path": f"/order/{x}"})
    gws = sp(root, "gw", "server", "http", "GET", **{"url.path": f"/order/{x}"})
    gwc = sp(gws, "gw", "client", "http", "GET", **{"url.path": f"/order/{x}"})
    api = sp(gwc, "api", "server", "http", "GET", **{"url.path": f"/order/{x}"})
    out = [root, gws, gwc, api, *dns(api, "api", "inventory.demo.zt"),
           *dns(api, "api", "postgres.demo.zt")]
    for q in (f"INSERT INTO orders (note, qty) VALUES ('{x}', $1)",
              f"SELECT count(*), sum(qty) FROM orders WHERE note = '{x}' AND qty > $1"):
        c = sp(api, "api", "client", "postgresql", q.split()[0], **{"db.query.text": q})
        out += [c, sp(c, "postgres", "server", "postgresql", q.split()[0],
                      **{"db.query.text": q})]
    ic = sp(api, "api", "client", "http", "GET", **{"url.path": f"/stock/{x}"})
    inv = sp(ic, "inventory", "server", "http", "GET", **{"url.path": f"/stock/{x}"})
    out += [ic, inv, *dns(inv, "inventory", "redis.demo.zt")]
    for cmd in ("GET", "SET"):
        c = sp(inv, "inventory", "client", "redis", cmd, **{"db.query.text": f"{cmd} stock:{x}"})
        out += [c, sp(c, "redis", "server", "redis", cmd,
                      **{"db.query.text": f"{cmd} stock:{x}"})]
    return out


def find(trace: list[Span], hop: str) -> Span:
    return next(s for s in trace if span_hop(s) == hop)


def test_perfect_traces() -> None:
    traces = [request(x) for x in NONCES]
    f = measure(NONCES, traces)
    assert f.precision == 1.0 and f.links_wrong == 0
    assert f.span_recall == 1.0 and f.end_to_end == 1.0
    assert f.complete_requests == 3 and f.split_requests == 0
    assert f.links_unverifiable == 3 * 6
    assert f.unverifiable_by_protocol == {"dns": 18}
    assert set(f.never_produced.values()) == {0}
    assert "precision: 100.00 %" in f.text()


def test_wrong_parent_lowers_precision() -> None:
    a, b, c = (request(x) for x in NONCES)
    # B's redis GET (client and server) linked under A's inventory server span.
    get_b = find(b, "inventory/client/redis")
    moved = [get_b, next(s for s in b if s.parent_span_id == get_b.span_id)]
    for s in moved:
        b.remove(s)
    get_b.parent_span_id = find(a, "inventory/server/http").span_id
    a += moved
    f = measure(NONCES, [a, b, c])
    assert f.links_wrong == 2
    assert f.precision is not None and f.precision < 1.0
    assert f.complete_requests == 3  # B still has its SET in its own trace
    assert f.span_recall is not None and f.span_recall < 1.0
    assert NONCES[1] in f.wrong_examples[0] and NONCES[0] in f.wrong_examples[0]
    assert "2 wrong" in f.text()


def test_wrong_parent_high_up_makes_every_descendant_wrong() -> None:
    a, b = request(NONCES[0]), request(NONCES[1])
    api_b = find(b, "api/server/http")
    api_b.parent_span_id = find(a, "gw/client/http").span_id
    sub = [s for s in b if s not in (b[0], b[1], b[2])]
    f = measure(NONCES[:2], [a + sub, b[:3]])
    nonce_links = 11  # api server, 4 pg, 2 inventory http, 4 redis
    assert f.links_wrong == nonce_links
    assert f.complete_requests == 1
    assert f.never_produced["api/server/http"] == 0
    assert f.missing_from_trace["api/server/http"] == 1


def test_split_trace_lowers_recall_not_precision() -> None:
    a, b, c = (request(x) for x in NONCES)
    inv = find(a, "inventory/server/http")
    inv.parent_span_id = ""  # the client -> server link was missed
    ids, changed = {inv.span_id}, True
    while changed:
        changed = False
        for s in a:
            if s.parent_span_id in ids and s.span_id not in ids:
                ids.add(s.span_id)
                changed = True
    part = [s for s in a if s.span_id in ids]
    rest = [s for s in a if s.span_id not in ids]
    f = measure(NONCES, [rest, part, b, c])
    assert f.precision == 1.0
    assert f.split_requests == 1
    assert f.span_recall is not None and f.span_recall < 1.0
    assert f.end_to_end is not None and abs(f.end_to_end - 2 / 3) < 1e-9
    assert f.missing_from_trace["inventory/server/http"] == 1


def test_never_produced_and_failed_requests() -> None:
    a, b, c = (request(x) for x in NONCES)
    a = [s for s in a if span_hop(s) != "redis/server/redis"]
    truth = [(NONCES[0], 1, 2, 200), (NONCES[1], 1, 2, 200), (NONCES[2], 1, 2, 502)]
    f = measure(truth, [a, b])
    assert f.failed_requests == 1
    assert f.never_produced["redis/server/redis"] == 1
    assert f.complete_requests == 1 and f.end_to_end == 0.5
    assert f.requests_without_spans == 0


def test_pod_index_by_netns_and_address() -> None:
    t = request(NONCES[0])
    for s in t:
        s.service = ""
    index = {ADDRS[p]: p for p in ADDRS}
    index[4026530000] = "gw"
    t[1].netns = 4026530000
    t[1].local.addr = "192.0.2.1"
    assert span_hop(t[1], index) == "gw/server/http"
    f = measure([NONCES[0]], [t], pod_index=index)
    assert f.complete_requests == 1
    assert measure([NONCES[0]], [t]).complete_requests == 0  # no pods known


def test_nonce_extraction_and_ambiguity() -> None:
    x, y = NONCES[:2]
    assert span_nonce(Span(attributes={"db.query.text": f"GET stock:{x}"})) == x
    assert span_nonce(Span(operation=f"GET /order/{x}")) == x
    assert span_nonce(Span(attributes={"dns.question.name": "redis.demo.zt"})) is None
    assert span_nonce(Span(attributes={"a": x, "b": y})) is False
    t = request(x)
    t[3].attributes["x-extra"] = y  # api server span carries two nonces
    f = measure([x], [t])
    assert f.ambiguous_spans == 1 and f.links_wrong == 0


def test_parent_cycle_terminates() -> None:
    t = request(NONCES[0])
    t[0].parent_span_id = t[3].span_id  # root -> api server -> ... -> root
    f = measure([NONCES[0]], [t])
    assert f.links_wrong == 0
    assert set(REQUIRED_HOPS) >= set(h for h, n in f.never_produced.items() if n)


def test_group_traces_by_trace_id() -> None:
    a, b = request(NONCES[0]), request(NONCES[1])
    for s in b:
        s.trace_id = "other"
    loose = Span(trace_id="")
    traces = group_traces([*a, loose, *b])
    assert [len(t) for t in traces] == [len(a), len(b)]
    assert measure(NONCES[:2], traces).complete_requests == 2



def test_span_under_a_foreign_span_in_its_own_trace_is_wrong() -> None:
    a, b = request(NONCES[0]), request(NONCES[1])
    inv_b = find(b, "inventory/server/http")
    b.remove(inv_b)
    inv_b.parent_span_id = find(a, "api/client/http").span_id  # wrong: B under A
    get_a = find(a, "inventory/client/redis")
    get_a.parent_span_id = inv_b.span_id  # A's own trace, but under B's span: wrong too
    a.append(inv_b)
    f = measure(NONCES[:2], [a, b])
    assert f.links_wrong == 2
    assert any(f"({NONCES[0]})" in w and f"nearest nonce {NONCES[1]}" in w
               for w in f.wrong_examples)


def test_go_variant_requires_its_further_hops() -> None:
    from agent.demo.fidelity import GO_HOPS
    from agent.demo.topology import DemoTopology

    # a property of the variant: nothing is started
    assert DemoTopology(variant="go").required_hops == REQUIRED_HOPS + GO_HOPS
    assert DemoTopology(variant="node").required_hops == REQUIRED_HOPS
    assert "pricing/server/http" in GO_HOPS and "inventory/client/postgresql" in GO_HOPS
