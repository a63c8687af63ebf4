"""
The soak harness (``benchmarks/soak.py``, issue #12): its arithmetic as plain functions,
and one ``--short`` run against real OpenSSH sshds, whose machine-readable summary is held
to two-sided bounds computed here from the plan.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _soak_check as check  # noqa: E402
import soak  # noqa: E402

MIB = 1 << 20

# sshd 9.2p1 at LogLevel DEBUG1, trimmed: the first exchange, one the client started, one
# the server started (lines from a real log).
SSHD_LOG = """\
debug1: SSH2_MSG_KEXINIT sent [preauth]
debug1: SSH2_MSG_KEXINIT received [preauth]
debug1: kex: algorithm: curve25519-sha256 [preauth]
debug1: SSH2_MSG_NEWKEYS received [preauth]
Accepted publickey for root from 127.0.0.1 port 40010 ssh2: ED25519 SHA256:w+n/R15X9Hp
debug1: SSH2_MSG_KEXINIT received
debug1: SSH2_MSG_KEXINIT sent
debug1: kex: algorithm: curve25519-sha256
debug1: enqueue packet: 93
debug1: ssh_set_newkeys: rekeying out, input 793028 bytes 98705 blocks, output 5564 bytes
debug1: SSH2_MSG_KEXINIT sent
debug1: SSH2_MSG_KEXINIT received
debug1: ssh_set_newkeys: rekeying in, input 4268252 bytes 266639 blocks, output 3293568
"""


def test_sshd_log_says_who_started_each_key_exchange() -> None:
    log = check.KexLog()
    log.feed(SSHD_LOG)
    assert (log.initial, log.by_client, log.by_server) == (1, 1, 1)
    assert log.rekeys == 2
    assert check.count_logons(SSHD_LOG) == 1


def test_sshd_log_read_in_pieces_that_split_lines() -> None:
    log = check.KexLog()
    text = SSHD_LOG * 3
    for start in range(0, len(text), 7):
        log.feed(text[start : start + 7])
    assert (log.initial, log.by_client, log.by_server) == (3, 3, 3)


def test_rekey_band_is_bytes_over_limit_two_sided() -> None:
    nominal, low, high = check.rekey_band(100 * MIB, 4 * MIB)
    assert (nominal, low, high) == (25.0, 23.0, 27.0)
    # The receiver of the busy direction may see a window's worth more per exchange.
    nominal, low, high = check.rekey_band(100 * MIB, 4 * MIB, late=4 * MIB)
    assert (nominal, low, high) == (25.0, 10.5, 27.0)
    # sshd may start up to 512 KiB early (OpenSSH 9.2's ROUNDUP in blocks).
    _, low, high = check.rekey_band(56 * MIB, 4 * MIB, early=MIB // 2)
    assert (low, high) == (12.0, 18.0)


@pytest.mark.parametrize(
    ("rekeys", "client", "server_log", "failing"),
    [
        # Right: every rekey due, all by the client, both counts agree.
        (25, (25, 0), (25, 0), set()),
        # The storm of issue #12: thousands where 25 were due.
        (2312, (2312, 0), (2312, 0), {"count rtunnel", "count sshd"}),
        # Too few (a lower bound alone would have passed 0 < 25 ...).
        (0, (0, 0), (0, 0), {"count rtunnel", "count sshd"}),
        # The right number, but the server started some.
        (25, (20, 5), (20, 5), {"initiator rtunnel", "initiator sshd"}),
    ],
)
def test_rekey_check(
    rekeys: int, client: tuple[int, int], server_log: tuple[int, int], failing: set[str]
) -> None:
    checks = check.rekey_check(
        "client-down", "client", "down", 100 * MIB, 4 * MIB, rekeys, client, server_log
    )
    names = ["count rtunnel", "initiator rtunnel", "count sshd", "initiator sshd"]
    assert {name for name, c in zip(names, checks, strict=True) if not c.ok} == failing


def test_a_failure_in_a_fault_window_is_cut_any_other_lost_wrong_bytes_always_count() -> None:
    windows = [check.FaultWindow(10.0, 14.0)]
    cut = check.Failure("faults", "upload", 9.0, 10.5, "reset")
    lost = check.Failure("faults", "upload", 20.0, 21.0, "reset")
    corrupt = check.Failure("faults", "download", 11.0, 12.0, "sha256", corrupted=True)
    split = check.split_failures([cut, lost, corrupt], windows)
    assert (split.cut, split.lost, split.corrupted) == ([cut], [lost], [corrupt])


def test_growth_and_verdict_lines() -> None:
    assert check.growth(100.0, [90.0, 130.0, 120.0]) == 30.0
    assert check.growth(100.0, [90.0]) == 0.0
    assert check.growth(None, [1.0]) == 0.0
    lines = check.verdict_lines([check.Check("a", True), check.Check("b", False, "why")])
    assert lines == ["PASS  a", "FAIL  b: why"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --short or --minutes N"),
        (["--minutes", "0"], "--minutes must be positive"),
        (["--short", "--minutes", "5"], "not allowed with argument"),
        (["--short", "--rekey-mib", "0"], "--rekey-mib must be 1-1024"),
    ],
)
def test_bad_arguments_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        soak.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _busy_bytes(plan: dict[str, Any]) -> tuple[int, int]:
    """
    Bytes the load writes (up tunnels) or reads (down tunnels) in the busy direction: the
    bulk transfers and probes, plus at most the echoes and the protocol bytes around them.
    """
    bulk = plan["rounds"] * plan["bulk_bytes"] + 2 * plan["probe_repeats"] * plan["probe_bytes"]
    echoes = plan["rounds"] * (
        plan["short"] * (plan["short_bytes"] + 1)
        + plan["concurrent"] * (plan["concurrent_bytes"] + 1)
        + 17
    )
    return bulk, bulk + echoes + 2 * plan["probe_repeats"] * 40 + 65


#: (early, late) per rekey tunnel: see soak.Role.rekey_slack; written out here on purpose.
SLACK = {
    "client-down": (0, 33 * 1024),
    "server-up": (16 * (32 * 1024 + 16), 33 * 1024),
    "client-up": (0, 2 * MIB + 100 * 16 * 1024),
    "server-down": (0, 2 * MIB + 100 * 16 * 1024),
}


def test_short_soak_passes(openssh_sshd: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "soak.py"), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert out.exists(), report
    data = json.loads(out.read_text())
    failed = "\n".join(f"FAIL {c['name']}: {c['detail']}" for c in data["checks"] if not c["ok"])
    assert result.returncode == 0, failed or report
    assert_summary(data)


def assert_summary(data: dict[str, Any]) -> None:
    """What a passing ``--short`` run's summary must say, bounded here on both sides."""
    assert data["ok"] and not data["failed"]
    plan = data["plan"]
    assert plan == json.loads(json.dumps(dataclasses.asdict(soak.SHORT)))
    limit = plan["limit"]
    low_bytes, high_bytes = _busy_bytes(plan)
    transfers = 1 + plan["rounds"] * (1 + plan["short"] + plan["concurrent"])
    transfers += 2 * plan["probe_repeats"]
    for name, (early, late) in SLACK.items():
        t = data["tunnels"][name]
        busy = t["bytes_up"] if name.endswith("-up") else t["bytes_down"]
        assert low_bytes <= busy <= high_bytes, (name, busy)
        assert t["transfers"] == transfers, name
        assert (t["sessions"], t["logons_in_sshd_log"]) == (1, 1), name
        _, low, high = check.rekey_band(busy, limit, early, late)
        # Dozens (not thousands), two-sided, by both counts, all by the limited side.
        assert 30 <= low <= t["rekeys"] <= high <= 250, (name, t["rekeys"], low, high)
        sshd = t["sshd_rekeys_by_client"] + t["sshd_rekeys_by_server"]
        assert abs(sshd - t["rekeys"]) <= 1, name
        if name.startswith("client"):
            assert t["rekeys_by_server"] == t["sshd_rekeys_by_server"] == 0, name
            assert t["rekeys_by_us"] == t["rekeys"], name
        else:
            assert t["rekeys_by_us"] == t["sshd_rekeys_by_client"] == 0, name
            assert t["rekeys_by_server"] == t["rekeys"], name
    for name, t in data["tunnels"].items():
        assert t["fds_end"] == t["fds_baseline"], name
        assert t["channels_end"] == 0, name
        assert 0 <= t["rss_growth_mib"] < 16, name
    idle = data["tunnels"]["idle"]
    assert idle["sessions"] == 1
    assert idle["idle_seconds"] >= 40
    k = plan["keepalive_interval"]
    assert 0.5 * idle["idle_seconds"] / k <= idle["keepalives_sent"] <= idle["idle_seconds"] / k + 2
    faults = data["faults"]
    assert [f["kind"] for f in faults] == plan["faults"]
    for f in faults:
        assert f["back_after"] is not None and 0.1 < f["back_after"] <= f["bound"], f
        assert f["first_retry"] == 1, f
        if f["kind"] == "freeze":
            detect = k * (plan["keepalive_count_max"] + 1) + 1
            assert k * plan["keepalive_count_max"] <= f["detected_after"] <= detect, f
    assert data["fault_transfers"]["incomplete"] == 0
    assert data["fault_transfers"]["total"] > 50
    assert all(f["tunnel"] == "faults" and not f["corrupted"] for f in data["failures"])
    names = {c["name"] for c in data["checks"]}
    assert "throughput up, end >= 0.8 x start (MB per tunnel CPU second)" in names
    assert "zero bytes lost or corrupted" in names
