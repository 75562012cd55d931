"""Our RFC 6455 server side, sans I/O: the upgrade, frames in (every rule), frames out."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

from opamp_operator.transport import rfc6455 as ws
from opamp_operator.transport.head import parse_head

MAX = 1000


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """What a client sends: masked; written out by hand, so that it may break the rules."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def unmasked(opcode: int, payload: bytes) -> bytes:
    return Frame(Opcode(opcode), payload).serialize(mask=False, extensions=[])


def events(data: bytes, max_size: int = MAX) -> list[ws.Event]:
    reader = ws.Reader(max_size)
    reader.feed(data)
    found = []
    while (event := reader.next_event()) is not None:
        found.append(event)
    return found


def failure(data: bytes, max_size: int = MAX) -> ws.Failure:
    with pytest.raises(ws.Failure) as raised:
        events(data, max_size)
    return raised.value


# -- the upgrade --------------------------------------------------------------------------


def upgrade(*extra: str, version: str = "HTTP/1.1", drop: str = "") -> str:
    headers = {
        "Host": "x",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    lines = [f"{k}: {v}" for k, v in headers.items() if k != drop] + list(extra)
    return f"GET /v1/opamp {version}\r\n" + "\r\n".join(lines) + "\r\n\r\n"


def test_accept_key_is_the_rfc_example() -> None:
    head = parse_head(upgrade().encode())
    assert ws.check_upgrade(head) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # section 1.3


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (upgrade(version="HTTP/1.0"), 505),
        (upgrade(drop="Connection"), 426),
        (upgrade("Upgrade: h2c", drop="Upgrade"), 426),
        (upgrade(drop="Sec-WebSocket-Key"), 400),
        (upgrade("Sec-WebSocket-Key: abc"), 400),  # repeated
        (upgrade(drop="Sec-WebSocket-Version"), 400),
        (upgrade("Sec-WebSocket-Version: 8", drop="Sec-WebSocket-Version"), 400),
    ],
)
def test_bad_upgrades_are_refused_as_websockets_refuses_them(head: str, status: int) -> None:
    with pytest.raises(ws.BadUpgrade) as raised:
        ws.check_upgrade(parse_head(head.encode()))
    assert raised.value.status == status


def test_a_key_that_is_not_16_bytes_of_base64_is_400() -> None:
    key = base64.b64encode(b"short").decode()
    head = upgrade(f"Sec-WebSocket-Key: {key}", drop="Sec-WebSocket-Key")
    with pytest.raises(ws.BadUpgrade):
        ws.check_upgrade(parse_head(head.encode()))


def test_the_101_offers_no_extension_and_no_subprotocol() -> None:
    response = ws.accept_response("abc").decode()
    assert response.startswith("HTTP/1.1 101 ")
    assert "Extensions" not in response and "Protocol:" not in response


# -- frames in ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_7_16_and_64_bit_lengths(size: int) -> None:
    payload = os.urandom(size)
    assert events(client_frame(2, payload), max_size=1 << 20) == [(ws.BINARY, payload)]


def test_unmasked_client_frames_are_1002() -> None:
    assert failure(unmasked(2, b"x")).code == ws.PROTOCOL_ERROR


def test_rsv_bits_without_an_extension_are_1002() -> None:
    assert failure(client_frame(2, b"x", rsv1=True)).code == ws.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [3, 7, 0xB, 0xF])
def test_reserved_opcodes_are_1002(opcode: int) -> None:
    frame = bytearray(client_frame(2, b"x"))
    frame[0] = 0x80 | opcode
    assert failure(bytes(frame)).code == ws.PROTOCOL_ERROR


def test_a_frame_over_the_cap_is_1009_before_its_payload_arrives() -> None:
    head = client_frame(2, b"x" * (MAX + 1))[:8]  # length and mask only
    assert failure(head).code == ws.MESSAGE_TOO_BIG


def test_a_fragmented_message_over_the_cap_is_1009() -> None:
    data = client_frame(2, b"x" * 600, fin=False) + client_frame(0, b"y" * 600)
    assert failure(data).code == ws.MESSAGE_TOO_BIG


def test_a_64_bit_length_with_the_top_bit_set_is_1002() -> None:
    data = bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + b"mask"
    assert failure(data, max_size=1 << 64).code == ws.PROTOCOL_ERROR


