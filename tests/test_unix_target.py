"""
``ssh -R [bind_address:]port:/path/to/socket``: connections to the server's port spliced to
a local Unix-domain socket, against the bundled server and a real sshd; a socket that is
not there refuses the channel (not the tunnel); the command prints the ``Allocated port``
line as ssh 9.2 does.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import Server
from test_proxy_command import _echo_once
from twisted.internet.threads import deferToThread

from rtunnel import SpecError, TunnelObserver


@pytest.fixture
def unix_echo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "echo.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield path
    listener.close()


def _refused(port: int) -> bool:
    try:
        return _echo_once(port, b"x") == b""
    except ConnectionResetError:
        return True


class _Errors(TunnelObserver):
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, error: Exception) -> None:
        self.errors.append(str(error))


@pytest_twisted.ensureDeferred
async def test_connections_reach_a_local_unix_socket(
    server: Server, unix_echo: Path, tmp_path: Path
) -> None:
    tunnel = server.tunnel()
    errors = _Errors()
    tunnel.add_observer(errors)
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding("127.0.0.1", 0, target_path=str(unix_echo))
        assert forward.describe_target() == str(unix_echo)
        payload = b"over a unix socket " * 10000
        assert await deferToThread(_echo_once, forward.port, payload) == payload
        missing = tmp_path / "nobody-listens.sock"
        gone = await tunnel.request_forwarding("127.0.0.1", 0, target_path=str(missing))
        # The server ends that one connection: an EOF (bundled) or a reset (sshd 9.2).
        assert await deferToThread(_refused, gone.port)
        # The tunnel is still up, and said why that channel was refused.
        assert await deferToThread(_echo_once, forward.port, b"still") == b"still"
        assert any(
            f"connect to {missing} failed: " in e and "No such file or directory" in e
            for e in errors.errors
        ), errors.errors
    finally:
        await tunnel.logoff()
    with pytest.raises(SpecError):
        await tunnel.request_forwarding("127.0.0.1", 0, "h", 1, target_path="/x")


@pytest.mark.parametrize("server", ["openssh"], indirect=True)
def test_the_command_prints_what_ssh_prints(
    server: Server, openssh_ssh: str, unix_echo: Path, tmp_path: Path
) -> None:
    common = [
        "-N",
        *["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}"],
        *["-i", str(server.key), "-p", str(server.port), "-R", f"0:{unix_echo}"],
        f"{server.user}@{server.host}",
    ]
    lines = []
    for argv in (
        [openssh_ssh, "-F", "none", *common],
        [sys.executable, "-m", "rtunnel.cli", *common],
    ):
        child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            assert child.stderr is not None
            line = child.stderr.readline().strip()
            lines.append(line.split(" for ", 1)[1])
            port = int(line.split()[2])
            assert _echo_once(port, b"via the command") == b"via the command", argv[0]
        finally:
            child.terminate()
            child.wait(10)
    # ssh 9.2's own quirk: the path, then its internal port for sockets (-2).
    assert lines == [f"remote forward to {unix_echo}:-2"] * 2
