from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from naosd import protocol
from naosd.errors import InvalidRequest, ProtocolError
from naosd.values import Ext, check_values

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


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_the_length_is_checked_against_the_current_limit_before_the_body():
    decoder = protocol.FrameDecoder(max_frame=protocol.HELLO_MAX_FRAME)
    decoder.limit_note = " before the hello"
    with pytest.raises(ProtocolError, match=r"16777216-byte frame; the limit is 4096 before"):
        decoder.feed(struct.pack(">I", 16 << 20) + b"\x90" * 100)


def test_frames_come_out_one_by_one_so_the_limit_can_change_between_them():
    big = protocol.request(1, "m", {"blob": "x" * 10_000})
    decoder = protocol.FrameDecoder(max_frame=protocol.HELLO_MAX_FRAME)
    decoder.push(protocol.encode_frame(protocol.hello("client")) + protocol.encode_frame(big))
    assert decoder.next()["type"] == "hello"
    decoder.max_frame = protocol.DEFAULT_MAX_FRAME
    assert decoder.next() == big
    assert decoder.next() is None


@pytest.mark.parametrize(("body", "why"), [
    pytest.param(b"\xdd\x01\x00\x00\x00", "exceeds max_array_len", id="array-16M"),
    pytest.param(b"\xdf\x01\x00\x00\x00", "exceeds max_map_len", id="map-16M"),
    pytest.param(b"\x91" * 1100 + b"\xc0", "nested too deep to decode", id="depth-1100"),
])
def test_the_decoder_bounds_containers_before_building_them(body, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.decode_body(body)


def test_the_decoder_stops_once_a_frame_holds_too_many_values():
    body = msgpack.packb({"type": "request", "params": {"x": [[] for _ in range(200)]}})
    # 200 empty arrays, the array of them (1 + 200), params (1 + 2), the frame (1 + 4)
    assert protocol.decode_body(body, max_values=409)["params"]["x"] == [[]] * 200
    with pytest.raises(ProtocolError, match="more than 408 values in one frame"):
        protocol.decode_body(body, max_values=408)


def test_extension_values_decode_to_markers_not_objects():
    body = msgpack.packb({"type": "request", "a": msgpack.Timestamp(1, 0),
                          "b": msgpack.ExtType(5, b"x" * 1000)})
    message = protocol.decode_body(body)
    assert message["b"] == Ext(5)
    negative = b"\x82\xa4type\xa5event\xa1c\xd5\xfe\x00\x01"  # ext type -2 (reserved)
    assert protocol.decode_body(negative)["c"] == Ext(-2)


@pytest.mark.parametrize(("message", "error"), [
    pytest.param({"params": {"input": {"a": [0, 1, 2, b"\x00"]}}},
                 r"params.input.a\[3\]: binary values are not allowed", id="nested-binary"),
    pytest.param({"params": {"input": b"x"}, "other": b"y"},
                 "other: binary values are not allowed", id="binary-outside-params"),
    pytest.param({"params": {"when": msgpack.Timestamp(1, 0)}},
                 "params.when: msgpack timestamp values are not allowed", id="timestamp"),
    pytest.param({"params": {"x": [Ext(7)]}},
                 r"params.x\[0\]: msgpack extension type 7 values", id="ext"),
    pytest.param({"params": {"input": {1: "a"}}},
                 "params.input: map keys must be strings, got int 1", id="int-key"),
    pytest.param({"params": {"input": {b"k": "a"}}},
                 "params.input: map keys must be strings, got bytes", id="binary-key"),
    pytest.param({"params": {"odd key": {"x": float("nan")}}},
                 r"params\['odd key'\].x: NaN and infinite", id="nan"),
    pytest.param({"params": {"x": float("-inf")}}, "params.x: NaN and infinite", id="inf"),
    pytest.param({"params": {"input": nested(63)}},  # frame 1, params 2, lists 3..65
                 "nested deeper than 64 levels", id="depth-65"),
    pytest.param({"params": {"input": nested(1000)}},
                 "nested deeper than 64 levels", id="depth-1000"),
    pytest.param({5: 1}, "map keys must be strings, got int 5 at the top level", id="top-key"),
])
def test_values_json_cannot_hold_are_refused_by_path(message, error):
    with pytest.raises(InvalidRequest, match=error):
        check_values(message, binary_at="params")


@pytest.mark.parametrize("message", [
    pytest.param({"params": {"module": b"\x00asm", "input": "text"}}, id="binary-param"),
    pytest.param({"params": {"input": nested(62)}}, id="depth-64"),
    pytest.param({"params": {"x": [None, True, -(2**63), 2**64 - 1, 1.5, "s", {"k": []}]}},
                 id="every-json-kind"),
])
def test_json_values_and_binary_parameters_pass(message):
    check_values(message, binary_at="params")


def test_a_1000_level_input_is_decoded_then_refused_without_recursion_trouble():
    frame = protocol.encode_frame(protocol.request(1, "agent.run", {"input": nested(1000)}))
    [message] = protocol.FrameDecoder().feed(frame)
    with pytest.raises(InvalidRequest, match="deeper than 64"):
        check_values(message, binary_at="params")


def test_a_request_carries_its_timeout_only_when_given():
    assert "timeout" not in protocol.request(1, "m")
    assert protocol.request(1, "m", timeout=2.5)["timeout"] == 2.5
