"""Helpers for the Kubernetes mirror tests: a transport double, real OpAMP messages, kubectl.

The channel is a double (the fleet only needs its transport, address and a close request);
the messages are real `AgentToServer` protobufs; the API server is the real test bed.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from opamp_operator.opamp.generated import anyvalue_pb2, opamp_pb2
from tests.support import fake_agents

T = TypeVar("T")


@dataclass(eq=False)
class FakeChannel(fake_agents.FakeChannel):
    remote_addr: str = "127.0.0.1:40001"


@dataclass
class FakeAgent:
    """One agent's side of the protocol: its uid, sequence numbers and what it reports."""

    service_name: str = "checkout"
    service_version: str = "1.4.2"
    host_name: str = "node-a"
    uid: uuid.UUID = field(default_factory=uuid.uuid4)
    channel: FakeChannel = field(default_factory=FakeChannel)
    sequence: int = 0

    @property
    def agent_id(self) -> str:
        return str(self.uid)

    @property
    def cr_name(self) -> str:
        return f"agent-{self.uid}"

    def first_message(self, healthy: bool = True) -> opamp_pb2.AgentToServer:
        """The first report: description, capabilities, health."""
        message = self._next()
        description = message.agent_description
        description.identifying_attributes.extend(
            [_kv("service.name", self.service_name), _kv("service.version", self.service_version)]
        )
        description.non_identifying_attributes.extend(
            [_kv("host.name", self.host_name), _kv("os.type", "linux")]
        )
        message.capabilities = (
            opamp_pb2.AgentCapabilities_ReportsStatus
            | opamp_pb2.AgentCapabilities_ReportsHealth
            | opamp_pb2.AgentCapabilities_AcceptsRemoteConfig
            # Judged by heartbeats (over a WebSocket, an agent without it is judged by
            # its connection, issue 16).
            | opamp_pb2.AgentCapabilities_ReportsHeartbeat
        )
        message.health.healthy = healthy
        message.health.status = "StatusOK" if healthy else "StatusRecoverableError"
        return message

    def heartbeat(self) -> opamp_pb2.AgentToServer:
        """A status report with nothing new in it (what a steady agent sends)."""
        return self._next()

    def _next(self) -> opamp_pb2.AgentToServer:
        message = opamp_pb2.AgentToServer(instance_uid=self.uid.bytes, sequence_num=self.sequence)
        self.sequence += 1
        return message


def _kv(key: str, value: str) -> anyvalue_pb2.KeyValue:
    return anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))


def kubectl(kubeconfig: Path, namespace: str, *args: str) -> str:
    """Run kubectl against the test bed; return stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", namespace, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def table(output: str) -> list[dict[str, str]]:
    """`kubectl get` output as rows keyed by column header (columns are space-aligned)."""
    lines = [line for line in output.splitlines() if line.strip()]
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    # Multi-word headers ("LAST SEEN", "REMOTE CONFIG", "INSTANCE UID") hold one space.
    starts = [s for s in starts if not (s >= 2 and header[s - 2] != " ")]
    bounds = [*starts[1:], None]
    rows = []
    for line in lines[1:]:
        row = {}
        for start, end in zip(starts, bounds, strict=True):
            row[header[start:end].strip()] = line[start:end].strip()
        rows.append(row)
    return rows


def events_for(api: k8s.ApiClient, namespace: str, name: str) -> list[k8s.CoreV1Event]:
    selector = f"involvedObject.name={name}"
    events = k8s.CoreV1Api(api).list_namespaced_event(namespace, field_selector=selector).items
    # In the order they were posted: two may share a timestamp to the second, and the test
    # bed's resourceVersions are etcd revisions (numbers that only grow).
    return sorted(events, key=lambda e: int(e.metadata.resource_version))


def condition(cr: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in cr.get("status", {}).get("conditions", []):
        if item["type"] == kind:
            return dict(item)
    raise AssertionError(f"no {kind} condition in {cr.get('status')}")
