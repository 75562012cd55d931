"""The OpAMP WebSocket header: a varint 0 before every protobuf message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_operator.opamp.errors import FrameError, ProtocolError
from opamp_operator.opamp.frames import (
    MAX_VARINT_BYTES,
    decode_varint,
    decode_ws_frame,
    encode_varint,
    encode_ws_frame,
)

UINT64_MAX = (1 << 64) - 1


def test_encode_prefixes_a_single_zero_byte() -> None:
    assert encode_ws_frame(b"\x0a\x10abc") == b"\x00\x0a\x10abc"


def test_header_only_frame_is_an_empty_message() -> None:
    assert decode_ws_frame(b"\x00") == b""


@given(st.binary(max_size=512))
def test_round_trip(payload: bytes) -> None:
    assert decode_ws_frame(encode_ws_frame(payload)) == payload


@pytest.mark.parametrize(
    "header",
    [
        b"\x80\x00",  # zero, non-minimal but valid varint
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00",  # zero spread over ten bytes
    ],
)
def test_non_minimal_zero_header_is_accepted(header: bytes) -> None:
    assert decode_ws_frame(header + b"payload") == b"payload"


def test_empty_frame_is_rejected() -> None:
    with pytest.raises(FrameError) as info:
        decode_ws_frame(b"")
    assert info.value.reason == "empty_frame"
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("frame", [b"\x80", b"\xff\xff", b"\x80" * 9])
def test_truncated_header_is_rejected(frame: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode_ws_frame(frame)
    assert info.value.reason == "truncated_header"


@pytest.mark.parametrize(
    "frame",
    [
        b"\x80" * 10 + b"\x00",  # eleven bytes
        b"\xff" * 16 + b"\x01",
        b"\xff" * 9 + b"\x02",  # ten bytes but the value needs 65 bits
    ],
)
def test_overlong_header_is_rejected(frame: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode_ws_frame(frame)
    assert info.value.reason == "overlong_header"


@pytest.mark.parametrize("value", [1, 2, 127, 128, 300, UINT64_MAX])
def test_unknown_header_value_is_rejected(value: int) -> None:
    with pytest.raises(FrameError, match=f"unknown OpAMP header value {value}") as info:
        decode_ws_frame(encode_varint(value) + b"\x0a\x00")
    assert info.value.reason == "unknown_header"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (UINT64_MAX, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint_known_encodings(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=UINT64_MAX), st.binary(max_size=8))
def test_varint_round_trip_stops_at_its_end(value: int, tail: bytes) -> None:
    encoded = encode_varint(value)
    assert len(encoded) <= MAX_VARINT_BYTES
    assert decode_varint(encoded + tail) == (value, len(encoded))


def test_varint_decodes_at_an_offset() -> None:
    assert decode_varint(b"junk\xac\x02rest", 4) == (300, 6)


@pytest.mark.parametrize("value", [-1, UINT64_MAX + 1])
def test_varint_encode_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="uint64"):
        encode_varint(value)


@given(st.binary(min_size=1, max_size=16))
def test_decode_never_raises_anything_but_frame_error(frame: bytes) -> None:
    try:
        payload = decode_ws_frame(frame)
    except FrameError:
        return
    assert frame.endswith(payload)
    assert len(payload) < len(frame)
