"""Every CR write and Event of the operator goes through the write gate (a static check).

Outside the API layer and the gate itself, the request methods that write may only be
called on a `WriteGate` (spelled `self.gate` or `gate`): a component calling `KubeApi`'s
writes directly would skip the pace, the precondition and the count.

The one exception is the replica Leases (`LeaseApi`, written by the keeper and by an
adopter claiming a stale Lease): a renewal must never wait behind a backlog of CR writes,
or a busy replica would be adopted for being busy (the reason KEP-589 moved node
heartbeats out of the Node status). Their writes are preconditioned and counted on their
own (`opamp_replica_lease_renewals_total`).
"""

import ast
from pathlib import Path

import opamp_operator

OPERATOR = Path(opamp_operator.__file__).parent
WRITES = {
    "create_agent", "patch_agent_status", "patch_agent_labels", "patch_config_status",
    "delete_agent", "post_event", "merge_patch", "create", "delete",
}  # fmt: skip
ALLOWED_FILES = {"kube/writes/gate.py"}
ALLOWED_DIRS = ("kube/api/",)  # the requests themselves
LEASE_WRITERS = {
    "kube/leases/keeper.py": "self.api",  # a LeaseApi
    "kube/liveness/adoption.py": "self.keeper.api",
}


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_receiver(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_only_the_gate_calls_the_write_requests() -> None:
    wrong = []
    for path in OPERATOR.rglob("*.py"):
        relative = path.relative_to(OPERATOR).as_posix()
        if relative in ALLOWED_FILES or relative.startswith(ALLOWED_DIRS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr in WRITES):
                continue
            receiver = _receiver(node.value)
            if receiver in ("self.gate", "gate") or LEASE_WRITERS.get(relative) == receiver:
                continue
            wrong.append(f"{relative}:{node.lineno} {receiver}.{node.attr}")
    assert wrong == []
