"""
OpenSSH's own client against rtunnel.testing.SSHTestServer: ``ssh -N -R 0:127.0.0.1:PORT``
must log on, get a port allocated, and carry bytes both ways through it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from typing_extensions import override
from zope.interface import implementer

from rtunnel.testing import SSHTestServer, client_key, generate_client_key

TIMEOUT = 30
ALLOCATED = re.compile(rb"Allocated port (\d+) for remote forward to 127\.0\.0\.1:(\d+)")


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """The local service behind the forward: echoes, and closes after the peer's EOF."""

    @override
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        pass


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """A client of the server's forward listener."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.eof.callback(None)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        pass

    @override
    def connectionLost(self, reason: Any = None) -> None:
        if not self.eof.called:
            self.eof.callback(None)


class SSHProcess(ProcessProtocol):
    """``ssh`` as a child process; fires ``allocated`` when it logs the remote port."""

    def __init__(self) -> None:
        self.stderr = b""
        self.allocated: Deferred[tuple[int, int]] = Deferred()
        self.ended: Deferred[None] = Deferred()

    @override
    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        match = ALLOCATED.search(self.stderr)
        if match and not self.allocated.called:
            self.allocated.callback((int(match[1]), int(match[2])))

    @override
    def processEnded(self, reason: Any) -> None:
        if not self.allocated.called:
            self.allocated.errback(AssertionError(f"ssh exited:\n{self.stderr.decode()}"))
        self.ended.callback(None)


@pytest.mark.parametrize(
    ("kind", "host_kind"),
    [
        ("ed25519", "ed25519"),
        ("ecdsa", "ecdsa"),
        # OpenSSH 8.8+ signs with RSA only as rsa-sha2-*, and only if the server lists them
        # in server-sig-algs (RFC 8308): with a non-RSA host key, Conch alone would not.
        ("rsa", "ed25519"),
        # And an RSA host key must sign the key exchange with rsa-sha2-* too.
        ("rsa", "rsa"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_openssh_remote_forward(
    kind: str, host_kind: str, tmp_path: Path, openssh_ssh: str, clean_ssh_env: dict[str, str]
) -> None:
    server = SSHTestServer(reactor, host_key_type=host_kind)  # type: ignore[arg-type]
    key_path = generate_client_key(kind, tmp_path / "keys")  # type: ignore[arg-type]
    server.add_user("tester", authorized_keys=[client_key(kind)])  # type: ignore[arg-type]
    await server.start()
    echo = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    echo_port = echo.getHost().port
    ssh = SSHProcess()
    args = [
        openssh_ssh,
        "-N",
        "-F", "none",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={server.write_known_hosts(tmp_path / 'known_hosts')}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ExitOnForwardFailure=yes",
        "-i", str(key_path),
        "-p", str(server.port),
        "-R", f"0:127.0.0.1:{echo_port}",
        "tester@127.0.0.1",
    ]  # fmt: skip
    process = reactor.spawnProcess(ssh, openssh_ssh, args, env=clean_ssh_env)
    try:
        port, target = await ssh.allocated.addTimeout(TIMEOUT, reactor)
        assert target == echo_port
        # OpenSSH's client sends "localhost" when -R has no bind address.
        assert server.forwards == [("localhost", port)]

        peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Peer())
        payload = bytes(range(256)) * 4096  # 1 MiB
        peer.transport.write(payload)
        peer.transport.loseWriteConnection()
        await peer.eof.addTimeout(TIMEOUT, reactor)
        assert bytes(peer.data) == payload
    finally:
        if not ssh.ended.called:
            process.signalProcess("TERM")
        await ssh.ended.addTimeout(TIMEOUT, reactor)
        await server.stop()
        await echo.stopListening()
    assert server.forwards == []
