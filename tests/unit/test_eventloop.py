"""The event-loop choice: asyncio's by default, uvloop when asked and installed."""

from __future__ import annotations

import asyncio
import importlib
import types

import pytest

from opamp_operator import eventloop
from opamp_operator.config import Settings
from opamp_operator.options import add_options, settings_from


def test_default_is_asyncio_and_the_flag_chooses() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_options(parser)
    assert Settings().process.event_loop == "asyncio"
    chosen = settings_from(parser.parse_args(["--event-loop", "uvloop"]), {})
    assert chosen.process.event_loop == "uvloop"
    with pytest.raises(ValueError):
        eventloop.parse_loop("trio")


def test_asyncio_asked_or_uvloop_missing_gives_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert eventloop.loop_factory("asyncio") is None

    def missing(name: str) -> types.ModuleType:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert eventloop.loop_factory("uvloop") is None


def test_uvloop_installed_gives_its_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("uvloop")
    fake.new_event_loop = asyncio.new_event_loop  # type: ignore[attr-defined]
    monkeypatch.setattr(importlib, "import_module", lambda name: fake)
    assert eventloop.loop_factory("uvloop") is asyncio.new_event_loop
