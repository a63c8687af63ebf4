"""
The command's mistakes around issue #14's options: one clear line and status 255, never a
traceback, before anything connects (nothing listens at the destination's port here).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from command_support import PYTHON_CLI, _clean_env


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON_CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(tmp_path),
        cwd=tmp_path,
    )


def _tunnel(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return _run(tmp_path, "-o", "BatchMode=yes", *options, "-R", "0:127.0.0.1:9", "127.0.0.1")


@pytest.mark.parametrize(
    ("option", "line"),
    [
        (
            "HttpListen=localhost",
            "command-line line 0: Bad HttpListen 'localhost': give PORT, ADDRESS:PORT, "
            "[IPV6]:PORT or none",
        ),
        (
            "HttpListen=::1:80",
            "command-line line 0: Bad HttpListen '::1:80': give PORT, ADDRESS:PORT, "
            "[IPV6]:PORT or none",
        ),
        ("LogFormat=xml", "command-line line 0: unsupported log format 'xml': give text or json"),
    ],
)
def test_bad_values(tmp_path: Path, option: str, line: str) -> None:
    result = _tunnel(tmp_path, "-o", option)
    assert (result.returncode, result.stdout, result.stderr) == (255, "", line + "\n")


def test_a_control_directory_others_can_enter(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    result = _tunnel(tmp_path, "-o", f"ControlSocket={shared}/rt.sock")
    assert (result.returncode, result.stderr) == (
        255,
        f"rtunnel: control socket directory {shared} is open to others (mode 0755): "
        f"run chmod 700 {shared}\n",
    )


def test_an_http_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _tunnel(tmp_path, "-o", f"HttpListen=127.0.0.1:{port}")
    assert result.returncode == 255
    assert result.stderr.startswith(f"rtunnel: cannot listen on 127.0.0.1:{port} for HttpListen: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_status_usage_and_mistakes(tmp_path: Path) -> None:
    shown = _run(tmp_path, "status", "--help")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout.startswith("usage: rtunnel status [--json] [-S control_socket]\n")
    wrong = _run(tmp_path, "status", "--bogus")
    assert wrong.returncode == 255
    assert wrong.stderr.startswith("rtunnel status: unexpected argument '--bogus'\n")
    missing = _run(tmp_path, "status", "-S")
    assert (missing.returncode, missing.stderr) == (
        255,
        "rtunnel status: option requires an argument -- S\n",
    )
