"""Golden captures: load them, replay them through a parser, compare records.

A capture file `golden/<proto>/<name>.json` holds the connections a real client made
to a real server through `relay.py`; `<name>.expected.json` the records the parser
must produce from the client's point of view.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from agent.protocols.base import Chunk, Record
from agent.protocols.registry import new_parser

GOLDEN = Path(__file__).parent / "golden"


def save_capture(path: Path, protocol: str, transport: str, note: str,
                 connections: list[list[tuple[int, int, bytes]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "protocol": protocol,
        "transport": transport,
        "note": note,
        "connections": [
            [[d, ts, base64.b64encode(data).decode()] for d, ts, data in conn]
            for conn in connections if conn
        ],
    }
    path.write_text(json.dumps(doc, indent=0) + "\n")


def load_capture(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc["connections"] = [
        [(d, ts, base64.b64decode(b)) for d, ts, b in conn] for conn in doc["connections"]
    ]
    return doc


def chunks(conn: list[tuple[int, int, bytes]], capture: int | None = None,
           server_side: bool = False, t0: int = 1_700_000_000_000_000_000,
           split: int | None = None) -> list[Chunk]:
    """Chunks of one recorded connection.

    `capture` keeps only that many bytes per chunk (as the probes do), `server_side`
    flips directions to the server's point of view, `split` cuts every recv into pieces
    of at most that size.
    """
    offs = [0, 0]
    seqs = [1000, 50000]
    out = []
    for d, ts, data in conn:
        if server_side:
            d = 1 - d
        pieces = [data] if not split else [data[i:i + split] for i in range(0, len(data), split)]
        for piece in pieces:
            kept = piece if capture is None else piece[:capture]
            out.append(Chunk(d, kept, len(piece), offs[d], t0 + ts, 100 + d, seqs[d]))
            offs[d] += len(piece)
            seqs[d] = (seqs[d] + len(piece)) % (1 << 32)
    return out


def run(protocol: str, conn: list, client_side: bool | None = True, transport: str = "tcp",
        **kw) -> list[Record]:
    p = new_parser(protocol, client_side, transport) if protocol == "dns" else \
        new_parser(protocol, client_side)
    out: list[Record] = []
    server_side = client_side is False
    for c in chunks(conn, server_side=server_side, **kw):
        out.extend(p.feed(c))
    out.extend(p.flush("closed"))
    return out


def summary(r: Record) -> dict:
    """The stable part of a record, for golden comparison."""
    return {
        "protocol": r.protocol,
        "operation": r.operation,
        "status": r.status,
        "status_code": r.status_code,
        "error": r.error,
        "attributes": r.attributes,
        "trace_headers": r.trace_headers,
        "incomplete": r.incomplete,
        "request": [r.request.offset, r.request.size] if r.request else None,
        "response": [r.response.offset, r.response.size] if r.response else None,
    }


def replay_file(path: Path, **kw) -> list[dict]:
    doc = load_capture(path)
    recs = []
    for conn in doc["connections"]:
        for r in run(doc["protocol"], conn, transport=doc["transport"], **kw):
            recs.append(summary(r))
    return recs


def expected_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".json", ".expected.json"))


def captures(protocol: str | None = None) -> list[Path]:
    pats = [GOLDEN / protocol] if protocol else sorted(p for p in GOLDEN.iterdir() if p.is_dir())
    files = []
    for d in pats:
        files += sorted(p for p in d.glob("*.json") if not p.name.endswith(".expected.json"))
    return files
