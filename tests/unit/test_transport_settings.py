"""ListenerSettings refuses what the listener could not run with."""

from __future__ import annotations

from pathlib import Path

import pytest

from opamp_operator.config import ConfigError, ListenerSettings


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        ListenerSettings(path="v1/opamp")
    with pytest.raises(ConfigError):
        ListenerSettings(port=70000)
    with pytest.raises(ConfigError):
        ListenerSettings(tls_cert_file=Path("cert.pem"))
    with pytest.raises(ConfigError):
        ListenerSettings(handshake_timeout_seconds=0)
    with pytest.raises(ConfigError):
        ListenerSettings(agent_tokens=frozenset({""}))
