"""
``rtunnel --config FILE`` against two real sshds (issue #14): three forwards over two
servers; SIGHUP adding and removing forwards while a long transfer runs through an
unchanged one (checked byte for byte); a reload with a mistake refused while the old set
keeps serving; ``--check`` on good and bad files.

The command runs as a child process (signals are what is tested); the local targets and
the clients are plain threaded sockets.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sockets import TargetServer, echo, exchange

from rtunnel.testing import OpenSSHServer

PYTHON_CLI = [sys.executable, "-m", "rtunnel.cli"]
#: Seconds for the tunnels to come up (two logons, three forwards) on a loaded machine.
UP_WITHIN = 30.0


class Command:
    """The command as a child process, its stderr read into lines by a thread."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path | None = None, merge: bool = False
    ) -> None:
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if not merge else subprocess.PIPE,
            stderr=subprocess.PIPE if not merge else subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stderr or self.process.stdout
        assert stream is not None
        for raw in stream:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, start: int = 0, timeout: float = UP_WITHIN) -> re.Match[str]:
        """The first line from index ``start`` on matching ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                ended = self.process.poll() is not None and not self._reader.is_alive()
                if left <= 0 or ended:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s; stderr:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.2))

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


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


@pytest.fixture
def echo_target() -> Iterator[int]:
    target = TargetServer(echo)
    yield target.port
    target.close()


def _tunnel(name: str, server: OpenSSHServer, key: Path, forwards: list[str]) -> str:
    listed = ", ".join(f'"{f}"' for f in forwards)
    return f"""
[tunnel.{name}]
host = "{server.host}"
Port = {server.port}
User = "{server.user}"
IdentityFile = "{key}"
UserKnownHostsFile = "{server.known_hosts_path}"
ServerAliveInterval = 5
forwards = [{listed}]
"""


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_") and k != "DISPLAY"}
    env["HOME"] = str(home)
    return env


def _allocated(command: Command, tunnel: str, target: str, start: int = 0) -> int:
    match = command.wait_for(
        rf"^\[{tunnel}\] Allocated port (\d+) for remote forward to {re.escape(target)}$", start
    )
    return int(match.group(1))


def _refused(port: int) -> bool:
    """Nothing listens on the server's side of ``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.settimeout(5)
            return c.recv(1) == b""
    except OSError:
        return True


def test_two_servers_three_forwards_then_sigterm(
    tmp_path: Path,
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_target: int,
) -> None:
    first, second = two_servers
    config = tmp_path / "tunnels.toml"
    config.write_text(
        _tunnel(
            "a",
            first,
            openssh_client_key,
            [f"0:127.0.0.1:{echo_target}", f"0:localhost:{echo_target}"],
        )
        + _tunnel("b", second, openssh_client_key, [f"0:127.0.0.1:{echo_target}"])
    )
    command = Command([*PYTHON_CLI, "--config", str(config)], _env(tmp_path))
    try:
        ports = [
            _allocated(command, "a", f"127.0.0.1:{echo_target}"),
            _allocated(command, "a", f"localhost:{echo_target}"),
            _allocated(command, "b", f"127.0.0.1:{echo_target}"),
        ]
        assert len(set(ports)) == 3
        for port in ports:
            payload = os.urandom(100_000)
            assert exchange(port, payload) == payload
        # Each server holds its own tunnel's forwards: sshd logs one session each.
        assert first.sshd_session_pids() and second.sshd_session_pids()
    finally:
        status = command.stop(signal.SIGTERM)
    # clientloop.c: SIGTERM without a session is a clean stop.
    assert status == 0, "\n".join(command.lines)


