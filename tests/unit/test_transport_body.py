"""HTTP bodies: bounded reads, bounded gunzip (gzip bombs), instance-uid salvage, auth."""

from __future__ import annotations

import gzip
import uuid

import pytest

from opamp_operator.opamp.messages import AgentToServer
from opamp_operator.transport.auth import BearerAuth
from opamp_operator.transport.body import (
    BadGzip,
    BodyTooLarge,
    accepts_gzip,
    gunzip_capped,
    gzip_compress,
    read_capped,
    salvage_instance_uid,
)
from opamp_operator.transport.describe import message_kind, remote_addr


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


async def test_read_capped_joins_chunks() -> None:
    assert await read_capped(Chunks(b"ab", b"cd"), 4) == b"abcd"


async def test_read_capped_stops_past_the_limit() -> None:
    with pytest.raises(BodyTooLarge):
        await read_capped(Chunks(b"ab", b"cd", b"e"), 4)


def test_gunzip_round_trip_and_several_members() -> None:
    assert gunzip_capped(gzip_compress(b"hello"), 100) == b"hello"
    assert gunzip_capped(gzip.compress(b"ab") + gzip.compress(b"cd"), 100) == b"abcd"
    assert gunzip_capped(gzip.compress(b"x" * 100), 100) == b"x" * 100


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # ~50 KiB that inflates to 50 MiB
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLarge):
        gunzip_capped(bomb, 1024 * 1024)


@pytest.mark.parametrize(
    "data",
    [b"not gzip at all", gzip.compress(b"hello world")[:-6], gzip.compress(b"a") + b"junk"],
    ids=["garbage", "truncated", "trailing-garbage"],
)
def test_bad_gzip(data: bytes) -> None:
    with pytest.raises(BadGzip):
        gunzip_capped(data, 1024)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip, deflate", True),
        ("deflate, br", False),
        ("GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("identity, x-gzip", True),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_salvage_finds_the_uid_before_the_damage() -> None:
    uid = uuid.uuid4().bytes
    good = AgentToServer(instance_uid=uid, sequence_num=7).SerializeToString()
    assert salvage_instance_uid(good) == uid
    assert salvage_instance_uid(good + b"\x1a\xff\xff\xff") == uid  # truncated field after


def test_salvage_gives_up_on_garbage_or_missing_uid() -> None:
    assert salvage_instance_uid(b"\xff\xff\xff") is None
    assert salvage_instance_uid(AgentToServer(sequence_num=3).SerializeToString()) is None
    assert salvage_instance_uid(b"\x0a\x10abc") is None  # uid field cut short
    assert salvage_instance_uid(b"\x0a\x03abc") is None  # uid of the wrong length


def test_bearer_auth() -> None:
    auth = BearerAuth({"s3cret", "other"})
    assert auth.enabled
    assert auth.allows([b"Bearer s3cret"])
    assert auth.allows([b"bearer   other "])
    assert not auth.allows([])
    assert not auth.allows([b"Bearer wrong"])
    assert not auth.allows([b"Basic s3cret"])
    assert not auth.allows([b"Bearer s3cret", b"Bearer s3cret"])  # ambiguous
    assert BearerAuth(()).allows([])


def test_message_kind() -> None:
    uid = uuid.uuid4().bytes
    assert message_kind(AgentToServer(instance_uid=uid, capabilities=5)) == "heartbeat"
    report = AgentToServer(instance_uid=uid)
    report.health.healthy = True
    assert message_kind(report) == "report"
    components = AgentToServer(instance_uid=uid)
    components.available_components.hash = b"h"
    assert message_kind(components) == "report"
    bye = AgentToServer(instance_uid=uid)
    bye.agent_disconnect.SetInParent()
    assert message_kind(bye) == "disconnect"
    bye.health.healthy = True  # a goodbye with a report is still a goodbye
    assert message_kind(bye) == "disconnect"
    asks = AgentToServer(instance_uid=uid, sequence_num=3, flags=1)  # RequestInstanceUid
    assert message_kind(asks) == "report"
    for field in ("effective_config", "package_statuses", "custom_message"):
        message = AgentToServer(instance_uid=uid)
        getattr(message, field).SetInParent()
        assert message_kind(message) == "report", field


def test_remote_addr() -> None:
    assert remote_addr(("127.0.0.1", 4320)) == "127.0.0.1:4320"
    assert remote_addr(("::1", 4320, 0, 0)) == "[::1]:4320"
    assert remote_addr(None) == "unknown"
