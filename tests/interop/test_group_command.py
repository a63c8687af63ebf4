"""
Tunnel groups (issue #15) through the real command against real sshds: ``rtunnel
--config`` with a ``servers`` list (failover: a killed session moves the forward, shown
by ``rtunnel status --json``; a reload leaves an unchanged group alone and restarts a
changed one), and ``rtunnel -o GroupServer=... -o GroupMode=all`` (one server stopped,
the other keeps serving). The library's group: tests/interop/test_groups.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from group_support import sshds
from sockets import TargetServer, echo, exchange
from test_config_runner import PYTHON_CLI, Command, _env

from rtunnel.testing import OpenSSHServer


def _server_table(name: str, server: OpenSSHServer) -> str:
    return (
        f'  {{ name = "{name}", host = "{server.host}", Port = {server.port}, '
        f'UserKnownHostsFile = "{server.known_hosts_path}" }},\n'
    )


def _group_file(servers: list[OpenSSHServer], key: Path, target: int, control: Path) -> str:
    listed = "".join(_server_table(f"s{n}", s) for n, s in enumerate(servers))
    return f"""
[process]
ControlSocket = "{control}"

[tunnel.web]
GroupMode = "failover"
User = "{servers[0].user}"
IdentityFile = "{key}"
forwards = ["0:127.0.0.1:{target}"]
servers = [
{listed}]
"""


def _allocated_on(command: Command, server: str, start: int = 0) -> int:
    match = command.wait_for(
        rf"^\[web\] Allocated port (\d+) for remote forward to 127\.0\.0\.1:\d+ on {server}$",
        start,
    )
    return int(match.group(1))


def _status(control: Path, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [*PYTHON_CLI, "status", "--json", "-S", str(control)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer = json.loads(done.stdout)["rtunnels"][0]["tunnels"][0]
    assert isinstance(answer, dict)
    return answer


def test_config_failover_status_and_reload(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> None:
    target = TargetServer(echo)
    control = tmp_path / "control.sock"
    env = _env(tmp_path)
    with sshds(tmp_path, openssh_sshd, openssh_client_key, 3) as servers:
        config = tmp_path / "tunnels.toml"
        config.write_text(_group_file(servers[:2], openssh_client_key, target.port, control))
        command = Command([*PYTHON_CLI, "--config", str(config)], env)
        try:
            first = _allocated_on(command, "s0")
            command.wait_for(r"^\[web\] The group is ready\.$")
            assert exchange(first, b"through s0") == b"through s0"
            status = _status(control, env)
            assert status["ready"] is True
            group = status["group"]
            assert isinstance(group, dict)
            assert group["mode"] == "failover" and group["serving"] == "s0"
            roles = [(m["name"], m["role"]) for m in group["members"]]
            assert roles == [("s0", "serving"), ("s1", "standby")]
            forwards = status["forwards"]
            assert isinstance(forwards, list) and forwards[0]["servers"] == ["s0"]
            assert forwards[0]["allocated_port"] == first

            mark = len(command.lines)
            servers[0].kill_sessions()
            command.wait_for(r"^\[web\] Moving the forwards from s0 to s1\.$", mark)
            moved = _allocated_on(command, "s1", mark)
            assert exchange(moved, b"through s1") == b"through s1"
            status = _status(control, env)
            group = status["group"]
            assert isinstance(group, dict) and group["serving"] == "s1"

            # The same file: the group is untouched (still served by s1).
            mark = len(command.lines)
            command.process.send_signal(signal.SIGHUP)
            command.wait_for(r"Reloaded .*: nothing changed\.$", mark)
            assert exchange(moved, b"still s1") == b"still s1"
            # A third server: the group restarts as a unit, from s0 again.
            config.write_text(_group_file(servers, openssh_client_key, target.port, control))
            mark = len(command.lines)
            command.process.send_signal(signal.SIGHUP)
            command.wait_for(r"Reloaded .*: restarted web\.$", mark)
            again = _allocated_on(command, "s0", mark)
            assert exchange(again, b"s0 again") == b"s0 again"
            status = _status(control, env)
            group = status["group"]
            assert isinstance(group, dict) and len(group["members"]) == 3
        finally:
            code = command.stop(signal.SIGTERM)
            target.close()
    assert code == 0, "\n".join(command.lines)


def test_command_group_all_survives_a_stopped_server(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> None:
    target = TargetServer(echo)
    env = _env(tmp_path)
    with sshds(tmp_path, openssh_sshd, openssh_client_key, 2) as servers:
        first, second = servers
        known = f"{first.known_hosts_path} {second.known_hosts_path}"
        argv = [
            *PYTHON_CLI,
            "-N",
            *["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}"],
            *["-i", str(openssh_client_key), "-p", str(first.port)],
            *["-o", f"GroupServer={second.user}@{second.host}:{second.port}"],
            *["-o", "GroupMode=all", "-o", "RetryInterval=1"],
            *["-R", f"0:127.0.0.1:{target.port}"],
            f"{first.user}@{first.host}",
        ]
        command = Command(argv, env)
        try:
            on_first = _allocated(command, f"{first.host}:{first.port}")
            on_second = _allocated(command, f"{second.host}:{second.port}")
            command.wait_for(r"^The group is ready\.$")
            assert exchange(on_first, b"one") == b"one"
            assert exchange(on_second, b"two") == b"two"
            first.stop()
            # No gap on the survivor: every connection gets through.
            for n in range(20):
                payload = f"survivor {n}".encode()
                assert exchange(on_second, payload, 5) == payload
            command.wait_for(rf"^Server {re.escape(first.host)}:{first.port} is down\.$")
            assert command.process.poll() is None
        finally:
            code = command.stop(signal.SIGTERM)
            target.close()
    assert code == 0, "\n".join(command.lines)


def _allocated(command: Command, server: str) -> int:
    match = command.wait_for(
        rf"^Allocated port (\d+) for remote forward to 127\.0\.0\.1:\d+ on {re.escape(server)}$"
    )
    return int(match.group(1))
