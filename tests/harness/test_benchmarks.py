"""
The benchmark (``benchmarks/run.py``) must not rot: its helpers as plain functions, and one
``--quick`` run against a private OpenSSH sshd that checks every implementation measured
every metric. No timing is asserted: this machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run  # noqa: E402


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert run.percentile(values, 0.50) == 50.0
    assert run.percentile(values, 0.99) == 99.0
    assert run.percentile([3.0], 0.99) == 3.0
    assert run.percentile([5.0, 1.0], 0.0) == 1.0


def test_cpu_and_peak_rss_of_this_process() -> None:
    before = run.cpu_seconds(os.getpid())
    sum(range(3_000_000))  # burn a little CPU
    assert run.cpu_seconds(os.getpid()) > before
    assert run.peak_rss_bytes(os.getpid()) > 1 << 20


def test_py_spy_raw_output_is_summarized() -> None:
    raw = "main (a.py:1);f (a.py:5);g (a.py:9) 30\nmain (a.py:1);f (a.py:5) 10\n"
    text = run.summarize_raw(raw)
    lines = text.splitlines()
    assert lines[0].startswith("40 samples")
    assert "75.0  75.0  g (a.py:9)" in lines[1]
    assert "25.0 100.0  f (a.py:5)" in lines[2]


def test_table_shows_ratios_to_openssh_and_the_bar() -> None:
    row = {key: 2.0 for key, _, _ in run.METRICS}
    row.update(conn_over_20ms=0, conn2_over_20ms=0)
    results = {"openssh": dict(row), "rtunnel": {**row, "upload_mbps": 1.0}}
    text = run.table(results, run.FULL)
    assert "| bulk upload, MB/s | 2 | 1 (0.50x) |" in text
    verdicts = run.verdicts(results, run.FULL)
    assert "FAIL  upload_mbps >= 0.8 x OpenSSH" in verdicts
    assert "PASS  download_mbps >= 0.8 x OpenSSH" in verdicts


def test_quick_run_measures_every_metric(openssh_sshd: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable,
        str(BENCHMARKS / "run.py"),
        "--quick",
        "--impl",
        "openssh",
        "--impl",
        "rtunnel",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    keys = {key for key, _, _ in run.METRICS}
    for name in ("openssh", "rtunnel"):
        assert set(data["medians"][name]) == keys
        assert data["medians"][name]["upload_mbps"] > 0
        assert data["medians"][name]["peak_rss_mib"] > 0
    assert "| bulk upload, MB/s |" in result.stdout
    assert "(rtunnel)" not in result.stdout  # the table's columns are the implementations
    assert "| metric | openssh | rtunnel |" in result.stdout


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com"])
def test_the_cipher_is_forced_for_every_implementation(cipher: str) -> None:
    args = run.parse_args(["--cipher", cipher])
    setup = run.Setup(
        server=run.OpenSSHServer(Path("/nonexistent")),
        key=Path("k"),
        cipher=cipher,
        target_port=1,
        workdir=Path("w"),
    )
    setup.server._port = 2222
    assert args.cipher == cipher
    for name, build in run.IMPLEMENTATIONS.items():
        assert cipher in build(setup, 3333), name


def test_the_policy_benchmark_runs_each_variant_with_its_option(
    openssh_sshd: str, tmp_path: Path
) -> None:
    """benchmarks/policy.py (issue #15): the three commands differ only in their
    ForwardPolicy, and a --quick run measures every metric of each."""
    import policy

    setup = run.Setup(
        server=run.OpenSSHServer(Path("/nonexistent")),
        key=Path("k"),
        cipher="aes128-gcm@openssh.com",
        target_port=1,
        workdir=Path("w"),
    )
    setup.server._port = 2222
    plain = policy.VARIANTS["none"](setup, 3333)
    for name, words in (("allow-list", "allow=127.0.0.0/8,::1"), ("bandwidth", "bandwidth=64G")):
        command = policy.VARIANTS[name](setup, 3333)
        assert command == [*plain[:-1], "-o", f"ForwardPolicy=127.0.0.1:3333 {words}", plain[-1]]
    out = tmp_path / "policy.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "policy.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    medians = json.loads(out.read_text())["medians"]
    keys = {key for key, _, _ in policy.METRICS}
    assert sorted(medians) == ["allow-list", "bandwidth", "none"]
    for row in medians.values():
        assert set(row) == keys and row["download_mbps"] > 0
    assert "| metric | none | allow-list | bandwidth |" in result.stdout
