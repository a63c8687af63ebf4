"""
Unix-domain sockets in remote forwards, against the bundled server and a real sshd:
``ssh -R [bind_address:]port:/path/to/socket`` (a local socket as the target; one nobody
listens on refuses the channel, not the tunnel; the ``Allocated port`` line as ssh 9.2
prints it) and ``ssh -R /path/on/server:...`` (the server listens on a socket:
OpenSSH's ``streamlocal-forward@openssh.com`` and ``forwarded-streamlocal`` channels).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import Server, _echo_once, command_argv, first_lines_side_by_side
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from rtunnel import ChannelInfo, ForwardingError, SpecError, TunnelObserver


def _refused(port: int) -> bool:
    # The server ends that one connection: an EOF (bundled), a reset (sshd 9.2), or so
    # fast that our own shutdown finds it gone (ENOTCONN, EPIPE).
    try:
        return _echo_once(port, b"x") == b""
    except OSError:
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
    def check(port: int) -> None:
        assert _echo_once(port, b"via the command") == b"via the command"

    lines = first_lines_side_by_side(server, openssh_ssh, ["-R", f"0:{unix_echo}"], tmp_path, check)
    # ssh 9.2's own quirk: the path, then its internal port for sockets (-2).
    assert lines == [f"Allocated port for remote forward to {unix_echo}:-2"] * 2


def _unix_echo_once(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(30)
        c.connect(str(path))
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        return data


@pytest_twisted.ensureDeferred
async def test_the_server_listens_on_a_unix_socket(
    server: Server, unix_echo: Path, threaded_echo_port: int, tmp_path: Path
) -> None:
    tunnel = server.tunnel()
    services: list[str] = []

    class Opened(TunnelObserver):
        def channel_opened(self, info: ChannelInfo) -> None:
            services.append(info.service)

    tunnel.add_observer(Opened())
    await tunnel.logon()
    remote = tmp_path / "remote.sock"
    remote2 = tmp_path / "remote2.sock"
    try:
        to_tcp = await tunnel.request_socket_forwarding(
            str(remote), "127.0.0.1", threaded_echo_port
        )
        assert (to_tcp.listen_path, to_tcp.port) == (str(remote), 0)
        await tunnel.request_socket_forwarding(str(remote2), target_path=str(unix_echo))
        payload = b"from a socket on the server " * 5000
        assert await deferToThread(_unix_echo_once, remote, payload) == payload
        assert await deferToThread(_unix_echo_once, remote2, b"socket to socket") == (
            b"socket to socket"
        )
        assert services == ["forwarded-streamlocal@openssh.com"] * 2
        # Taken already: refused, in ssh's words.
        with pytest.raises(ForwardingError, match=f"listen path {remote}"):
            await tunnel.request_socket_forwarding(str(remote), "127.0.0.1", threaded_echo_port)
        await tunnel.cancel_socket_forwarding(str(remote2))
        with pytest.raises(ForwardingError, match="No active forward on socket"):
            await tunnel.cancel_socket_forwarding(str(remote2))
        await deferLater(reactor, 0.2, lambda: None)
        with pytest.raises(OSError):
            await deferToThread(_unix_echo_once, remote2, b"gone")
        assert await deferToThread(_unix_echo_once, remote, b"still") == b"still"
    finally:
        await tunnel.logoff()


@pytest.mark.parametrize("server", ["openssh"], indirect=True)
def test_the_command_forwards_a_socket_on_the_server(
    server: Server, threaded_echo_port: int, tmp_path: Path
) -> None:
    remote = tmp_path / "cli.sock"
    argv = [
        sys.executable,
        "-m",
        "rtunnel.cli",
        *command_argv(server, "-R", f"{remote}:127.0.0.1:{threaded_echo_port}"),
    ]
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        import time

        deadline = time.monotonic() + 30
        while not remote.exists():
            assert child.poll() is None and time.monotonic() < deadline, "no socket"
            time.sleep(0.05)
        assert _unix_echo_once(remote, b"via the command") == b"via the command"
    finally:
        child.terminate()
        child.wait(10)
