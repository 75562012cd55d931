"""The front protocol's request-head parser: bounded, strict, and enough to route."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_operator.transport.front import Refusal, render_response
from opamp_operator.transport.head import HeadError, find_head_end, parse_head

UPGRADE = (
    b"GET /v1/opamp?x=1 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:4320\r\n"
    b"Upgrade: WebSocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Authorization: Bearer abc\r\n"
    b"\r\n"
)


def test_complete_head_is_found_and_parsed() -> None:
    end = find_head_end(UPGRADE + b"\x81\x00", 16 * 1024)
    assert end == len(UPGRADE)
    head = parse_head(UPGRADE[:end])
    assert (head.method, head.target, head.path, head.version) == (
        "GET",
        "/v1/opamp?x=1",
        "/v1/opamp",
        "HTTP/1.1",
    )
    assert head.get("HOST") == "127.0.0.1:4320"
    assert head.tokens("connection") == {"keep-alive", "upgrade"}
    assert head.wants_websocket


def test_incomplete_head_needs_more_bytes() -> None:
    assert find_head_end(UPGRADE[:-2], 16 * 1024) is None


def test_head_longer_than_the_limit_is_431() -> None:
    huge = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 2000
    with pytest.raises(HeadError) as caught:
        find_head_end(huge, 1024)
    assert caught.value.status == 431
    assert caught.value.reason == "head_too_large"


def test_terminator_beyond_the_limit_does_not_count() -> None:
    head = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 1100 + b"\r\n\r\n"
    with pytest.raises(HeadError):
        find_head_end(head, 1024)


def test_post_is_not_a_websocket() -> None:
    head = parse_head(b"POST /v1/opamp HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
    assert not head.wants_websocket


def test_repeated_header_reads_as_ambiguous() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nAuthorization: a\r\nauthorization: b\r\n\r\n")
    assert head.get("authorization") is None
    assert head.values("Authorization") == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"GET /\r\n\r\n", 400, "bad_request_line"),
        (b"GET  / HTTP/1.1\r\n\r\n", 400, "bad_request_line"),
        (b"G(T / HTTP/1.1\r\n\r\n", 400, "bad_request_line"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "bad_http_version"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad_header"),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400, "bad_header"),
        (b"GET / HTTP/1.1\r\nBad Name: b\r\n\r\n", 400, "bad_header"),
    ],
)
def test_malformed_heads_are_refused(raw: bytes, status: int, reason: str) -> None:
    with pytest.raises(HeadError) as caught:
        parse_head(raw)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_bare_lf_line_ends_are_refused_not_waited_for() -> None:
    with pytest.raises(HeadError) as caught:
        find_head_end(b"GET / HTTP/1.1\nHost: x\n\n", 16 * 1024)
    assert caught.value.status == 400


@given(st.binary(max_size=600))
def test_any_bytes_either_parse_or_raise_head_error(data: bytes) -> None:
    try:
        end = find_head_end(data, 512)
        if end is not None:
            parse_head(data[:end])
    except HeadError as error:
        assert error.status in (400, 431, 505)


def test_refusal_renders_a_closing_response() -> None:
    raw = render_response(Refusal(401, "no token", (("WWW-Authenticate", "Bearer"),)))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 401 Unauthorized"
    assert b"Connection: close" in lines
    assert b"WWW-Authenticate: Bearer" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert body == b"no token\n"
