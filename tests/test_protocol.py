from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from naosd import protocol
from naosd.errors import ProtocolError

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) \
    | st.binary(max_size=20) | st.floats(allow_nan=False)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
messages = st.builds(lambda i, p: protocol.request(i, "m", {"p": p}),
                     st.integers(0, 2**31), values)


@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(1, 64), min_size=1))
def test_any_chunking_gives_the_same_messages(msgs, cuts):
    stream = b"".join(protocol.encode_frame(m) for m in msgs)
    decoder = protocol.FrameDecoder()
    out, pos, i = [], 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        out += decoder.feed(stream[pos:pos + size])
        pos += size
        i += 1
    assert out == msgs
    assert decoder.pending == 0


def test_oversized_length_is_refused_before_reading_the_body():
    decoder = protocol.FrameDecoder(max_frame=1024)
    with pytest.raises(ProtocolError, match="2048-byte frame"):
        decoder.feed(struct.pack(">I", 2048))


@pytest.mark.parametrize(("body", "why"), [
    pytest.param(b"\xc1", "not valid msgpack", id="garbage"),
    pytest.param(msgpack.packb([1, 2]), "must hold a map", id="list"),
    pytest.param(msgpack.packb({"type": "bogus"}), "unknown frame type", id="type"),
    pytest.param(msgpack.packb({"x": 1}), "unknown frame type", id="no-type"),
])
def test_bad_bodies_are_named(body, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_integers_outside_64_bits_cannot_be_encoded():
    with pytest.raises(ProtocolError, match="cannot encode"):
        protocol.encode_frame(protocol.reply(1, 2**70))


def test_encoder_enforces_the_frame_limit():
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.encode_frame(protocol.reply(1, "x" * 2000), max_frame=1024)


def test_truncated_frame_waits_for_more():
    frame = protocol.encode_frame(protocol.reply(7, "hello"))
    decoder = protocol.FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.feed(frame[-1:]) == [protocol.reply(7, "hello")]
