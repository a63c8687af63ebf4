"""
The test suite keeps its layers visible (issue #16): every test file is in one layer's
folder, every layer has its marker, and every test carries exactly one layer marker, so
``pytest -m memory`` or ``pytest -m "not interop"`` selects what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import LAYERS, layer_of

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_every_test_file_is_in_a_layer_folder() -> None:
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) >= 60
    outside = [str(f.relative_to(TESTS)) for f in files if layer_of(f) is None]
    assert outside == []
    assert sorted(p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__") == (
        sorted([*LAYERS, "support"])
    )
    # Support modules are not tests, and tests are not support modules.
    assert not list((TESTS / "support").glob("test_*.py"))


def test_every_layer_has_a_registered_marker() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    markers = {line.split(":")[0] for line in settings["ini_options"]["markers"]}
    assert set(LAYERS) | {"openssh"} == markers
    assert settings["ini_options"]["pythonpath"] == ["tests/support"]


_REPORT = """
def pytest_collection_finish(session):
    for item in session.items:
        names = sorted({m.name for m in item.iter_markers()})
        print("ITEM", item.nodeid, ",".join(names), sep="\\t")
"""


def test_each_test_carries_its_folders_marker_and_interop_when_it_needs_openssh(
    tmp_path: Path,
) -> None:
    (tmp_path / "layer_report.py").write_text(_REPORT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "layer_report"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    items = {}
    for line in done.stdout.splitlines():
        if line.startswith("ITEM\t"):
            _, nodeid, names = line.split("\t")
            items[nodeid] = set(names.split(","))
    assert len(items) >= 2000
    wrong = []
    for nodeid, names in items.items():
        folder = nodeid.split("/")[1]
        layers = names & set(LAYERS)
        expected = {folder} | ({"interop"} if "openssh" in names else set())
        if layers != expected:
            wrong.append(f"{nodeid}: {sorted(layers)}")
    assert wrong == []
    openssh = {nodeid for nodeid, names in items.items() if "openssh" in names}
    # The [openssh] variants of the server fixtures are OpenSSH tests; [bundled] ones in
    # tests/loopback/ are not (a jump host elsewhere may still be a real sshd).
    assert any(n.startswith("tests/loopback/") and n.endswith("[openssh]") for n in openssh)
    assert not any(n.startswith("tests/loopback/") and n.endswith("[bundled]") for n in openssh)
    # The ssh_config reader's comparisons with the real ``ssh -G`` are counted apart:
    # one test per configuration, a few hundred.
    ssh_g = {n for n in openssh if n.startswith("tests/pure/test_ssh_config.py::")}
    assert 300 <= len(ssh_g) <= 700
    assert 100 <= len(openssh - ssh_g) <= 400
