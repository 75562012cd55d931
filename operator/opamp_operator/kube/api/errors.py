"""One exception class per outcome callers act on, raised from one response checker."""

from __future__ import annotations

import aiohttp


class KubeApiError(Exception):
    """A request failed: `status` is the HTTP status, or 0 when no response came back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status

    @property
    def outcome(self) -> str:
        """A short label for metrics."""
        named = {0: "unreachable", 404: "not_found", 409: "conflict", 429: "throttled"}
        return named.get(self.status, "error" if self.retryable else "rejected")

    @property
    def retryable(self) -> bool:
        # 0: no response (connection refused, timeout); 409 is handled by the caller.
        return self.status in (0, 403, 408, 429) or self.status >= 500


class NotFound(KubeApiError):
    """404: no such object (or the CRD is not installed)."""


class Conflict(KubeApiError):
    """409: the object moved on (resourceVersion precondition) or already exists."""


class Gone(KubeApiError):
    """410: the resourceVersion (or continue token) is too old; list again."""


class Forbidden(KubeApiError):
    """403: RBAC does not allow it (may change when a Role is granted)."""


class Throttled(KubeApiError):
    """429: the server asks us to slow down; `retry_after` seconds is its hint."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class Unavailable(KubeApiError):
    """No response, or a 5xx: the API server is down, overloaded or unreachable."""


_BY_STATUS: dict[int, type[KubeApiError]] = {
    403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 429: Throttled,
}  # fmt: skip


def error_for(status: int, message: str, retry_after: float | None = None) -> KubeApiError:
    """The exception for `status` (0 = no response)."""
    if status == 0 or status >= 500:
        return Unavailable(status, message)
    if status == 429:
        return Throttled(status, message, retry_after)
    return _BY_STATUS.get(status, KubeApiError)(status, message)


async def check_response(response: aiohttp.ClientResponse, what: str) -> None:
    """Raise the outcome's exception unless `response` succeeded."""
    if response.status < 300:
        return
    text = (await response.text())[:500]
    raise error_for(response.status, f"{what}: {response.reason}: {text}", _retry_after(response))


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
