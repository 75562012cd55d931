"""The HTTP/1.1 request reader and response renderer (transport/http11.py): pure."""

from __future__ import annotations

import pytest

from opamp_operator.transport.head import RequestHead
from opamp_operator.transport.http11 import (
    HttpError,
    RequestReader,
    expects_continue,
    render_response,
    wants_close,
)

HEAD = b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\n"


def events(reader: RequestReader, *parts: bytes) -> list[RequestHead | bytes]:
    """Feed `parts` one by one; every event that came out."""
    out: list[RequestHead | bytes] = []
    for part in parts:
        reader.feed(part)
        while (event := reader.next_event()) is not None:
            out.append(event)
    return out


def reader(max_body: int = 100) -> RequestReader:
    return RequestReader(max_head_bytes=1024, max_body_bytes=max_body)


def test_content_length_body_split_across_reads() -> None:
    got = events(reader(), HEAD + b"Content-Length: 5\r\n\r\nab", b"c", b"de")
    assert isinstance(got[0], RequestHead) and got[0].method == "POST"
    assert got[1:] == [b"abcde"]


def test_pipelined_requests_come_out_in_order() -> None:
    one = HEAD + b"Content-Length: 1\r\n\r\nA"
    two = HEAD + b"Content-Length: 2\r\n\r\nBC"
    got = events(reader(), one + two + b"\r\n" + one)  # a stray CRLF between is ignored
    assert [g for g in got if isinstance(g, bytes)] == [b"A", b"BC", b"A"]
    assert sum(isinstance(g, RequestHead) for g in got) == 3


def test_no_length_no_body() -> None:
    r = reader()
    got = events(r, HEAD + b"\r\n")
    assert got[1:] == [b""]
    assert r.between_requests


def test_chunked_body_with_extensions_and_trailers() -> None:
    body = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    got = events(reader(), HEAD + b"Transfer-Encoding: chunked\r\n\r\n", body[:7], body[7:])
    assert got[1:] == [b"abcde"]


def test_chunked_byte_by_byte() -> None:
    data = HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n"
    r = reader()
    got = events(r, *(data[i : i + 1] for i in range(len(data))))
    assert got[1:] == [b"wxyz"]
    assert r.between_requests and not r.awaiting_body


def test_between_requests_and_awaiting_body() -> None:
    r = reader()
    assert r.between_requests
    events(r, HEAD + b"Content-Length: 3\r\n\r\na")
    assert not r.between_requests and r.in_body and r.awaiting_body
    events(r, b"bc")
    assert r.between_requests and not r.awaiting_body
    events(r, b"PO")
    assert not r.between_requests


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
        (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "bad_request"),
        (HEAD + b"Content-Length: 5, 6\r\n\r\n", 400, "bad_request"),
        (HEAD + b"Content-Length: -1\r\n\r\n", 400, "bad_request"),
        (HEAD + b"Content-Length: +5\r\n\r\n", 400, "bad_request"),
        (HEAD + b"Content-Length: 101\r\n\r\n", 413, "too_large"),
        (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 501, "bad_request"),
        (HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
         "bad_request"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_request"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n65\r\n", 413, "too_large"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n60\r\n" + b"a" * 0x60 + b"\r\n5\r\n", 413,
         "too_large"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\nabc", 400, "bad_request"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 2000, 400, "bad_request"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"a" * 2000 + b"\r\n", 400,
         "bad_request"),
        (b"HELLO WORLD\r\n\r\n", 400, "bad_request_line"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431, "head_too_large"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "bad_http_version"),
    ],
    ids=["length-and-chunked", "two-lengths", "length-list", "negative", "plus", "too-large",
         "gzip-coding", "chunked-twice", "chunked-1.0", "bad-chunk-size", "chunk-too-large",
         "chunks-too-large", "no-crlf-after-chunk", "chunk-line-too-long",
         "trailer-too-long", "request-line", "head-too-large", "version"],
)  # fmt: skip
def test_refused(data: bytes, status: int, reason: str) -> None:
    with pytest.raises(HttpError) as caught:
        events(reader(), data)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_repeated_equal_lengths_are_one_length() -> None:
    got = events(reader(), HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    assert got[1:] == [b"ok"]


def _head(data: bytes) -> RequestHead:
    got = events(reader(), data + b"\r\n")
    assert isinstance(got[0], RequestHead)
    return got[0]


def test_connection_rules() -> None:
    assert not wants_close(_head(HEAD))
    assert wants_close(_head(HEAD + b"Connection: close\r\n"))
    assert wants_close(_head(b"POST / HTTP/1.0\r\n"))
    assert not wants_close(_head(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n"))
    assert expects_continue(_head(HEAD + b"Expect: 100-Continue\r\n"))
    assert not expects_continue(_head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n"))


def test_render_response() -> None:
    data = render_response(200, b"abc", "application/x-protobuf", headers=(("X", "1"),))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 3" in lines and b"X: 1" in lines
    assert any(line.startswith(b"Date: ") and line.endswith(b" GMT") for line in lines)
    assert b"Connection: close" not in lines
    assert body == b"abc"
    closing = render_response(413, b"", "text/plain", close=True)
    assert closing.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"\r\nConnection: close\r\n" in closing
    assert b"Connection: keep-alive" in render_response(200, b"", "x", keep_alive_1_0=True)
