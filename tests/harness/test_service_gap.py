"""
The service gap benchmark (``benchmarks/service_gap.py``, issue #15) must not rot: its
table as a plain function, and one short run against three private sshds that measures
every mode asked for. No timing is asserted: this machine is shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import service_gap  # noqa: E402


def test_the_table_has_median_worst_and_unanswered_probes() -> None:
    text = service_gap.summary(
        {
            ("failover", "kill"): [(0.05, 2), (0.07, 3), (0.06, 1)],
            ("single", "freeze"): [(4.0, 60), (None, 1500)],
        }
    )
    lines = text.splitlines()
    assert lines[2] == "| failover | kill | 3 | 0.060 | 0.070 | 6 |"
    assert lines[3] == "| single | freeze | 2 | 4.000 | 4.000 (1 over 30 s) | 1560 |"


def test_arguments_are_checked() -> None:
    args = service_gap.parse(["--repeats", "2", "--modes", "all", "--faults", "kill,stop"])
    assert (args.repeats, args.modes, args.faults) == (2, ["all"], ["kill", "stop"])


def test_a_short_run_measures_each_mode(openssh_sshd: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "service_gap.py"),
            *["--repeats", "1", "--faults", "kill", "--window", "1"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row.split(" | ")[:3] for row in rows[1:]] == [
        ["| single", "kill", "1"],
        ["| failover", "kill", "1"],
        ["| all", "kill", "1"],
    ]
    # Every gap was measured (none gave up): a number in the median and worst cells.
    for row in rows[1:]:
        median, worst = row.split(" | ")[3:5]
        assert float(median) > 0 and float(worst) > 0, done.stdout
