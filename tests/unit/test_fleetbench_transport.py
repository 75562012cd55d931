"""The fleet benchmark's per-transport rules: what counts as an agent held, over WebSocket
and over plain HTTP (where no connection outlives a poll)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:  # bench/run puts it first; pytest does not
    sys.path.insert(0, str(BENCH))

from fleetbench.peer_runs import held_count  # noqa: E402
from fleetbench.stack import Metrics, agents_held, fleet_label, opamp_url  # noqa: E402

# Two agents Online over HTTP, one request in flight, one WebSocket open.
SCRAPE = """\
# TYPE opamp_connections_open gauge
opamp_connections_open{transport="websocket"} 1.0
opamp_connections_open{transport="http"} 1.0
# TYPE opamp_agents_online_total gauge
opamp_agents_online_total 3.0
"""


def test_operator_holds_websockets_by_connection_and_http_agents_by_online() -> None:
    metrics = Metrics(SCRAPE)
    assert agents_held(metrics, "ws") == 2.0  # the gauge, as the WebSocket fleet always read it
    assert agents_held(metrics, "http") == 3.0  # not the one request in flight


def test_peer_holds_websockets_open_and_http_agents_heard_from() -> None:
    agents = [
        {"transport": "ws", "connected": True},
        {"transport": "ws", "connected": False},
        {"transport": "http", "connected": False},  # opamp-go never marks HTTP connected
    ]
    assert held_count(agents, "ws") == 1
    assert held_count(agents, "http") == 3


def test_http_fleet_has_its_own_names_and_endpoint() -> None:
    class Server:
        ws_url = "ws://127.0.0.1:1/v1/opamp"
        http_url = "http://127.0.0.1:1/v1/opamp"

    assert fleet_label(10_000, "ws") == "10000"  # the names earlier runs used
    assert fleet_label(10_000, "http") == "10000-http"
    assert opamp_url(Server(), "http") == Server.http_url
    assert opamp_url(Server(), "ws") == Server.ws_url
