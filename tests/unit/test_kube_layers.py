"""kube/ sub-packages import only downward, and no two kube modules share a name."""

import ast
import collections
from pathlib import Path

import opamp_operator.kube

KUBE = Path(opamp_operator.kube.__file__).parent

# Lowest first; packages of the same rank may not import each other.
RANK = {
    "shapes": 0,
    "api": 1,
    "writes": 2,
    "leases": 2,
    "mirror": 3,
    "liveness": 4,
    "gitops": 4,
    "pods": 4,
    "wiring": 5,
}
# The parts of the operator the Kubernetes side may use (never store/, api/, transport/).
ALLOWED_OUTSIDE = {"backoff", "config", "fleet", "metrics"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "opamp_operator":
                found.update(f"opamp_operator.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _package_of(path: Path) -> str:
    parts = path.relative_to(KUBE).parts
    return parts[0] if len(parts) > 1 else ""


def test_every_sub_package_has_a_rank() -> None:
    packages = {p.name for p in KUBE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK)


def test_sub_packages_import_only_lower_ones() -> None:
    wrong = []
    for path in KUBE.rglob("*.py"):
        own = _package_of(path)
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] != "opamp_operator" or len(parts) < 2:
                continue
            if parts[1] != "kube":
                if parts[1] not in ALLOWED_OUTSIDE:
                    wrong.append(f"{path.relative_to(KUBE)} imports {module}")
                continue
            target = parts[2] if len(parts) > 2 else ""
            if own and target != own and RANK.get(target, 99) >= RANK[own]:
                wrong.append(f"{path.relative_to(KUBE)} imports {module}")
    assert wrong == []


def test_no_two_kube_modules_share_a_name() -> None:
    names = collections.Counter(p.name for p in KUBE.rglob("*.py") if p.name != "__init__.py")
    assert [name for name, count in names.items() if count > 1] == []
