"""Every integration test file is marked `integration`, every e2e file `e2e`, no unit file either.

`pytest -m "not integration and not e2e"` then runs exactly what needs no test bed; a new file
that forgets its marker fails here instead of slipping into the wrong selection.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def module_marks(path: Path) -> set[str]:
    """The names of the `pytest.mark.X` in the module's `pytestmark` (a mark or a list)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    marks: set[str] = set()
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            continue
        for item in ast.walk(node.value) if node.value is not None else []:
            if (
                isinstance(item, ast.Attribute)
                and isinstance(item.value, ast.Attribute)
                and item.value.attr == "mark"
            ):
                marks.add(item.attr)
    return marks


def test_module_marks_reads_single_marks_and_lists(tmp_path: Path) -> None:
    one = tmp_path / "one.py"
    one.write_text("import pytest\npytestmark = pytest.mark.integration\n")
    many = tmp_path / "many.py"
    many.write_text("import pytest\npytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]\n")
    none = tmp_path / "none.py"
    none.write_text("import pytest\n\n@pytest.mark.integration\ndef test_x() -> None: ...\n")
    assert module_marks(one) == {"integration"}
    assert module_marks(many) == {"e2e", "timeout"}
    assert module_marks(none) == set()  # a mark on one test is not the file's marker


@pytest.mark.parametrize(
    ("folder", "required", "forbidden"),
    [
        ("integration", {"integration"}, {"e2e"}),
        ("e2e", {"e2e"}, {"integration"}),
        ("unit", set(), {"integration", "e2e"}),
    ],
)
def test_every_test_file_carries_its_folders_marker(
    folder: str, required: set[str], forbidden: set[str]
) -> None:
    files = sorted((TESTS / folder).glob("test_*.py"))
    assert files, f"no test files under tests/{folder}"
    wrong = {
        path.name: sorted(marks)
        for path in files
        if not required <= (marks := module_marks(path)) or marks & forbidden
    }
    assert not wrong, f"tests/{folder}: files whose pytestmark lacks {required} or has {forbidden}"
