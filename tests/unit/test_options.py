"""Settings from flags and environment: precedence, clear errors, and the README stays true."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from opamp_operator.config import ConfigError
from opamp_operator.options import OPTIONS, add_options, reference_markdown, settings_from

README = Path(__file__).resolve().parents[2] / "README.md"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser)
    return parser.parse_args(argv)


def test_flag_beats_environment_beats_default() -> None:
    env = {"OPAMP_LISTEN_PORT": "5000", "OPAMP_HEARTBEAT_TIMEOUT": "90"}
    settings = settings_from(parse("--listen-port", "6000"), env)
    assert settings.listener.port == 6000
    assert settings.fleet.heartbeat_timeout_seconds == 90
    assert settings.fleet.heartbeat_interval_seconds == 30


def test_bad_value_names_its_source() -> None:
    with pytest.raises(ConfigError, match="OPAMP_LISTEN_PORT"):
        settings_from(parse(), {"OPAMP_LISTEN_PORT": "many"})
    with pytest.raises(ConfigError, match="--api-auth"):
        settings_from(parse("--api-auth", "perhaps"), {})


def test_inconsistent_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="heartbeat timeout"):
        settings_from(parse("--heartbeat-interval", "60", "--heartbeat-timeout", "30"), {})


def test_tokens_come_from_a_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\nalpha\n\nbeta\n")
    settings = settings_from(parse("--agent-tokens-file", str(tokens)), {})
    assert settings.listener.agent_tokens == frozenset({"alpha", "beta"})


def test_every_option_maps_to_a_setting_and_the_readme_shows_them_all() -> None:
    defaults = settings_from(parse(), {})
    for option in OPTIONS:
        assert hasattr(getattr(defaults, option.section), option.name), option.flag
    readme = README.read_text()
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    documented = readme[readme.index(start) + len(start) : readme.index(end)]
    assert documented == reference_markdown(), "README out of date: opamp-operator config-reference"


def test_websocket_framing_is_own_unless_websockets_is_asked_for() -> None:
    assert settings_from(parse(), {}).listener.websocket_framing == "own"
    fallback = settings_from(parse(), {"OPAMP_WEBSOCKET_FRAMING": "WebSockets"})
    assert fallback.listener.websocket_framing == "websockets"
    with pytest.raises(ConfigError, match="OPAMP_WEBSOCKET_FRAMING"):
        settings_from(parse(), {"OPAMP_WEBSOCKET_FRAMING": "aiohttp"})
