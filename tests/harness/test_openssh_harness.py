"""
The OpenSSH harness is real: OpenSSH's own ``ssh -R`` client logs on to the
:class:`~rtunnel.testing._openssh.OpenSSHServer` with a key, checks its host key against the
harness's ``known_hosts``, and bytes go through the remote forward to a local echo server.

Plain sockets, threads and subprocesses; every wait is bounded.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rtunnel.testing import _openssh
from rtunnel.testing._openssh import OpenSSHServer, OpenSSHServerError

pytestmark = pytest.mark.openssh

#: Seconds any single wait in these tests may take.
TIMEOUT = 15.0

_ALLOCATED = re.compile(r"Allocated port (\d+) for remote forward to 127\.0\.0\.1:(\d+)")


class EchoServer:
    """
    A TCP echo server on ``127.0.0.1``, one thread per connection.

    :ivar port: the port it listens on.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self._thread.join(TIMEOUT)
        self._listener.close()


class SSHClient:
    """
    A running ``ssh -N`` subprocess, its stderr read line by line by a thread.

    :ivar lines: the stderr lines read so far.
    """

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = TIMEOUT) -> re.Match[str]:
        """
        :return: the first stderr line from now on matching ``pattern``.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self.process.wait(TIMEOUT)
                raise AssertionError(
                    f"ssh exited ({self.process.returncode}) without printing "
                    f"{pattern.pattern!r}; stderr: {self.lines}"
                )
            self.lines.append(line)
            if match := pattern.search(line):
                return match
        raise AssertionError(f"no {pattern.pattern!r} within {timeout} s; stderr: {self.lines}")

    def allocated_port(self, local_port: int) -> int:
        """
        :return: the port ``sshd`` allocated for ``-R 0:127.0.0.1:local_port``.
        """
        match = self.wait_for(_ALLOCATED)
        assert int(match.group(2)) == local_port
        return int(match.group(1))

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """
        :return: the exit status, once ssh has exited and all its stderr is read.
        """
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            self.lines.append(line)
        return status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)


def ssh_command(
    ssh: str, server: OpenSSHServer, key: Path, *args: str, known_hosts: Path | None = None
) -> list[str]:
    """
    OpenSSH's client, isolated from the developer's configuration: ``-F none``, only ``key``,
    no agent, only the given ``known_hosts``. ``args`` come first, so they win (``ssh`` keeps
    the first value of an option).
    """
    known_hosts = known_hosts if known_hosts is not None else server.known_hosts_path
    return [
        ssh,
        "-F",
        "none",
        "-N",
        *args,
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "ConnectTimeout=10",
        "-i",
        str(key),
        "-p",
        str(server.port),
        f"{server.user}@{server.host}",
    ]


def echo_through(port: int, payload: bytes = b"hello through the tunnel\n") -> bytes:
    """
    Send ``payload`` to ``127.0.0.1:port`` and read back as many bytes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def run_ssh(
    openssh_ssh: str, clean_ssh_env: dict[str, str]
) -> Iterator[Callable[[list[str]], SSHClient]]:
    """
    Start ``ssh`` processes (from :func:`ssh_command`); all are ended after the test.
    """
    clients: list[SSHClient] = []

    def start(command: list[str]) -> SSHClient:
        client = SSHClient(command, clean_ssh_env)
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            client.stop()


