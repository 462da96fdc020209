"""The compiled HPACK decoder (agent/protocols/_http2.pyx) against RFC 7541 Appendix C
(C.2 literals, C.3/C.4 requests without and with Huffman coding, C.5/C.6 responses with
evictions from a 256-byte table), against the `hpack` package's Huffman decoder on
random strings, and on blocks that must not decode."""

from __future__ import annotations

import random

import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman

from agent.protocols.http2 import UNKNOWN, HpackDecoder, huffman_decode

_DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
_DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
_LOC = b"https://www.example.com"
_COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
_AUTH = (b":authority", b"www.example.com")
_REQ1 = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), _AUTH]
_REQ2 = _REQ1 + [(b"cache-control", b"no-cache")]
_REQ3 = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"), _AUTH,
         (b"custom-key", b"custom-value")]
_RESP1 = [(b":status", b"302"), (b"cache-control", b"private"), (b"date", _DATE1),
          (b"location", _LOC)]
_RESP2 = [(b":status", b"307")] + _RESP1[1:]
_RESP3 = [(b":status", b"200"), (b"cache-control", b"private"), (b"date", _DATE2),
          (b"location", _LOC), (b"content-encoding", b"gzip"), (b"set-cookie", _COOKIE)]
_T_REQ = [[_AUTH], [(b"cache-control", b"no-cache"), _AUTH],
          [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), _AUTH]]
_T_RESP = [[(b"location", _LOC), (b"date", _DATE1), (b"cache-control", b"private"),
            (b":status", b"302")],
           [(b":status", b"307"), (b"location", _LOC), (b"date", _DATE1),
            (b"cache-control", b"private")],
           [(b"set-cookie", _COOKIE), (b"content-encoding", b"gzip"), (b"date", _DATE2)]]

# (section, table size, [(block hex, fields, dynamic table newest first, table size)])
APPENDIX_C = [
    ("C.2.1", 4096, [("400a637573746f6d2d6b65790d637573746f6d2d686561646572",
                      [(b"custom-key", b"custom-header")],
                      [(b"custom-key", b"custom-header")], 55)]),
    ("C.2.2", 4096, [("040c2f73616d706c652f70617468", [(b":path", b"/sample/path")], [], 0)]),
    ("C.2.3", 4096, [("100870617373776f726406736563726574", [(b"password", b"secret")],
                      [], 0)]),
    ("C.2.4", 4096, [("82", [(b":method", b"GET")], [], 0)]),
    ("C.3", 4096, [
        ("828684410f7777772e6578616d706c652e636f6d", _REQ1, _T_REQ[0], 57),
        ("828684be58086e6f2d6361636865", _REQ2, _T_REQ[1], 110),
        ("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565", _REQ3, _T_REQ[2], 164),
    ]),
    ("C.4", 4096, [
        ("828684418cf1e3c2e5f23a6ba0ab90f4ff", _REQ1, _T_REQ[0], 57),
        ("828684be5886a8eb10649cbf", _REQ2, _T_REQ[1], 110),
        ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf", _REQ3, _T_REQ[2], 164),
    ]),
    ("C.5", 256, [
        ("4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a32"
         "3120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d", _RESP1, _T_RESP[0],
         222),
        ("4803333037c1c0bf", _RESP2, _T_RESP[1], 222),
        ("88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970"
         "7738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d61"
         "67653d333630303b2076657273696f6e3d31", _RESP3, _T_RESP[2], 215),
    ]),
    ("C.6", 256, [
        ("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad"
         "171863c78f0b97c8e9ae82ae43d3", _RESP1, _T_RESP[0], 222),
        ("4883640effc1c0bf", _RESP2, _T_RESP[1], 222),
        ("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e"
         "6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
         _RESP3, _T_RESP[2], 215),
    ]),
]


@pytest.mark.parametrize("section,table_size,blocks", APPENDIX_C, ids=[c[0] for c in APPENDIX_C])
def test_rfc7541_appendix_c(section, table_size, blocks):
    dec = HpackDecoder()
    dec.max_table_size = table_size
    for hexblock, fields, table, size in blocks:
        assert dec.decode(bytes.fromhex(hexblock)) == fields
        assert dec.table == table
        assert dec.size == size
        assert dec.misses == 0


def test_huffman_matches_the_hpack_package_on_random_strings():
    rng = random.Random(7541)
    enc = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    for _ in range(3000):
        if rng.random() < 0.5:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            data = enc.encode(raw)
            if data and rng.random() < 0.3:  # damage: a flipped bit, or a cut
                i = rng.randrange(len(data))
                data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:] \
                    if rng.random() < 0.5 else data[:i]
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
        try:
            want = decode_huffman(data)
        except HPACKDecodingError:
            want = None
        try:
            got = huffman_decode(data)
        except ValueError:
            got = None
        assert got == want, data.hex()
    assert huffman_decode(enc.encode(bytes(range(256)))) == bytes(range(256))


@pytest.mark.parametrize("block", [
    "ff80808080808001",  # index with more than five continuation bytes
    "0f",  # literal name index that runs past the block
    "400a6375",  # name shorter than its length says
    "4001",  # no value after the name
    "00",  # literal with a literal name, no length
    "82" + "3f7e",  # table size update after a field
    "3fe1ff7f",  # table size update past the 1 MiB accepted
    "4081ff0161",  # Huffman name that is EOS padding only (8 bits)
    "0083ffffff0161",  # Huffman name holding EOS
])
def test_blocks_that_do_not_decode(block):
    with pytest.raises(ValueError):
        HpackDecoder().decode(bytes.fromhex(block))


def test_unknown_dynamic_references_are_placeholders_counted_as_misses():
    dec = HpackDecoder()
    # indexed 62 (unknown), index 0, literal with indexed name 70 (unknown), then :path
    fields = dec.decode(bytes.fromhex("be80" + "7f0701" + "61" + "84"))
    assert fields == [(UNKNOWN, b""), (UNKNOWN, b""), (UNKNOWN, b"a"), (b":path", b"/")]
    assert dec.misses == 3
    # The placeholder entered the table like the real entry would have: later blocks
    # keep their indexes.
    assert dec.table == [(UNKNOWN, b"a")] and dec.size == 32 + len(UNKNOWN) + 1


def test_size_update_evicts_and_oversized_entry_empties_the_table():
    dec = HpackDecoder()
    dec.decode(bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"))
    assert dec.size == 55
    dec.decode(bytes.fromhex("3f18"))  # size update to 55: still fits
    assert dec.size == 55 and dec.max_table_size == 55
    dec.decode(bytes.fromhex("3f17"))  # 54: evicted
    assert dec.table == [] and dec.size == 0
    dec.decode(bytes.fromhex("3f18"))
    big = b"x" * 60
    dec.decode(bytes([0x40, 1]) + b"k" + bytes([len(big)]) + big)  # 32 + 61 > 55
    assert dec.table == []
