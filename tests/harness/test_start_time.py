"""
The start-time benchmark (``benchmarks/start_time.py``, issue #17) must not rot: its report
from plain numbers, and one short run against a private sshd whose output has the expected
shape and a ratio computed from the runs it made. No speed is asserted: the machine is
shared.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import start_time  # noqa: E402


def test_report_is_medians_and_the_ratio_to_ssh() -> None:
    runs = {
        "ssh": [0.2, 0.1, 0.3],
        "rtunnel": [0.3, 0.5, 0.1],
        "python -c pass": [0.01, 0.02, 0.03],
    }
    cpu = {"ssh": [0.05, 0.05, 0.04], "rtunnel": [0.2, 0.3, 0.2], "python -c pass": [0.01] * 3}
    table, ratio = start_time.report(runs, cpu)
    assert abs(ratio - 1.5) < 1e-9
    assert table.splitlines() == [
        "| command | median, ms | min | max | x ssh | CPU, ms | CPU x ssh |",
        "|---|---|---|---|---|---|---|",
        "| ssh | 200 | 100 | 300 | 1.00x | 50 | 1.00x |",
        "| rtunnel | 300 | 100 | 500 | 1.50x | 200 | 4.00x |",
        "| python -c pass | 20 | 10 | 30 | 0.10x | 10 | 0.20x |",
    ]


def test_import_profile_sums_self_times_by_package() -> None:
    rows = [
        ("    twisted.internet.defer", 3000, 5000),
        ("  twisted.internet", 1000, 6000),
        ("rtunnel.cli", 2000, 8000),
    ]
    lines = start_time.format_profile(rows).splitlines()
    assert lines[0] == "import profile of one rtunnel start: 3 modules, 6 ms"
    assert lines[2].split() == ["4.0", "ms", "66.7%", "twisted"]
    assert lines[3].split() == ["2.0", "ms", "33.3%", "rtunnel"]
    assert lines[5].split() == ["8.0", "ms", "rtunnel.cli"]


def test_short_run_against_sshd(openssh_sshd: str, tmp_path: Path) -> None:
    out = tmp_path / "start.json"
    command = [
        sys.executable,
        str(BENCHMARKS / "start_time.py"),
        "--rounds",
        "3",
        "--profile",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    tunnels = ["ssh", f"ssh, {start_time.SAME_KEX}", "rtunnel"]
    names = [*tunnels, *start_time.FLOORS]
    assert list(data["runs"]) == names
    for name in names:
        assert len(data["runs"][name]) == 3
        assert all(0 < seconds < 60 for seconds in data["runs"][name])
        # Each command's own CPU time was read, not left at zero.
        assert len(data["cpu"][name]) == 3
        assert all(0 < used < 60 for used in data["cpu"][name])
    # The ratio is the one the runs give, and both tunnels really got their port.
    ratio = statistics.median(data["runs"]["rtunnel"]) / statistics.median(data["runs"]["ssh"])
    assert data["ratio"] == ratio
    for name in tunnels:
        assert re.fullmatch(
            r"Allocated port \d+ for remote forward to 127\.0\.0\.1:\d+", data["lines"][name]
        )
    assert "| command | median, ms | min | max | x ssh | CPU, ms | CPU x ssh |" in done.stdout
    for name in names:
        assert f"| {name} | " in done.stdout
    verdict = "PASS" if ratio <= start_time.TARGET_RATIO else "FAIL"
    assert f"{verdict}  rtunnel {ratio:.2f}x ssh (target: at most 1.5x)" in done.stdout
    same = statistics.median(data["runs"]["rtunnel"]) / statistics.median(data["runs"][tunnels[1]])
    assert f"rtunnel {same:.2f}x ssh with rtunnel's key exchange (curve25519-sha256)" in done.stdout
    assert "floor: the interpreter and Twisted's reactor alone take" in done.stdout
    assert "import profile of one rtunnel start:" in done.stdout
    assert re.search(r"^ +[\d.]+ ms +[\d.]+% +rtunnel$", done.stdout, re.MULTILINE)
    assert len(re.findall(r"^round \d: ", done.stderr, re.MULTILINE)) == 3
