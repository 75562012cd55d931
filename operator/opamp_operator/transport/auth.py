"""Bearer-token check for agents, done on the request head before any upgrade."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


class BearerAuth:
    """Accepts `Authorization: Bearer <token>` for any configured token; open when none are."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(token.encode("utf-8") for token in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def allows(self, authorization: list[bytes]) -> bool:
        """`authorization`: the raw bytes of every Authorization header sent (one is valid)."""
        if not self._tokens:
            return True
        if len(authorization) != 1:
            return False
        scheme, _, credentials = authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        presented = credentials.strip()
        # Compare with every token, never stopping early, so timing tells nothing about
        # which token (or how much of one) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched
