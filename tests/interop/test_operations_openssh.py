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
import json
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


# --------------------------------------------------------------------------------------
# rtunnel --config and twistd rtunnel --config: the same, for many tunnels

#: twistd from the checkout (the current directory on sys.path finds the plugin).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_servers(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> Iterator[tuple[OpenSSHServer, OpenSSHServer]]:
    public = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text().strip()
    servers = [
        OpenSSHServer(tmp_path / name, authorized_keys=[public], sshd_path=openssh_sshd)
        for name in ("sshd1", "sshd2")
    ]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _tunnel_table(name: str, server: OpenSSHServer, key: Path, forwards: list[str]) -> str:
    listed = ", ".join(f'"{f}"' for f in forwards)
    return (
        f'[tunnel.{name}]\nhost = "{server.host}"\nPort = {server.port}\n'
        f'User = "{server.user}"\nIdentityFile = "{key}"\n'
        f'UserKnownHostsFile = "{server.known_hosts_path}"\nRetryInterval = 1\n'
        f"forwards = [{listed}]\n"
    )


def _config_env(tmp_path: Path, notify_path: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SSH_")},
        "HOME": str(home),
        "NOTIFY_SOCKET": notify_path,
    }


def _json_lines(child: _Child) -> list[dict[str, Any]]:
    """Every stderr line, each one JSON (LogFormat=json leaves no text line)."""
    return [json.loads(line) for line in list(child.lines)]


def _logged(child: _Child, tunnel: str | None, pattern: str) -> re.Match[str]:
    compiled = re.compile(pattern)

    def find() -> re.Match[str] | None:
        for record in _json_lines(child):
            match = compiled.search(record["message"])
            if match and record["tunnel"] == tunnel:
                return match
        return None

    return _eventually(
        find, f"a {tunnel} log line matching {pattern!r}:\n" + "\n".join(child.lines)
    )


