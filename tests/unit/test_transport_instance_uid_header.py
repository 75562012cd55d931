"""The OpAMP-Instance-UID header helpers (pure)."""

from __future__ import annotations

import uuid

import pytest

from opamp_operator.transport.instanceuid import (
    BadUidHeader,
    describe,
    header_uid,
    mismatch_detail,
)


def test_absent_header_is_none_and_a_uuid_in_any_spelling_is_its_bytes() -> None:
    uid = uuid.uuid4()
    assert header_uid([]) is None
    assert header_uid([str(uid)]) == uid.bytes
    assert header_uid([f" {uid.hex.upper()} "]) == uid.bytes
    assert describe(uid.bytes) == f" (agent {uid})" and describe(None) == ""


@pytest.mark.parametrize("values", [["nope"], [""], [str(uuid.uuid4()), str(uuid.uuid4())]])
def test_malformed_or_repeated_header_is_refused_with_its_reason(values: list[str]) -> None:
    with pytest.raises(BadUidHeader) as refused:
        header_uid(values)
    assert refused.value.reason == "bad_instance_uid_header"


def test_mismatch_names_both_uids_even_a_broken_one() -> None:
    header, sent = uuid.uuid4(), uuid.uuid4()
    assert str(header) in mismatch_detail(header.bytes, sent.bytes)
    assert str(sent) in mismatch_detail(header.bytes, sent.bytes)
    assert "abcd" in mismatch_detail(header.bytes, b"\xab\xcd")
