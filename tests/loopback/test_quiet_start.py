"""
A quiet start (issue #17): a normal start, use and stop of the ``rtunnel`` command leaves on
stderr exactly what ``ssh -N -R`` prints (the ``Allocated port`` line for a port the server
chose, nothing for a fixed port), against the bundled server and a real sshd, stopped by
SIGTERM or SIGINT. The library's side (a plain script with :mod:`rtunnel.blocking`) is
tests/test_blocking_script.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from command_support import spawn_command
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.wire import Echo
from typing_extensions import override

#: Exit status by signal, as ``ssh -N`` (see ``rtunnel --help``).
EXIT = {"TERM": 0, "INT": 255}


class _Once(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"quiet please")

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(b"quiet please"):
            assert self.transport is not None
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


async def _echo_through(port: int) -> bytes:
    proto = _Once()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10), proto)
    return await proto.done.addTimeout(20, reactor)


async def _listening(port: int, timeout: float = 30) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    for _ in range(int(timeout / 0.05)):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture(params=["bundled", "openssh"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, str, Path, Path]:
    """(server, user, key, known_hosts) for the bundled server, then a real sshd."""
    if request.param == "bundled":
        return (
            request.getfixturevalue("ssh_test_server"),
            request.getfixturevalue("ssh_user"),
            request.getfixturevalue("ssh_client_key"),
            request.getfixturevalue("ssh_known_hosts"),
        )
    sshd = request.getfixturevalue("openssh_server")
    return (sshd, sshd.user, request.getfixturevalue("openssh_client_key"), sshd.known_hosts_path)


@pytest.fixture
def echo_port() -> Any:
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), interface="127.0.0.1"
    )
    yield listening.getHost().port  # type: ignore[attr-defined]
    listening.stopListening()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", ["TERM", "INT"])
@pytest.mark.parametrize("listen", ["chosen", "fixed"])
@pytest_twisted.ensureDeferred
async def test_start_use_and_stop_print_only_what_ssh_prints(
    target: tuple[Any, str, Path, Path], echo_port: int, tmp_path: Path, sig: str, listen: str
) -> None:
    server, user, key, known_hosts = target
    port = 0 if listen == "chosen" else _free_port()
    child = spawn_command(
        server, user, key, known_hosts, tmp_path / "home", "-R", f"{port}:127.0.0.1:{echo_port}"
    )
    if listen == "chosen":
        await child.wait_for(b"\n")
        port = int(child.stderr.split()[2])
    await _listening(port)
    for _ in range(3):
        assert await _echo_through(port) == b"quiet please"
    child.transport.signalProcess(sig)  # type: ignore[union-attr]
    status = await child.ended.addTimeout(20, reactor)
    assert status == EXIT[sig], child.stderr
    expected = (
        f"Allocated port {port} for remote forward to 127.0.0.1:{echo_port}\n"
        if listen == "chosen"
        else ""
    )
    assert child.stderr.decode() == expected