def _status_json(control: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """``rtunnel status --json -S control``'s tunnels."""
    run = subprocess.run(
        [sys.executable, "-m", "rtunnel.cli", "status", "--json", "-S", str(control)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=env,
    )
    assert (run.returncode, run.stderr) == (0, ""), run.stderr
    (answer,) = json.loads(run.stdout)["rtunnels"]
    tunnels: list[dict[str, Any]] = answer["tunnels"]
    return tunnels


def test_config_runner_status_readyz_and_systemd_for_two_servers(
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_port: int,
    fake_systemd: tuple[str, socket.socket],
    tmp_path: Path,
) -> None:
    first, second = two_servers
    notify_path, notices = fake_systemd
    control_dir = tmp_path / "control"
    control_dir.mkdir(mode=0o700)
    control = control_dir / "runner.sock"
    a_spec = f"0:127.0.0.1:{echo_port}"
    b_specs = [f"0:127.0.0.1:{echo_port}", f"127.0.0.1:0:127.0.0.1:{echo_port}"]
    config = tmp_path / "tunnels.toml"
    config.write_text(
        f'[process]\nControlSocket = "{control}"\nHttpListen = "127.0.0.1:0"\n'
        'LogFormat = "json"\n'
        + _tunnel_table("a", first, openssh_client_key, [a_spec])
        + _tunnel_table("b", second, openssh_client_key, b_specs)
    )
    env = _config_env(tmp_path, notify_path)
    child = _Child([sys.executable, "-m", "rtunnel.cli", "--config", str(config), "-v"], env)
    try:
        http = int(_logged(child, None, r"^Health and metrics on http://127\.0\.0\.1:(\d+)/$")[1])
        allocated = r"^Allocated port (\d+) for remote forward to 127\.0\.0\.1:" + str(echo_port)
        a_port = int(_logged(child, "a", allocated)[1])
        assert _eventually(lambda: _get(http, "/readyz") == (200, "ready\n"), "/readyz ready")
        tunnels = _status_json(control, env)
        b_ports = [f["allocated_port"] for f in tunnels[1]["forwards"]]
        assert a_port == tunnels[0]["forwards"][0]["allocated_port"]

        # a: one connection of 100,000; b: 70,000 and 30,000 through its first forward,
        # nothing through its second.
        _echo(a_port, os.urandom(100_000)).close()
        _echo(b_ports[0], os.urandom(70_000)).close()
        _echo(b_ports[0], os.urandom(30_000)).close()

        def all_closed() -> list[dict[str, Any]] | None:
            tunnels = _status_json(control, env)
            counts = [f["channels_total"] for t in tunnels for f in t["forwards"]]
            opened = [f["channels_open"] for t in tunnels for f in t["forwards"]]
            return tunnels if counts == [1, 2, 0] and opened == [0, 0, 0] else None

        a, b = _eventually(all_closed, "three connections counted closed")
        assert [(t["name"], t["state"], t["ready"], t["reconnects"]) for t in (a, b)] == [
            ("a", "connected", True, 0),
            ("b", "connected", True, 0),
        ]
        assert a["server"] == f"{first.user}@{first.host}:{first.port}"
        assert b["server"] == f"{second.user}@{second.host}:{second.port}"
        assert [
            (f["name"], f["state"], f["allocated_port"], f["bytes_in"], f["bytes_out"])
            for t in (a, b)
            for f in t["forwards"]
        ] == [
            (a_spec, "active", a_port, 100_000, 100_000),
            (b_specs[0], "active", b_ports[0], 100_000, 100_000),
            (b_specs[1], "active", b_ports[1], 0, 0),
        ]
        assert len({a_port, *b_ports}) == 3
        samples = _metrics_by_tunnel(http)
        assert samples[("rtunnel_forward_received_bytes_total", "a", a_spec)] == 100_000
        assert samples[("rtunnel_forward_channels_total", "b", b_specs[0])] == 2

        # b's server kills its session: unready (b named), a untouched; ready again.
        assert second.kill_sessions()
        code, body = _eventually(
            lambda: (r := _get(http, "/readyz"))[0] == 503 and r, "/readyz unready"
        )
        assert "tunnel b" in body and "tunnel a" not in body
        assert _eventually(lambda: _get(http, "/readyz") == (200, "ready\n"), "ready again")
        a, b = _status_json(control, env)
        assert (a["reconnects"], b["reconnects"]) == (0, 1)
        assert b["last_error"] is not None
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
    assert _notices(notices) == ["STOPPING=1"]
    # READY=1 once, when every forward of both tunnels was first active: not before, and
    # not again after b's reconnect.
    ready = [m for m in before_stop if "READY=1" in m]
    assert ready == [
        "READY=1\nSTATUS=a: connected, 1/1 forwards active; b: connected, 2/2 forwards active"
    ]
    ready_at = before_stop.index(ready[0])
    assert all("2/2" not in m or "1/1" not in m for m in before_stop[:ready_at])
    statuses = [m.split("STATUS=", 1)[1] for m in before_stop if "STATUS=" in m]
    assert any("b: " in s and "0/2 forwards active" in s for s in statuses[ready_at:])
    assert statuses[-1] == "a: connected, 1/1 forwards active; b: connected, 2/2 forwards active"
    # Every line was JSON (parsed above), tunnel lines named their tunnel.
    records = _json_lines(child)
    assert {r["tunnel"] for r in records} == {None, "a", "b"}
    assert not [r for r in records if r["message"].startswith("[")]
    assert not [r for r in records if r["level"] in ("critical", "error")]


def _metrics_by_tunnel(port: int) -> dict[tuple[str, str, str], float]:
    code, text = _get(port, "/metrics")
    assert code == 200
    return {
        (s.name, s.labels["tunnel"], s.labels["forward"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "forward" in s.labels
    }


def test_twistd_config_answers_rtunnel_status_and_tells_systemd(
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_port: int,
    fake_systemd: tuple[str, socket.socket],
    tmp_path: Path,
) -> None:
    first, second = two_servers
    notify_path, notices = fake_systemd
    control_dir = tmp_path / "control"
    control_dir.mkdir(mode=0o700)
    in_file, given = control_dir / "file.sock", control_dir / "given.sock"
    spec = f"0:127.0.0.1:{echo_port}"
    config = tmp_path / "tunnels.toml"
    config.write_text(
        f'[process]\nControlSocket = "{in_file}"\n'
        + _tunnel_table("a", first, openssh_client_key, [spec])
        + _tunnel_table("b", second, openssh_client_key, [spec])
    )
    env = _config_env(tmp_path, notify_path)
    pid_file = tmp_path / "twistd.pid"
    argv = [*TWISTD, "-n", f"--pidfile={pid_file}", "--logfile=-", "rtunnel"]
    # -o wins over the file's [process] table.
    argv += ["-o", f"ControlSocket={given}", "--config", str(config)]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    child_lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            child_lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    try:

        def both_active() -> list[dict[str, Any]] | None:
            if not given.exists():
                return None
            tunnels = _status_json(given, env)
            return tunnels if all(t["ready"] for t in tunnels) else None

        a, b = _eventually(both_active, "twistd's tunnels shown active:\n" + "\n".join(child_lines))
        assert (a["name"], b["name"]) == ("a", "b")
        port = b["forwards"][0]["allocated_port"]
        _echo(port, os.urandom(10_000)).close()
        (_, b) = _eventually(
            lambda: (
                (t := _status_json(given, env))[1]["forwards"][0]["channels_total"] == 1
                and t[1]["forwards"][0]["channels_open"] == 0
                and t
            ),
            "the connection counted",
        )
        assert (b["forwards"][0]["bytes_in"], b["forwards"][0]["bytes_out"]) == (10_000, 10_000)
        assert not in_file.exists()
        status = subprocess.run(
            [sys.executable, "-m", "rtunnel.cli", "status", "-S", str(given)],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            env=env,
        )
        assert status.returncode == 0, status.stderr
        assert re.search(rf"^a\s+{first.user}@", status.stdout, re.M), status.stdout
        assert re.search(rf"^b\s+{second.user}@", status.stdout, re.M), status.stdout
        before_stop = _notices(notices)
    finally:
        process.terminate()
        try:
            process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert not given.exists()
    assert [m for m in before_stop if "READY=1" in m] == [
        "READY=1\nSTATUS=a: connected, 1/1 forwards active; b: connected, 1/1 forwards active"
    ]
    assert _notices(notices) == ["STOPPING=1"]
    assert not [line for line in child_lines if "Traceback" in line], "\n".join(child_lines)
