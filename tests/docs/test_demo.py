"""
``python -m rtunnel.demo``, the README's first command: run as a user would run it, in a
subprocess, it must fetch the page through the tunnel and exit 0 on its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from rtunnel.demo import BODY

ROOT = Path(__file__).resolve().parents[2]

#: The README promises "under 10 s"; a loaded CI machine gets some slack before the
#: subprocess is killed, and the time actually taken is checked separately.
KILL_AFTER = 60


def test_demo_fetches_the_page_through_the_tunnel() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-m", "rtunnel.demo"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=KILL_AFTER,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    # OpenSSH's own line for ssh -R 0:127.0.0.1:PORT.
    allocated = re.search(
        r"^Allocated port (\d+) for remote forward to 127\.0\.0\.1:(\d+)$", output, re.M
    )
    assert allocated is not None, output
    remote_port = allocated.group(1)
    assert re.search(rf"^GET http://127\.0\.0\.1:{remote_port}/ -> HTTP 200 OK$", output, re.M)
    assert BODY.decode().strip() in output
    # The channel table: one channel, from a loopback client, closed, bytes both ways.
    rows = re.findall(r"^\s+0\s+127\.0\.0\.1:\d+\s+(\d+)\s+(\d+)\s+closed$", output, re.M)
    assert len(rows) == 1, output
    bytes_in, bytes_out = (int(n) for n in rows[0])
    assert bytes_in > 0
    assert bytes_out > len(BODY)
    assert "logged off" in output
    assert len(output.splitlines()) <= 15, output
    assert elapsed < 10, f"the demo took {elapsed:.1f} s"


def test_demo_module_imports_without_the_test_extra() -> None:
    """
    The demo runs after a plain ``pip install -e .`` (no pytest): neither it nor what it
    imports may need the ``test`` extra.
    """
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('pytest', 'pytest_twisted', 'hypothesis'):\n"
        "        raise ImportError('test extra used: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import rtunnel.demo\n"
        "from rtunnel.testing import SSHTestServer, generate_client_key\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=KILL_AFTER,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
