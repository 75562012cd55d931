"""The Kubernetes API layer: credentials, requests, errors, list+watch. No operator logic.

Everything above it (the mirror, liveness, GitOps, Pod linking, the REST authorizer, Kopf's
login) gets its credentials from one `Credentials`, loaded once at start-up, and makes its
requests through one `ApiSession` (aiohttp, on the event loop: no client threads).
"""

from .credentials import Credentials, load_credentials
from .errors import (
    Conflict,
    Forbidden,
    Gone,
    KubeApiError,
    NotFound,
    Throttled,
    Unavailable,
    error_for,
)
from .session import ApiSession

__all__ = [
    "ApiSession",
    "Conflict",
    "Credentials",
    "Forbidden",
    "Gone",
    "KubeApiError",
    "NotFound",
    "Throttled",
    "Unavailable",
    "error_for",
    "load_credentials",
]
