"""
``twistd -n rtunnel`` as a process (rtunnel/tap.py): giving up exits with status 255 and
removes the pid file (twistd's own status is always 0, which defeats systemd's
``Restart=on-failure``); SIGHUP is logged and the service carries on (twistd installs no
handler: the signal used to end it silently, leaving ``twistd.pid`` behind); a bad
``--config`` file is a usage error naming the line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: twistd from the checkout (the current directory on sys.path finds the plugin).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(tmp_path)
    return env


def _twistd(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TWISTD, "-n", f"--pidfile={tmp_path / 'twistd.pid'}", "--logfile=-", "rtunnel", *args],
        cwd=REPO_ROOT,
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def test_giving_up_exits_255_and_removes_the_pid_file(tmp_path: Path) -> None:
    twistd = _twistd(
        tmp_path, "-p", str(_free_port()), "-o", "BatchMode=yes", "-R", "0:h:1", "127.0.0.1"
    )
    output, _ = twistd.communicate(timeout=60)
    assert twistd.returncode == 255, output
    assert "rtunnel: giving up; twistd exits with status 255." in output
    assert "Connection refused" in output
    assert not (tmp_path / "twistd.pid").exists()
    assert "Traceback" not in output, output


def test_sighup_is_logged_and_the_service_carries_on(tmp_path: Path) -> None:
    # AutoReconnect=always keeps it trying a closed port: running, and not giving up.
    twistd = _twistd(
        tmp_path,
        *["-p", str(_free_port()), "-o", "BatchMode=yes", "-o", "AutoReconnect=always"],
        *["-R", "0:h:1", "127.0.0.1"],
    )
    try:
        _wait_for_file(tmp_path / "twistd.pid", 30)
        time.sleep(1.0)  # the service has started: its SIGHUP handler is in
        twistd.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert twistd.poll() is None, "SIGHUP ended twistd"
        twistd.send_signal(signal.SIGTERM)
        output, _ = twistd.communicate(timeout=30)
    finally:
        if twistd.poll() is None:
            twistd.kill()
            twistd.communicate()
    # twistd ends itself with the signal it was stopped by (app._exitWithSignal), which
    # systemd counts as a clean stop.
    assert twistd.returncode == -signal.SIGTERM, output
    assert "giving up" not in output and "abandoned" not in output, output
    assert "SIGHUP: no configuration file to reload (use --config FILE); carrying on." in output
    assert not (tmp_path / "twistd.pid").exists()
    assert "Traceback" not in output, output


def test_a_bad_config_is_a_usage_error_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "tunnels.toml"
    config.write_text('[tunnel.a]\nhost = "h"\nforwards = ["1:h:2"]\nPrt = 22\n')
    twistd = _twistd(tmp_path, "--config", str(config))
    output, _ = twistd.communicate(timeout=60)
    assert twistd.returncode == 1, output  # twistd's status for a usage error
    assert f"{config} line 4: tunnel.a.Prt: unknown key; did you mean Port?" in output
    twistd = _twistd(tmp_path, "--config", str(config), "-R", "1:h:2", "host")
    output, _ = twistd.communicate(timeout=60)
    assert twistd.returncode == 1, output
    assert "--config runs the file's tunnels: give no destination or -R with it" in output
