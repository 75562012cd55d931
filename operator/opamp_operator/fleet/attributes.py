"""Reading an agent's resource attributes the way every consumer must agree on (pure)."""

from __future__ import annotations

from collections.abc import Mapping


def resource_text(
    identifying: Mapping[str, object], non_identifying: Mapping[str, object], key: str
) -> str | None:
    """Resource attribute `key` as text: identifying attributes first, then non-identifying.

    The one reading of an agent's Pod claim (`k8s.pod.uid`...), shared by the Pod linker and
    the ServiceAccount token binding: stripped, bytes as hex, blank taken as absent.
    """
    return _claim_text(identifying.get(key)) or _claim_text(non_identifying.get(key))


def _claim_text(value: object) -> str | None:
    if value is None:
        return None
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text.strip() or None
