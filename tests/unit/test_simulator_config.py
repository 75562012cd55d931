"""Simulator settings: validation, transport and URL inference, the loopback rule, CLI flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from opamp_operator.simulator import (
    MAX_CONNECTIONS_CAP,
    SimulationConfig,
    SimulationConfigError,
    add_simulate_arguments,
    config_from_args,
    ensure_loopback,
    is_loopback_address,
    run_simulation,
)

URL = "ws://127.0.0.1:4320/v1/opamp"


def config(**overrides: Any) -> SimulationConfig:
    return SimulationConfig(**{"url": URL, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"agents": 0}, "agents must be at least 1"),
        ({"agents": 11, "max_connections": 10}, "exceed max_connections"),
        ({"agents": 10, "max_connections": MAX_CONNECTIONS_CAP + 1}, "over the cap"),
        ({"http_connections": 20, "max_connections": 10}, "http_connections"),
        ({"duration": 0}, "duration"),
        ({"duration": float("nan")}, "duration"),
        ({"heartbeat": 0.0}, "heartbeat"),
        ({"ramp": -1.0}, "ramp"),
        ({"churn": float("nan")}, "churn"),
        ({"silent_count": 2, "silent_fraction": 0.5}, "not both"),
        ({"silent_count": 11}, "silent_count"),
        ({"silent_fraction": 1.5}, "silent_fraction"),
        ({"silent_after": 61.0}, "silent_after"),
        ({"token": ""}, "token"),
        ({"token": "a\nb"}, "token"),
        ({"transport": "grpc"}, "transport"),
        ({"url": "tcp://127.0.0.1:1/"}, "scheme"),
        ({"url": "ws:///v1/opamp"}, "no host"),
        ({"url": "ws://127.0.0.1:99999/"}, "not a valid URL"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_max"),
        ({"groups": 0}, "groups"),
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SimulationConfigError, match=message):
        config(**overrides)


def test_the_connection_cap_itself_is_allowed() -> None:
    cfg = config(agents=MAX_CONNECTIONS_CAP, max_connections=MAX_CONNECTIONS_CAP)
    assert cfg.agents == 20_000


@pytest.mark.parametrize(
    ("url", "transport", "want_transport", "want_url"),
    [
        ("ws://127.0.0.1:1/v1/opamp", None, "ws", "ws://127.0.0.1:1/v1/opamp"),
        ("http://127.0.0.1:1/v1/opamp", None, "http", "http://127.0.0.1:1/v1/opamp"),
        ("wss://localhost:1/p", None, "ws", "wss://localhost:1/p"),
        ("ws://127.0.0.1:1/v1/opamp", "http", "http", "http://127.0.0.1:1/v1/opamp"),
        ("https://localhost:1/p?x=1", "ws", "ws", "wss://localhost:1/p?x=1"),
        ("http://127.0.0.1:1/p", "http", "http", "http://127.0.0.1:1/p"),
    ],
)
def test_transport_comes_from_the_scheme_or_switches_it(
    url: str, transport: Any, want_transport: str, want_url: str
) -> None:
    cfg = config(url=url, transport=transport)
    assert cfg.effective_transport == want_transport
    assert cfg.effective_url == want_url


def test_silent_agents_from_count_or_fraction_and_default_time() -> None:
    assert config(agents=10, silent_count=3).silent_agents == 3
    assert config(agents=10, silent_fraction=0.25).silent_agents == 2  # round half to even
    assert config(agents=10, silent_fraction=1.0).silent_agents == 10
    assert config(agents=10).silent_agents == 0
    assert config(duration=40).silent_at == 20
    assert config(duration=40, silent_after=5).silent_at == 5


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.1.2", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::1%lo", True),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("192.0.2.7", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1", False),
        ("::", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


def fake_resolver(answer: list[str] | OSError) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if isinstance(answer, OSError):
            raise answer
        return answer

    return resolve


async def test_a_host_resolving_only_to_loopback_is_accepted() -> None:
    await ensure_loopback("ws://sim.test:1/", fake_resolver(["127.0.0.1", "::1"]))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (["127.0.0.1", "203.0.113.9"], "non-loopback 203.0.113.9"),
        (["198.51.100.1"], "non-loopback"),
        ([], "no address"),
        (OSError("Name or service not known"), "cannot resolve"),
    ],
)
async def test_a_host_with_any_other_address_is_refused(
    answer: list[str] | OSError, message: str
) -> None:
    with pytest.raises(SimulationConfigError, match=message):
        await ensure_loopback("ws://sim.test:1/", fake_resolver(answer))


async def test_real_resolution_of_loopback_names() -> None:
    await ensure_loopback("ws://localhost:4320/v1/opamp")
    await ensure_loopback("http://127.0.0.1/v1/opamp")
    await ensure_loopback("ws://[::1]:4320/v1/opamp")


async def test_run_simulation_refuses_a_remote_target_before_connecting() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never routed, and a literal needs no DNS.
    with pytest.raises(SimulationConfigError, match=r"192\.0\.2\.1"):
        await run_simulation(config(url="ws://192.0.2.1:4320/v1/opamp", duration=1))


# --------------------------------------------------------------------------- CLI flags


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_give_the_default_config() -> None:
    cfg = config_from_args(parse())
    # The command runs in a process of its own, so it may tune the garbage collector.
    assert cfg == SimulationConfig(url="ws://127.0.0.1:4320/v1/opamp", tune_gc=True)


def test_every_flag_reaches_the_config(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    args = parse(
        "--url", "http://localhost:9/v1/opamp", "--agents", "500", "--transport", "ws",
        "--heartbeat", "1.5", "--ramp", "0", "--duration", "30", "--churn", "2",
        "--churn-delay", "0.5", "--silent", "10%", "--silent-after", "12", "--silent-freeze",
        "--token-file", str(token_file), "--max-connections", "1000",
        "--http-connections", "10", "--name-prefix", "bench", "--groups", "4",
        "--service-version", "2.0", "--seed", "7", "--stop-grace", "3",
        "--connect-timeout", "4", "--no-gc-tuning",
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg == SimulationConfig(
        url="http://localhost:9/v1/opamp",
        agents=500,
        transport="ws",
        heartbeat=1.5,
        ramp=0,
        duration=30,
        churn=2,
        churn_delay=0.5,
        silent_fraction=0.1,
        silent_after=12,
        silent_freeze=True,
        token="s3cret",
        max_connections=1000,
        http_connections=10,
        name_prefix="bench",
        groups=4,
        service_version="2.0",
        seed=7,
        stop_grace=3,
        connect_timeout=4,
    )
    assert cfg.effective_url == "ws://localhost:9/v1/opamp"


@pytest.mark.parametrize(
    ("text", "count", "fraction"),
    [("25", 25, 0.0), ("0.1", 0, 0.1), ("10%", 0, 0.1), ("0", 0, 0.0), ("1.0", 0, 1.0)],
)
def test_silent_flag_takes_a_count_a_fraction_or_a_percentage(
    text: str, count: int, fraction: float
) -> None:
    cfg = config_from_args(parse("--agents", "100", "--silent", text))
    assert cfg.silent_count == count
    assert cfg.silent_fraction == pytest.approx(fraction)


def test_bad_flags_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse("--silent", "lots")
    with pytest.raises(SimulationConfigError, match="not both"):
        config_from_args(parse("--token", "a", "--token-file", str(tmp_path / "t")))
    with pytest.raises(SimulationConfigError, match="cannot read"):
        config_from_args(parse("--token-file", str(tmp_path / "missing")))
    with pytest.raises(SimulationConfigError, match="over the cap"):
        config_from_args(parse("--max-connections", "20001"))
