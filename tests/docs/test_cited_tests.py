"""
Tests named in the documentation exist (issue #16 moved them into layer folders): every
``folder/test_file.py::test_name`` the seed mapping cites is a test function of that file
(a parametrized test counts by its function's name), every test file it cites exists, and
every ``tests/...`` path in the README, ``docs/``, ``benchmarks/``, ``scripts/`` and the
package's own docstrings is a file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SEED_MAPPING = ROOT / "docs" / "seed-mapping.md"
#: Where ``tests/...`` paths are written. Not the CHANGELOG: it tells the history, in the
#: paths of its day.
TEXTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "benchmarks").glob("*.md")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
    *sorted((ROOT / "scripts").iterdir()),
    *sorted((ROOT / "rtunnel").rglob("*.py")),
]
_LAYER = r"(?:pure|memory|loopback|interop|harness|docs)"


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def _cites(text: str) -> list[tuple[str, str | None]]:
    """(file under tests/, test name or None) for every cite in ``text``."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(rf"(?<![\w/.])({_LAYER}/test_\w+\.py)(?:::(test_\w+))?", text)
    ]


def test_the_seed_mapping_cites_tests_that_exist() -> None:
    text = SEED_MAPPING.read_text(encoding="utf-8")
    cites = _cites(text)
    assert len(cites) >= 150
    # No cite left without its folder.
    names = re.findall(r"[\w/]*test_\w+\.py", text)
    assert [n for n in names if not re.fullmatch(rf"(tests/)?{_LAYER}/test_\w+\.py", n)] == []
    missing = []
    for file, name in cites:
        path = TESTS / file
        if not path.is_file():
            missing.append(f"{file}: no such file")
        elif name is not None and name not in _test_functions(path):
            missing.append(f"{file}::{name}: no such test")
    assert sorted(set(missing)) == []


def test_cites_are_read_as_written() -> None:
    assert _cites("| done | memory/test_transport.py::test_x, loopback/test_cli.py |") == [
        ("memory/test_transport.py", "test_x"),
        ("loopback/test_cli.py", None),
    ]
    assert _cites("tests/memory/test_transport.py") == []  # a path: the next test's


@pytest.mark.parametrize("page", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_under_tests_exist(page: Path) -> None:
    if not page.is_file():
        return
    text = page.read_text(encoding="utf-8", errors="replace")
    paths = set(re.findall(r"(?<![\w/])tests/[\w/]*\w\.py", text))
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert missing == []
