"""
Issue #14 against a real sshd: the ``rtunnel`` command with ``-o ControlSocket``,
``-o HttpListen`` and a fake systemd (``NOTIFY_SOCKET``), read while traffic flows and
after the server's session is killed. The counters are exact (the bytes echoed, the
connections made); ``/readyz`` goes unready, then ready again after the reconnect;
systemd hears ``READY=1`` exactly once, a ``STATUS=`` line for each change, and
``STOPPING=1`` at the end.

A plain test: the command is a child process and every client here blocks (the control
socket, HTTP, the echo connections), so no reactor is involved.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtunnel.operations.control import query
from rtunnel.testing import OpenSSHServer

T = TypeVar("T")

#: How long anything here may take to happen (a loaded 2-core machine; nothing here
#: waits this long when it works).
PATIENCE = 30.0


class _Child:
    """The command, its stderr lines collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match[str]:
        compiled = re.compile(pattern)
        return _eventually(
            lambda: next((m for line in self.lines if (m := compiled.search(line))), None),
            f"a stderr line matching {pattern!r}; stderr:\n" + "\n".join(self.lines),
        )


def _eventually(check: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {PATIENCE:g} s: {what}")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metrics(port: int) -> dict[str, float]:
    """``/metrics``' samples of the one forward and tunnel, by name."""
    code, text = _get(port, "/metrics")
    assert code == 200
    return {
        s.name + (f"[{s.labels['state']}]" if "state" in s.labels else ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _echo(port: int, payload: bytes) -> socket.socket:
    """Connect to the forwarded port, send ``payload``, read it all back; still open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    s.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = s.recv(65536)
        assert chunk, f"closed after {len(received)} of {len(payload)} bytes"
        received += chunk
    assert received == payload
    return s


def _notices(listener: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(listener.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def echo_port() -> Iterator[int]:
    """An echo server, a thread per connection, that outlives a reset connection (rtunnel
    resets its local sockets when the SSH session dies, RELIABILITY.md A4)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield int(listener.getsockname()[1])
    listener.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    s.bind(str(path))
    s.setblocking(False)
    yield str(path), s
    s.close()


def test_status_metrics_and_systemd_through_a_killed_session(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    echo_port: int,
    fake_systemd: tuple[str, socket.socket],
    tmp_path: Path,
) -> None:
    notify_path, notices = fake_systemd
    control_dir = tmp_path / "control"
    control_dir.mkdir(mode=0o700)
    control = control_dir / "rtunnel.sock"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SSH_")},
        "HOME": str(home),
        "NOTIFY_SOCKET": notify_path,
    }
    spec = f"0:127.0.0.1:{echo_port}"
    argv = [
        *[sys.executable, "-m", "rtunnel.cli", "-v", "-N", "-o", "BatchMode=yes"],
        *["-o", f"UserKnownHostsFile={openssh_server.known_hosts_path}"],
        *["-i", str(openssh_client_key), "-p", str(openssh_server.port)],
        *["-o", f"ControlSocket={control}", "-o", "HttpListen=127.0.0.1:0"],
        *["-o", "RetryInterval=1", "-R", spec],
        f"{openssh_server.user}@{openssh_server.host}",
    ]
    child = _Child(argv, env)
    try:
        forward_port = int(child.wait_for(r"^Allocated port (\d+) for remote forward").group(1))
        http = int(child.wait_for(r"Health and metrics on http://127\.0\.0\.1:(\d+)/").group(1))
        assert _eventually(lambda: _get(http, "/readyz") == (200, "ready\n"), "/readyz ready")
        assert _get(http, "/healthz") == (200, "ok\n")

        # Traffic: two connections closed, a third still open while we look.
        _echo(forward_port, os.urandom(100_000)).close()
        _echo(forward_port, os.urandom(70_000)).close()
        open_one = _echo(forward_port, os.urandom(5_000))

        def one_open() -> dict[str, Any] | None:
            (tunnel,) = query(control)["tunnels"]
            return tunnel if tunnel["forwards"][0]["channels_open"] == 1 else None

        tunnel = _eventually(one_open, "the two closed channels counted closed")
        (forward,) = tunnel["forwards"]
        assert tunnel["server"] == f"{openssh_server.user}@127.0.0.1:{openssh_server.port}"
        assert (tunnel["state"], tunnel["reconnects"], tunnel["last_error"]) == (
            "connected",
            0,
            None,
        )
        assert tunnel["key_exchanges"] == 1
        assert (forward["name"], forward["state"], forward["allocated_port"]) == (
            spec,
            "active",
            forward_port,
        )
        assert forward["listen"] == f"localhost:{forward_port}"
        assert (forward["channels_open"], forward["channels_total"]) == (1, 3)
        # Every byte sent was echoed back and read before we asked: exact both ways.
        assert (forward["bytes_in"], forward["bytes_out"]) == (175_000, 175_000)
        samples = _metrics(http)
        assert samples["rtunnel_forward_channels_open"] == 1
        assert samples["rtunnel_forward_channels_total"] == 3
        assert samples["rtunnel_forward_received_bytes_total"] == 175_000
        assert samples["rtunnel_forward_sent_bytes_total"] == 175_000
        assert samples["rtunnel_tunnel_state[connected]"] == 1
        assert samples["rtunnel_forward_state[active]"] == 1
        assert samples["rtunnel_tunnel_reconnects_total"] == 0
        status = subprocess.run(
            [sys.executable, "-m", "rtunnel.cli", "status", "-S", str(control)],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            env=env,
        )
        assert (status.returncode, status.stderr) == (0, "")
        row = status.stdout.splitlines()[2].split()
        assert row == [spec, "active", f"localhost:{forward_port}", "1/3", "175000", "175000"]

        # The server's session dies: unready, then ready again on the reconnect.
        killed_at = time.time()
        assert openssh_server.kill_sessions()
        assert _eventually(lambda: _get(http, "/readyz")[0] == 503, "/readyz unready")
        open_one.close()
        assert _eventually(lambda: _get(http, "/readyz") == (200, "ready\n"), "ready again")
        (tunnel,) = query(control)["tunnels"]
        (forward,) = tunnel["forwards"]
        assert (tunnel["state"], tunnel["reconnects"], tunnel["key_exchanges"]) == (
            "connected",
            1,
            2,
        )
        assert tunnel["last_error"] is not None
        assert killed_at - 1 <= tunnel["last_error_time"] <= tunnel["since"]
        new_port = forward["allocated_port"]
        assert forward["state"] == "active" and new_port is not None
        _echo(new_port, os.urandom(1_000)).close()
        (tunnel,) = _eventually(
            lambda: (t := query(control)["tunnels"])[0]["forwards"][0]["channels_open"] == 0 and t,
            "the last channel closed",
        )
        (forward,) = tunnel["forwards"]
        # The killed session's channel kept what it had carried: 176,000 each way at most
        # (the 5,000 echoed before the kill counted once), 4 connections in all.
        assert (forward["channels_open"], forward["channels_total"]) == (0, 4)
        assert (forward["bytes_in"], forward["bytes_out"]) == (176_000, 176_000)
        assert _metrics(http)["rtunnel_tunnel_reconnects_total"] == 1
        before_stop = _notices(notices)
    finally:
        child.process.terminate()
        try:
            code = child.process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            child.process.kill()
            raise
    assert code == 0, "\n".join(child.lines)
    assert not control.exists()
    # Told as the shutdown began (sd_notify(3)), before logoff cancelled the forward; no
    # STATUS line after it.
    assert _notices(notices) == ["STOPPING=1"]
    said = before_stop
    assert [m for m in said if "READY=1" in m] == [
        "READY=1\nSTATUS=" + f"{openssh_server.host}: connected, 1/1 forwards active"
    ]
    assert said[0].startswith("STATUS=")
    statuses = [m.split("STATUS=", 1)[1] for m in said if "STATUS=" in m]
    # Up, down (waiting or already connecting again), up again: no line repeated in a row.
    assert any("0/1 forwards active" in s for s in statuses[1:])
    assert statuses[-1] == f"{openssh_server.host}: connected, 1/1 forwards active"
    assert all(a != b for a, b in itertools.pairwise(statuses))
    assert 3 <= len(statuses) <= 8, statuses
