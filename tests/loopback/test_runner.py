"""
The runner of a configuration file (rtunnel/operations/runner.py) against the bundled
server on 127.0.0.1: its status snapshots (states, allocated ports, per-forward channel
and byte counts), and reload: a changed server reconnects that tunnel alone, a removed
tunnel logs off, a failed one starts again, a bad file changes nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from sockets import TargetServer, echo, eventually, exchange, in_thread
from twisted.internet import reactor
from typing_extensions import override

from rtunnel._model import TunnelObserver
from rtunnel.operations.config import Config, ProcessConfig, parse_config
from rtunnel.operations.runner import Runner


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shut_out(port: int) -> bool:
    """True when a connection to ``port`` carries nothing back: closed or reset by the
    server once the tunnel refused its channel (a send may already fail then)."""
    try:
        # A reset is reported by the reader as text ("<... reset by peer>").
        return b"denied" not in exchange(port, b"denied")
    except OSError:
        return True


class Setup:
    def __init__(self, server: Any, user: str, key: Path, known_hosts: Path, tmp: Path) -> None:
        self.server, self.user, self.key, self.known_hosts = server, user, key, known_hosts
        self.file = tmp / "tunnels.toml"
        self.target = TargetServer(echo)
        self.lines: list[tuple[str, str]] = []

    def tunnel(
        self, name: str, forwards: list[str], port: int | None = None, extra: str = ""
    ) -> str:
        listed = ", ".join(f'"{f}"' for f in forwards)
        return (
            f'[tunnel.{name}]\nhost = "127.0.0.1"\nPort = {port or self.server.port}\n'
            f'User = "{self.user}"\nIdentityFile = "{self.key}"\n'
            f'UserKnownHostsFile = "{self.known_hosts}"\nAutoReconnect = "no"\n'
            f"forwards = [{listed}]\n{extra}"
        )

    def config(self, text: str) -> Config:
        self.file.write_text(text)
        return parse_config(text, str(self.file), environ={})

    def report(self, level: str, text: str) -> None:
        self.lines.append((level, text))


def _setup(
    ssh_test_server: Any, ssh_user: str, ssh_client_key: Path, ssh_known_hosts: Path, tmp_path: Path
) -> Setup:
    return Setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)


@pytest_twisted.ensureDeferred
async def test_status_counts_each_forwards_channels_and_bytes(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    config = s.config(
        s.tunnel("a", [f"0:127.0.0.1:{s.target.port}", f"127.0.0.1:0:127.0.0.1:{s.target.port}"])
    )
    runner = Runner(reactor, config, report=s.report)
    runner.start()
    try:
        await eventually(lambda: [f.state for f in runner.status()[0].forwards] == ["active"] * 2)
        [status] = runner.status()
        assert (status.name, status.state, status.reconnects, status.last_error) == (
            "a",
            "connected",
            0,
            None,
        )
        assert status.server == f"{ssh_user}@127.0.0.1:{ssh_test_server.port}"
        assert status.key_exchanges == 1
        ports = sorted(f.port for f in ssh_test_server.forwards)
        assert sorted(f.allocated_port or 0 for f in status.forwards) == ports
        first, second = status.forwards
        assert first.listen == f"localhost:{first.allocated_port}"
        assert second.listen == f"127.0.0.1:{second.allocated_port}"

        payload = os.urandom(300_000)
        assert await in_thread(exchange, first.allocated_port, payload) == payload
        assert await in_thread(exchange, first.allocated_port, payload[:1000]) == payload[:1000]
        await eventually(lambda: runner.status()[0].forwards[0].channels_open == 0)
        first, second = runner.status()[0].forwards
        assert (first.channels_total, first.bytes_in, first.bytes_out) == (2, 301_000, 301_000)
        assert (second.channels_total, second.bytes_in, second.bytes_out) == (0, 0, 0)
    finally:
        await runner.stop()
    assert runner.status()[0].state == "stopped"


@pytest_twisted.ensureDeferred
async def test_reload_reconnects_only_the_changed_server(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    target = f"127.0.0.1:{s.target.port}"
    a, b, c = (
        s.tunnel(n, [f"{p}:0:{target}"])
        for n, p in (("a", "localhost"), ("b", "127.0.0.1"), ("c", ""))
    )
    runner = Runner(reactor, s.config(a + b + c), report=s.report)
    runner.start()
    try:
        await eventually(lambda: all(t.ready for t in runner.status()))
        tunnel_a, tunnel_b = runner.tunnel("a"), runner.tunnel("b")
        accepted = ssh_test_server.accepted_connections
        assert accepted == 3

        changed_b = b.replace(
            'AutoReconnect = "no"', 'AutoReconnect = "no"\nServerAliveInterval = 7'
        )
        result = await runner.reload(s.config(a + changed_b))
        assert (result.unchanged, result.restarted, result.stopped, result.started) == (
            ("a",),
            ("b",),
            ("c",),
            (),
        )
        await eventually(lambda: all(t.ready for t in runner.status()))
        await ssh_test_server.wait_for_connections(2)
        # b logged on again (one more connection), a kept its session.
        assert ssh_test_server.accepted_connections == accepted + 1
        assert runner.tunnel("a") is tunnel_a and tunnel_a is not None
        assert tunnel_a.statistics().sessions == 1
        assert runner.tunnel("b") is not tunnel_b
        assert [t.name for t in runner.status()] == ["a", "b"]
        assert ("INFO", f"Reloaded {s.file}: restarted b; stopped c.") in s.lines
    finally:
        await runner.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_tunnel_is_shown_and_started_again_by_a_reload(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    closed = _closed_port()
    text = s.tunnel("up", [f"0:127.0.0.1:{s.target.port}"]) + s.tunnel(
        "down", ["0:127.0.0.1:9"], port=closed
    )
    runner = Runner(reactor, s.config(text), report=s.report)
    all_failed = runner.when_all_failed()
    runner.start()
    try:
        await eventually(lambda: runner.status()[1].state == "failed")
        up, down = runner.status()
        assert up.state == "connected" or up.state == "connecting"
        assert down.last_error is not None and "Connection refused" in down.last_error
        assert [f.state for f in down.forwards] == ["cancelled"]
        assert not all_failed.called  # "up" still runs
        result = await runner.reload(s.config(text))
        assert (result.started, result.unchanged) == (("down",), ("up",))
        await eventually(lambda: runner.status()[1].state == "failed")
        assert ssh_test_server.accepted_connections == 1
    finally:
        await runner.stop()
        all_failed.cancel()


@pytest_twisted.ensureDeferred
async def test_when_every_tunnel_has_failed(tmp_path: Path) -> None:
    text = f'[tunnel.x]\nhost = "127.0.0.1"\nPort = {_closed_port()}\nforwards = ["0:h:1"]\n'
    runner = Runner(reactor, parse_config(text, "t.toml", environ={}), report=lambda *a: None)
    all_failed = runner.when_all_failed()
    runner.start()
    await all_failed.addTimeout(30, reactor)
    assert runner.status()[0].state == "failed"


@pytest_twisted.ensureDeferred
async def test_a_bad_file_is_refused_and_nothing_changes(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    good = s.tunnel("a", [f"0:127.0.0.1:{s.target.port}"])
    runner = Runner(reactor, s.config(good), report=s.report)
    runner.start()
    try:
        await eventually(lambda: runner.status()[0].ready)
        before = runner.status()
        s.file.write_text(good + "Bogus = 1\n")
        assert await runner.reload_file() is None
        assert s.lines[-2:] == [
            ("ERROR", f"{s.file} line 9: tunnel.a.Bogus: unknown key"),
            ("ERROR", f"Not reloaded: {s.file} has mistakes; the tunnels run as before."),
        ]
        assert runner.status() == before
        assert runner.config.file == str(s.file)
        port = before[0].forwards[0].allocated_port
        assert port is not None
        assert await in_thread(exchange, port, b"still") == b"still"
    finally:
        await runner.stop()


def test_the_command_line_of_config_mode(tmp_path: Path) -> None:
    """Mistakes in ``rtunnel --config``'s own arguments: the usage, status 255."""
    usage = "usage: rtunnel --config FILE [--check] [-q] [-v] [-o option]\n"
    good = tmp_path / "t.toml"
    good.write_text('[tunnel.a]\nhost = "h"\nforwards = ["1:h:2"]\n')
    for args, first_line in [
        (["--config"], "rtunnel: --config needs a FILE"),
        (["--config="], "rtunnel: --config needs a FILE"),
        (
            ["--config", str(good), "--check", "extra"],
            "rtunnel: unexpected argument 'extra' with --config",
        ),
        (
            ["--config", str(good), "-o", "User=x"],
            "rtunnel: -o User with --config: a tunnel's options go in the file; -o takes "
            "only LogFormat, ControlSocket, HttpListen here",
        ),
        (["--config", str(good), "-o"], "rtunnel: option requires an argument -- o"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "rtunnel.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert (run.returncode, run.stdout, run.stderr) == (255, "", f"{first_line}\n{usage}"), args
    # A bad value of a process option: the -o parser's words, no usage.
    run = subprocess.run(
        [sys.executable, "-m", "rtunnel.cli", "--config", str(good), "-oLogFormat=xml"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (run.returncode, run.stdout, run.stderr) == (
        255,
        "",
        "command-line line 0: unsupported log format 'xml': give text or json\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "rtunnel.cli", f"--config={good}", "--check", "-o", "HttpListen=0"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


@pytest_twisted.ensureDeferred
async def test_a_refused_forward(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    """
    A forward the server refuses is shown as failed while the others work, and a reload
    that removes it leaves the connection alone; with ExitOnForwardFailure=yes the tunnel
    fails and logs off, as the command exits.
    """
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    refused = _closed_port()
    ssh_test_server.refuse_forwards(refused)
    good, bad = f"0:127.0.0.1:{s.target.port}", f"{refused}:127.0.0.1:{s.target.port}"
    runner = Runner(reactor, s.config(s.tunnel("a", [good, bad])), report=s.report)
    runner.start()
    try:
        await eventually(
            lambda: [f.state for f in runner.status()[0].forwards] == ["active", "failed"]
        )
        assert (
            "INFO",
            f"[a] Warning: remote port forwarding failed for listen port {refused}",
        ) in s.lines
        result = await runner.reload(s.config(s.tunnel("a", [good])))
        assert (result.forwards_removed, result.restarted) == ((f"a: {bad}",), ())
        assert ssh_test_server.accepted_connections == 1
        assert [f.state for f in runner.status()[0].forwards] == ["active"]
    finally:
        await runner.stop()

    strict = s.tunnel("b", [good, bad], extra='ExitOnForwardFailure = "yes"\n')
    runner = Runner(reactor, s.config(strict), report=s.report)
    all_failed = runner.when_all_failed()
    runner.start()
    await all_failed.addTimeout(30, reactor)
    [status] = runner.status()
    assert status.state == "failed"
    assert status.last_error == f"Error: remote port forwarding failed for listen port {refused}"
    await ssh_test_server.wait_for_connections(0)


class _Seen(TunnelObserver):
    def __init__(self) -> None:
        self.connected_count = 0

    @override
    def connected(self) -> None:
        self.connected_count += 1


@pytest_twisted.ensureDeferred
async def test_an_observer_watches_every_tunnel_also_those_a_reload_starts(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    target = f"127.0.0.1:{s.target.port}"
    a, b = (s.tunnel(n, [f"0:{target}"]) for n in ("a", "b"))
    runner = Runner(reactor, s.config(a), report=s.report)
    seen = _Seen()
    runner.add_observer(seen)
    # The control socket and systemd's notifier start first and may ask already.
    assert runner.status() == []
    runner.start()
    try:
        await eventually(lambda: runner.status()[0].ready)
        assert seen.connected_count == 1
        # A new tunnel, and the [process] table changed: the observer sees b log on; the
        # process settings stay as they started, and the log says so.
        result = await runner.reload(s.config("[process]\nHttpListen = 9\n" + a + b))
        assert (result.unchanged, result.started) == (("a",), ("b",))
        await eventually(lambda: all(t.ready for t in runner.status()))
        assert seen.connected_count == 2
        assert runner.config.process == ProcessConfig()
        assert (
            "INFO",
            f"Warning: the [process] settings of {s.file} changed; they take effect when "
            "rtunnel is started again.",
        ) in s.lines
    finally:
        await runner.stop()


@pytest_twisted.ensureDeferred
async def test_reload_gives_a_forward_its_changed_policy_in_place(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    # Issue #15: a forward's identity leaves its policy out, so a reload that changes
    # only the policy keeps the session and the listener, and the new policy decides the
    # next connections.
    s = _setup(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path)
    target = f"127.0.0.1:{s.target.port}"

    def with_policy(policy: str) -> Config:
        return s.config(
            s.tunnel("a", []).replace(
                "forwards = []", f'forwards = [{{ listen = "0", target = "{target}"{policy} }}]'
            )
        )

    runner = Runner(reactor, with_policy(""), report=s.report)
    runner.start()
    try:
        await eventually(lambda: runner.status()[0].ready)
        port = runner.status()[0].forwards[0].allocated_port
        assert port is not None
        assert await in_thread(exchange, port, b"open") == b"open"
        tunnel = runner.tunnel("a")

        result = await runner.reload(with_policy(', deny = ["127.0.0.1"]'))
        name = f"a: 0:{target}"
        assert (result.unchanged, result.policies_changed) == (("a",), (name,))
        assert runner.tunnel("a") is tunnel and tunnel is not None
        assert tunnel.statistics().sessions == 1
        assert runner.status()[0].forwards[0].allocated_port == port
        assert await in_thread(_shut_out, port)
        await eventually(lambda: runner.status()[0].forwards[0].refused.get("denied") == 1)
        shown = runner.status()[0].forwards[0]
        assert shown.policy == "deny=127.0.0.1/32" and sum(shown.refused.values()) == 1
        assert ("INFO", f"Reloaded {s.file}: changed policies {name}.") in s.lines

        result = await runner.reload(with_policy(""))
        assert result.policies_changed == (name,)
        assert await in_thread(exchange, port, b"open again") == b"open again"
        assert tunnel.statistics().sessions == 1
        # No policy shown now; the refusals carry on in the forward's counts.
        assert (runner.status()[0].forwards[0].policy, tunnel.forwards[0].refused) == (
            "",
            {"denied": 1},
        )
    finally:
        await runner.stop()