def test_fragments_are_joined_with_control_frames_between_them() -> None:
    data = (
        client_frame(2, b"ab", fin=False)
        + client_frame(ws.PING, b"p")
        + client_frame(0, b"cd", fin=False)
        + client_frame(0, b"ef")
    )
    assert events(data) == [(ws.PING, b"p"), (ws.BINARY, b"abcdef")]


def test_a_continuation_without_a_message_is_1002() -> None:
    assert failure(client_frame(0, b"x")).code == ws.PROTOCOL_ERROR


def test_a_new_message_inside_a_fragmented_one_is_1002() -> None:
    data = client_frame(2, b"a", fin=False) + client_frame(2, b"b")
    assert failure(data).code == ws.PROTOCOL_ERROR


def test_control_frames_over_125_bytes_are_1002() -> None:
    frame = bytes((0x89, 0x80 | 126)) + (126).to_bytes(2, "big") + b"mask" + b"x" * 126
    assert failure(frame).code == ws.PROTOCOL_ERROR


def test_fragmented_control_frames_are_1002() -> None:
    assert failure(client_frame(ws.PING, b"x", fin=False)).code == ws.PROTOCOL_ERROR


def test_text_is_delivered_as_text_when_utf8_else_1007() -> None:
    assert events(client_frame(1, "hé".encode())) == [(ws.TEXT, "hé".encode())]
    assert failure(client_frame(1, b"\xff")).code == ws.INVALID_DATA
    # A character split across fragments is fine.
    split = client_frame(1, b"h\xc3", fin=False) + client_frame(0, b"\xa9")
    assert events(split) == [(ws.TEXT, "hé".encode())]


# -- close frames ---------------------------------------------------------------------------


def test_close_payloads() -> None:
    assert ws.parse_close(b"") == (ws.NO_STATUS, "")
    assert ws.parse_close(Close(1000, "bye").serialize()) == (1000, "bye")
    assert ws.parse_close(Close(4321, "").serialize()) == (4321, "")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_invalid_close_codes_are_1002(code: int) -> None:
    with pytest.raises(ws.Failure) as raised:
        ws.parse_close(code.to_bytes(2, "big"))
    assert raised.value.code == ws.PROTOCOL_ERROR


def test_a_one_byte_close_payload_is_1002() -> None:
    with pytest.raises(ws.Failure) as raised:
        ws.parse_close(b"\x03")
    assert raised.value.code == ws.PROTOCOL_ERROR


def test_a_close_reason_that_is_not_utf8_is_1007() -> None:
    with pytest.raises(ws.Failure) as raised:
        ws.parse_close(b"\x03\xe8\xff")
    assert raised.value.code == ws.INVALID_DATA


# -- frames out -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_encoded_frames_parse_in_websockets(size: int) -> None:
    from websockets.frames import Frame as WsFrame
    from websockets.streams import StreamReader

    payload = os.urandom(size)
    stream = StreamReader()
    stream.feed_data(ws.encode_frame(ws.BINARY, payload))
    parser = WsFrame.parse(stream.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.BINARY, payload, True)


def test_a_close_reason_is_cut_at_a_character_to_fit() -> None:
    frame = ws.encode_close(1001, "é" * 100)
    assert len(frame) <= 2 + 125
    assert ws.parse_close(frame[2:])[1] == "é" * 61


# -- any split of a byte stream -----------------------------------------------------------------

_MESSAGES = st.lists(
    st.tuples(st.sampled_from([ws.BINARY, ws.PING, ws.PONG]), st.binary(max_size=300)),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(_MESSAGES, st.data())
def test_any_split_of_the_stream_gives_the_same_events(
    messages: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = b""
    expected = []
    for opcode, drawn in messages:
        payload = drawn if opcode == ws.BINARY else drawn[:125]
        fragments = data.draw(st.integers(1, 3)) if opcode == ws.BINARY and payload else 1
        step = -(-len(payload) // fragments) if payload else 0
        parts = [payload[i : i + step] for i in range(0, len(payload), step)] if step else [b""]
        for number, part in enumerate(parts):
            first = number == 0
            stream += client_frame(opcode if first else 0, part, fin=number == len(parts) - 1)
        expected.append((opcode, payload))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = ws.Reader(MAX)
    found = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.feed(stream[start:end])
        while (event := reader.next_event()) is not None:
            found.append(event)
    assert found == expected
    assert reader.buffered == 0