class Transfer:
    """Streams ``size`` bytes through ``port`` for about ``seconds`` and hashes the echo."""

    def __init__(self, port: int, size: int, seconds: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.size, self.seconds = size, seconds
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.received_bytes = 0
        self.errors: list[BaseException] = []
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _write(self) -> None:
        chunk_size = 64 * 1024
        chunks = self.size // chunk_size
        pause = self.seconds / chunks
        try:
            for index in range(chunks):
                block = hashlib.sha256(index.to_bytes(4, "big")).digest() * (chunk_size // 32)
                self.sent.update(block)
                self.sock.sendall(block)
                time.sleep(pause)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as error:
            self.errors.append(error)

    def _read(self) -> None:
        try:
            while data := self.sock.recv(256 * 1024):
                self.received.update(data)
                self.received_bytes += len(data)
        except BaseException as error:
            self.errors.append(error)

    def finish(self, timeout: float) -> None:
        self.writer.join(timeout)
        self.reader.join(timeout)
        self.sock.close()


def test_sighup_adds_and_removes_forwards_while_a_transfer_runs(
    tmp_path: Path,
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_target: int,
) -> None:
    first, second = two_servers
    keep = f"0:127.0.0.1:{echo_target}"
    drop = f"0:localhost:{echo_target}"
    # Another bind address: another forward to the same target.
    add = f"127.0.0.1:0:127.0.0.1:{echo_target}"
    config = tmp_path / "tunnels.toml"
    tunnel_b = _tunnel("b", second, openssh_client_key, [f"0:127.0.0.1:{echo_target}"])
    config.write_text(_tunnel("a", first, openssh_client_key, [keep, drop]) + tunnel_b)
    command = Command([*PYTHON_CLI, "--config", str(config)], _env(tmp_path))
    try:
        kept = _allocated(command, "a", f"127.0.0.1:{echo_target}")
        dropped = _allocated(command, "a", f"localhost:{echo_target}")
        other = _allocated(command, "b", f"127.0.0.1:{echo_target}")
        sessions = (first.sshd_session_pids(), second.sshd_session_pids())

        size = 24 * 1024 * 1024
        transfer = Transfer(kept, size, seconds=4.0)
        time.sleep(0.5)
        # Add a forward and remove another on the same tunnel, mid-transfer.
        mark = len(command.lines)
        config.write_text(_tunnel("a", first, openssh_client_key, [keep, add]) + tunnel_b)
        command.process.send_signal(signal.SIGHUP)
        command.wait_for(r"Reloaded .*: added forwards a: .*; removed forwards a: ", mark)
        added = _allocated(command, "a", f"127.0.0.1:{echo_target}", mark)
        assert added not in (kept, dropped, other)
        payload = os.urandom(50_000)
        assert exchange(added, payload) == payload
        assert _refused(dropped)
        # Nothing else moved: the same sshd sessions, the untouched tunnel still serves.
        assert exchange(other, payload) == payload

        transfer.finish(timeout=60)
        assert not transfer.errors, transfer.errors
        assert transfer.received_bytes == size
        assert transfer.received.hexdigest() == transfer.sent.hexdigest()
        assert (first.sshd_session_pids(), second.sshd_session_pids()) == sessions
    finally:
        status = command.stop(signal.SIGTERM)
    assert status == 0, "\n".join(command.lines)


def test_a_bad_reload_is_refused_and_the_old_set_serves(
    tmp_path: Path,
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_target: int,
) -> None:
    first, second = two_servers
    config = tmp_path / "tunnels.toml"
    good = _tunnel("a", first, openssh_client_key, [f"0:127.0.0.1:{echo_target}"]) + _tunnel(
        "b", second, openssh_client_key, [f"0:127.0.0.1:{echo_target}"]
    )
    config.write_text(good)
    command = Command([*PYTHON_CLI, "--config", str(config)], _env(tmp_path))
    try:
        ports = [_allocated(command, name, f"127.0.0.1:{echo_target}") for name in ("a", "b")]
        mark = len(command.lines)
        bad = good.replace("ServerAliveInterval = 5", "ServerAliveIntervall = 5", 1)
        config.write_text(bad + '\n[tunnel.c]\nhost = "x"\nforwards = ["nonsense"]\n')
        command.process.send_signal(signal.SIGHUP)
        lines = good.count("\n")
        command.wait_for(
            rf"^{re.escape(str(config))} line 8: tunnel\.a\.ServerAliveIntervall: unknown key; "
            r"did you mean ServerAliveInterval\?$",
            mark,
        )
        command.wait_for(
            rf"^{re.escape(str(config))} line {lines + 4}: tunnel\.c\.forwards\[0\]: bad forward",
            mark,
        )
        command.wait_for(r"^Not reloaded: .* has mistakes; the tunnels run as before\.$", mark)
        for port in ports:
            payload = os.urandom(50_000)
            assert exchange(port, payload) == payload
        assert command.process.poll() is None
    finally:
        status = command.stop(signal.SIGINT)
    # As the command: SIGINT is 255 (clientloop.c, "Killed by signal 2.").
    assert status == 255, "\n".join(command.lines)


def test_sighup_with_a_changed_policy_applies_it_in_place(
    tmp_path: Path,
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_target: int,
) -> None:
    # Issue #15: only the forward's policy changes, so its sshd session and its listener
    # stay, and the new policy decides the next connections.
    first, _second = two_servers
    forward = f"0:127.0.0.1:{echo_target}"
    config = tmp_path / "tunnels.toml"

    def write(policy: str) -> None:
        text = _tunnel("a", first, openssh_client_key, [])
        table = f'{{ listen = "0", target = "127.0.0.1:{echo_target}"{policy} }}'
        config.write_text(text.replace("forwards = []", f"forwards = [{table}]"))

    write("")
    command = Command([*PYTHON_CLI, "--config", str(config)], _env(tmp_path))
    try:
        port = _allocated(command, "a", f"127.0.0.1:{echo_target}")
        payload = os.urandom(50_000)
        assert exchange(port, payload) == payload
        sessions = first.sshd_session_pids()
        for policy, served in ((', deny = ["127.0.0.1"]', False), ("", True)):
            mark = len(command.lines)
            write(policy)
            command.process.send_signal(signal.SIGHUP)
            command.wait_for(rf"Reloaded .*: changed policies a: {re.escape(forward)}\.$", mark)
            try:
                echoed = exchange(port, payload)
            except OSError:  # reset before our half-close: refused all the same
                echoed = b""
            # Refused: sshd closes or resets the client's connection, nothing echoed.
            assert (echoed == payload) is served, echoed[:100]
            assert first.sshd_session_pids() == sessions
        assert not any("Allocated port" in line for line in command.lines[mark:])
    finally:
        status = command.stop(signal.SIGTERM)
    assert status == 0, "\n".join(command.lines)


def test_check_prints_nothing_for_a_good_file_and_every_mistake_for_a_bad_one(
    tmp_path: Path, two_servers: tuple[OpenSSHServer, OpenSSHServer], openssh_client_key: Path
) -> None:
    first, second = two_servers
    config = tmp_path / "tunnels.toml"
    config.write_text(
        _tunnel("a", first, openssh_client_key, ["0:127.0.0.1:9"])
        + _tunnel("b", second, openssh_client_key, ["0:127.0.0.1:9", "8080:localhost:80"])
    )
    run = subprocess.run(
        [*PYTHON_CLI, "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    # Nothing was started: no session on either server.
    assert first.sshd_session_pids() == [] and second.sshd_session_pids() == []

    config.write_text(
        config.read_text().replace("Port = ", "Prot = ", 1).replace("8080:", "80800:")
    )
    run = subprocess.run(
        [*PYTHON_CLI, "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert run.returncode == 255
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{config} line 4: tunnel.a.Prot: unknown key; did you mean Port?",
        f"{config} line 18: tunnel.b.forwards[1]: bad forward '80800:localhost:80': "
        "bad listen port '80800'",
    ]


REPO_ROOT = Path(__file__).resolve().parents[2]
#: twistd from the checkout (the current directory on sys.path finds the plugin).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_twistd_runs_a_config_and_reloads_it_on_sighup(
    tmp_path: Path,
    two_servers: tuple[OpenSSHServer, OpenSSHServer],
    openssh_client_key: Path,
    echo_target: int,
) -> None:
    first, second = two_servers
    config = tmp_path / "tunnels.toml"
    tunnel_b = _tunnel("b", second, openssh_client_key, [f"0:127.0.0.1:{echo_target}"])
    config.write_text(
        _tunnel("a", first, openssh_client_key, [f"0:127.0.0.1:{echo_target}"]) + tunnel_b
    )
    pid_file = tmp_path / "twistd.pid"
    env = _env(tmp_path)
    argv = [*TWISTD, "-n", f"--pidfile={pid_file}", "--logfile=-", "rtunnel", "--config"]
    command = Command([*argv, str(config)], env, cwd=REPO_ROOT, merge=True)
    allocated = rf"\[{{}}\] Allocated port (\d+) for remote forward to 127\.0\.0\.1:{echo_target}$"
    try:
        ports = [int(command.wait_for(allocated.format(n)).group(1)) for n in ("a", "b")]
        for port in ports:
            assert exchange(port, b"twistd") == b"twistd"
        mark = len(command.lines)
        config.write_text(
            _tunnel(
                "a",
                first,
                openssh_client_key,
                [f"0:127.0.0.1:{echo_target}", f"127.0.0.1:0:127.0.0.1:{echo_target}"],
            )
            + tunnel_b
        )
        command.process.send_signal(signal.SIGHUP)
        command.wait_for(r"Reloaded .*: added forwards a: 127\.0\.0\.1:0:127\.0\.0\.1:", mark)
        added = int(command.wait_for(allocated.format("a"), mark).group(1))
        assert added not in ports
        assert exchange(added, b"added") == b"added"
        assert pid_file.exists()
    finally:
        status = command.stop(signal.SIGTERM)
    # twistd ends itself with the signal that stopped it (app._exitWithSignal).
    assert status == -signal.SIGTERM, "\n".join(command.lines)
    assert not pid_file.exists()
    assert not [line for line in command.lines if "Traceback" in line or "#error" in line]