@pytest.mark.parametrize("key_fixture", ["openssh_client_key", "openssh_rsa_key"])
def test_reverse_forward_echoes(
    request: pytest.FixtureRequest,
    key_fixture: str,
    openssh_server: OpenSSHServer,
    openssh_ssh: str,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    ``ssh -R 0:127.0.0.1:ECHO`` gets a port from ``sshd``, and bytes sent to that port come
    back from the echo server; the log shows the login and the forward.
    """
    key: Path = request.getfixturevalue(key_fixture)
    client = run_ssh(
        ssh_command(openssh_ssh, openssh_server, key, "-R", f"0:127.0.0.1:{echo_server.port}")
    )
    port = client.allocated_port(echo_server.port)

    assert echo_through(port) == b"hello through the tunnel\n"
    assert echo_through(port, b"x" * 100_000) == b"x" * 100_000

    log = openssh_server.log_text()
    assert f"Accepted publickey for {openssh_server.user} from 127.0.0.1" in log
    assert "server_input_global_request: rtype tcpip-forward" in log
    assert f"Allocated listen port {port}" in log


def test_stop_ends_server_and_connections(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    :meth:`OpenSSHServer.stop` ends ``sshd`` and the connections it serves, and is
    idempotent.
    """
    client = run_ssh(
        ssh_command(
            openssh_ssh, openssh_server, openssh_client_key, "-R", f"0:127.0.0.1:{echo_server.port}"
        )
    )
    forwarded = client.allocated_port(echo_server.port)
    pid = openssh_server.pid
    assert pid is not None
    assert openssh_server.sshd_session_pids()

    openssh_server.stop()

    assert openssh_server.pid is None
    assert client.wait_exit() == 255
    assert refused(openssh_server.port)
    assert refused(forwarded)
    assert "Received signal 15; terminating." in openssh_server.log_text()
    openssh_server.stop()


def test_restart_same_port_and_host_key(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    After :meth:`OpenSSHServer.restart` the client reconnects to the same port and the same
    host key (``StrictHostKeyChecking=yes`` against the first ``known_hosts``).
    """
    command = ssh_command(
        openssh_ssh, openssh_server, openssh_client_key, "-R", f"0:127.0.0.1:{echo_server.port}"
    )
    first = run_ssh(command)
    assert echo_through(first.allocated_port(echo_server.port)) == b"hello through the tunnel\n"
    port, known_hosts = openssh_server.port, openssh_server.known_hosts_path.read_text()
    old_pid = openssh_server.pid

    openssh_server.restart()

    assert first.wait_exit() == 255
    assert openssh_server.port == port
    assert openssh_server.pid not in (None, old_pid)
    assert openssh_server.known_hosts_path.read_text() == known_hosts
    second = run_ssh(command)
    assert echo_through(second.allocated_port(echo_server.port)) == b"hello through the tunnel\n"


def test_restart_keeping_sessions(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    ``restart(kill_sessions=False)`` restarts only the listener, like a real ``sshd`` restart:
    the open tunnel keeps working. The next plain ``stop()`` ends it.
    """
    client = run_ssh(
        ssh_command(
            openssh_ssh, openssh_server, openssh_client_key, "-R", f"0:127.0.0.1:{echo_server.port}"
        )
    )
    forwarded = client.allocated_port(echo_server.port)
    sessions = openssh_server.sshd_session_pids()

    openssh_server.restart(kill_sessions=False)

    assert client.process.poll() is None
    assert echo_through(forwarded) == b"hello through the tunnel\n"
    assert not set(sessions) & set(openssh_server.sshd_session_pids())

    openssh_server.stop()

    assert client.wait_exit() == 255
    assert refused(forwarded)


def test_killing_sessions_drops_the_connection(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    :meth:`OpenSSHServer.kill_sessions` (``SIGKILL`` to each of
    :meth:`~OpenSSHServer.sshd_session_pids`, tolerating one that exits meanwhile) drops
    the client, as a crashed server would; the listener survives and takes a new
    connection.
    """
    command = ssh_command(
        openssh_ssh, openssh_server, openssh_client_key, "-R", f"0:127.0.0.1:{echo_server.port}"
    )
    first = run_ssh(command)
    first.allocated_port(echo_server.port)
    sessions = openssh_server.sshd_session_pids()
    assert sessions
    assert openssh_server.pid not in sessions

    assert set(openssh_server.kill_sessions()) >= set(sessions) - {openssh_server.pid}

    assert first.wait_exit() == 255
    assert openssh_server.pid is not None
    second = run_ssh(command)
    assert echo_through(second.allocated_port(echo_server.port)) == b"hello through the tunnel\n"


def test_unknown_host_key_is_refused(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    tmp_path: Path,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    The host key check is real: with an empty ``known_hosts``, ``ssh`` refuses the server.
    """
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    client = run_ssh(
        ssh_command(
            openssh_ssh,
            openssh_server,
            openssh_client_key,
            "-R",
            "0:127.0.0.1:9",
            known_hosts=empty,
        )
    )
    assert client.wait_exit() == 255
    assert any("Host key verification failed" in line for line in client.lines), client.lines


def test_unauthorized_key_is_refused(
    openssh_server: OpenSSHServer,
    openssh_ssh: str,
    tmp_path: Path,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    Authentication is real: a key not in ``authorized_keys`` is refused.
    """
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    client = run_ssh(ssh_command(openssh_ssh, openssh_server, stranger, "-R", "0:127.0.0.1:9"))
    assert client.wait_exit() == 255
    assert any("Permission denied (publickey)" in line for line in client.lines), client.lines
    assert f"Failed publickey for {openssh_server.user}" in openssh_server.log_text()


def test_extra_config_overrides_defaults(openssh_sshd: str, tmp_path: Path) -> None:
    """
    ``extra_config`` wins over the defaults (it comes first, and ``sshd`` keeps the first
    value), and a ``Match`` block in it does not swallow the defaults.
    """
    server = OpenSSHServer(
        tmp_path,
        sshd_path=openssh_sshd,
        host_key_types=["ed25519", "ecdsa"],
        extra_config=[
            "PasswordAuthentication yes",
            "MaxAuthTries 3",
            "Match User nobody-at-all",
            "    AllowTcpForwarding no",
        ],
    )
    with server:
        config = server.effective_config()
        assert config["passwordauthentication"] == ["yes"]
        assert config["maxauthtries"] == ["3"]
        assert config["allowtcpforwarding"] == ["yes"]
        assert config["gatewayports"] == ["clientspecified"]
        assert config["usepam"] == ["no"]
        assert config["loglevel"] == ["DEBUG3"]
        assert config["listenaddress"] == [f"127.0.0.1:{server.port}"]
        assert len(server.known_hosts_lines()) == 2
        assert server.known_hosts_line("ecdsa").startswith(f"[127.0.0.1]:{server.port} ecdsa-")
    assert server.pid is None


def test_awkward_directory_name(
    openssh_sshd: str,
    openssh_ssh: str,
    openssh_client_key: Path,
    tmp_path: Path,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    Server paths with spaces and ``%`` (a token character in ``AuthorizedKeysFile``) work.
    """
    public_key = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text()
    with OpenSSHServer(
        tmp_path / "a dir %h with spaces", sshd_path=openssh_sshd, authorized_keys=[public_key]
    ) as server:
        # ssh(1) too expands %h and splits on spaces in UserKnownHostsFile: give it a copy.
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.known_hosts_path.read_text())
        command = ssh_command(
            openssh_ssh,
            server,
            openssh_client_key,
            "-R",
            f"0:127.0.0.1:{echo_server.port}",
            known_hosts=known_hosts,
        )
        client = run_ssh(command)
        assert (
            echo_through(client.allocated_port(echo_server.port)) == b"hello through the tunnel\n"
        )


def test_bad_config_is_reported(openssh_sshd: str, tmp_path: Path) -> None:
    """
    A configuration ``sshd -t`` rejects fails :meth:`OpenSSHServer.start` with ``sshd``'s
    message and the numbered configuration, and starts nothing.
    """
    server = OpenSSHServer(tmp_path, sshd_path=openssh_sshd, extra_config=["NoSuchKeyword yes"])
    with pytest.raises(OpenSSHServerError, match="Bad configuration option: NoSuchKeyword") as e:
        server.start()
    assert "   3 NoSuchKeyword yes" in str(e.value)
    assert server.pid is None


def test_port_taken_before_bind_is_retried(
    openssh_sshd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    When another process binds the picked port before ``sshd`` does, :meth:`start` picks
    another one.
    """
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_pick = _openssh._pick_port
        monkeypatch.setattr(
            _openssh, "_pick_port", lambda host: next(picks, None) or real_pick(host)
        )
        with OpenSSHServer(tmp_path, sshd_path=openssh_sshd) as server:
            assert server.port != taken
            assert not refused(server.port)
        assert "Address already in use" in server.log_text()


def test_sshd_dying_at_start_is_reported(tmp_path: Path) -> None:
    """
    An ``sshd`` that exits instead of listening fails :meth:`start` with its log.
    """
    fake = tmp_path / "fake-sshd"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in -t|-T) exit 0;; esac\n'
        'echo "fatal: simulated startup failure" >&2\n'
        "exit 3\n"
    )
    fake.chmod(0o755)
    server = OpenSSHServer(tmp_path / "sshd", sshd_path=str(fake))
    with pytest.raises(OpenSSHServerError, match="exited with status 3") as e:
        server.start()
    assert "fatal: simulated startup failure" in str(e.value)
    assert server.pid is None


def _state(pid: int) -> str:
    """The process state letter from ``/proc/PID/stat`` (``T``: stopped)."""
    return Path("/proc", str(pid), "stat").read_text().rpartition(")")[2].split()[0]


def _echo_stalls(port: int) -> bool:
    """Connecting works (the kernel accepts), but no echo comes back within a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(b"anyone?")
        conn.settimeout(1.0)
        try:
            conn.recv(100)
        except TimeoutError:
            return True
    return False


def test_freeze_thaw_and_kill_sessions(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    echo_server: EchoServer,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    :meth:`OpenSSHServer.freeze_sessions` stops the session processes (the forward hangs,
    the client stays connected), :meth:`~OpenSSHServer.thaw_sessions` continues them, and
    :meth:`~OpenSSHServer.kill_sessions` drops the client as a crash would.
    """
    client = run_ssh(
        ssh_command(
            openssh_ssh, openssh_server, openssh_client_key, "-R", f"0:127.0.0.1:{echo_server.port}"
        )
    )
    forwarded = client.allocated_port(echo_server.port)

    frozen = openssh_server.freeze_sessions()

    assert frozen and frozen == openssh_server.sshd_session_pids()
    assert openssh_server.pid not in frozen
    wait_until(lambda: all(_state(pid) == "T" for pid in frozen), "the sessions to stop")
    assert _echo_stalls(forwarded)
    assert client.process.poll() is None

    assert openssh_server.thaw_sessions() == frozen
    wait_until(lambda: not any(_state(pid) == "T" for pid in frozen), "the sessions to go on")
    assert echo_through(forwarded) == b"hello through the tunnel\n"

    assert openssh_server.kill_sessions() == frozen
    assert client.wait_exit() == 255
    assert openssh_server.sshd_session_pids() == [] and openssh_server.pid is not None


def test_restart_with_new_host_keys(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_ssh: str,
    tmp_path: Path,
    run_ssh: Callable[[list[str]], SSHClient],
) -> None:
    """
    ``restart(new_host_keys=True)`` comes back on the same port with another host key: a
    client holding the old ``known_hosts`` refuses it; the rewritten one has the new key.
    """
    old_keys = openssh_server.host_public_keys()
    old_known_hosts = tmp_path / "old_known_hosts"
    old_known_hosts.write_text(openssh_server.known_hosts_path.read_text())
    port = openssh_server.port

    openssh_server.restart(new_host_keys=True)

    assert openssh_server.port == port
    assert set(openssh_server.host_public_keys()).isdisjoint(old_keys)
    refused_client = run_ssh(
        ssh_command(
            openssh_ssh,
            openssh_server,
            openssh_client_key,
            "-R",
            "0:127.0.0.1:9",
            known_hosts=old_known_hosts,
        )
    )
    assert refused_client.wait_exit() == 255
    assert any("HOST IDENTIFICATION HAS CHANGED" in line for line in refused_client.lines)
    accepted = run_ssh(
        ssh_command(openssh_ssh, openssh_server, openssh_client_key, "-R", "0:127.0.0.1:9")
    )
    accepted.allocated_port(9)
