"""Errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://opamp.dev/problems/"


class Problem(Exception):
    """Raised by a handler to answer with a problem document instead of a result."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})

    def document(self, instance: str | None = None) -> dict[str, object]:
        body: dict[str, object] = {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        return body

    def response(self, instance: str | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.document(instance)).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


def bad_request(detail: str) -> Problem:
    return Problem(400, "bad-request", "Bad request", detail)


def not_found(detail: str) -> Problem:
    return Problem(404, "not-found", "Not found", detail)


def unauthorized(detail: str) -> Problem:
    return Problem(
        401, "unauthorized", "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="opamp"'}
    )


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", "Forbidden", detail)


def conflict(detail: str) -> Problem:
    return Problem(409, "conflict", "Conflict", detail)


def unavailable(detail: str, retry_after_seconds: int | None = None) -> Problem:
    headers = {"Retry-After": str(retry_after_seconds)} if retry_after_seconds else None
    return Problem(503, "unavailable", "Service unavailable", detail, headers)


def internal_error() -> Problem:
    # The detail stays generic: the cause is in the log, not in the answer to the caller.
    return Problem(500, "internal", "Internal server error", "see the operator's log")


def from_http_exception(error: web.HTTPException) -> Problem:
    """The problem document for one of aiohttp's own answers (unknown route, bad method)."""
    kind = {404: "not-found", 405: "method-not-allowed"}.get(error.status, "http-error")
    headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
    detail = error.text if error.text and not error.text.startswith(str(error.status)) else ""
    return Problem(error.status, kind, error.reason, detail or error.reason, headers)
