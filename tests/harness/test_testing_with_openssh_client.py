"""
OpenSSH's own client against rtunnel.testing.SSHTestServer: ``ssh -N -R 0:127.0.0.1:PORT``
must log on, get a port allocated, and carry bytes both ways through it, and rekey by
volume (ssh's RekeyLimit or the server's) as often as the limit says, no more.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from openssh_log import kex_initiators
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from typing_extensions import override
from zope.interface import implementer

from rtunnel.testing import SSHTestServer, client_key, generate_client_key

TIMEOUT = 30
MiB = 1024 * 1024
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


def _ssh_args(
    ssh: str, server: SSHTestServer, tmp_path: Path, key_path: Path, port: int, *extra: str
) -> list[str]:
    return [
        ssh,
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
        *extra,
        "-R", f"0:127.0.0.1:{port}",
        "tester@127.0.0.1",
    ]  # fmt: skip


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
    args = _ssh_args(openssh_ssh, server, tmp_path, key_path, echo_port)
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


@implementer(IHalfCloseableProtocol)
class Target(Protocol):
    """
    The local service for one-way transfers: after the peer's EOF it answers the sha256
    of what arrived, or, if that was ``b"download"``, VOLUME bytes; then closes.
    """

    def __init__(self) -> None:
        self.received = hashlib.sha256()
        self.request = b""

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received.update(data)
        if len(self.request) < 8:
            self.request += data[:8]

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        if self.request == b"download":
            self.transport.write(_pattern(VOLUME))
        else:
            self.transport.write(self.received.digest())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        pass


#: Bytes each way and the rekey limit: 8.5 limits, 8 crossings away from a boundary.
VOLUME, LIMIT = 68 * MiB, 8 * MiB


def _pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


async def _one_way(port: int, send: bytes) -> bytes:
    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Peer())
    peer.transport.write(send)
    peer.transport.loseWriteConnection()
    await peer.eof.addTimeout(TIMEOUT * 4, reactor)
    return bytes(peer.data)


@pytest.mark.parametrize("limit_on", ["ssh", "server"])
@pytest_twisted.ensureDeferred
async def test_rekeys_by_volume_under_openssh_are_counted_exactly(
    limit_on: str, tmp_path: Path, openssh_ssh: str, clean_ssh_env: dict[str, str]
) -> None:
    # Issue 12: the bundled server stormed under an OpenSSH client once a rekey found
    # channel data queued. 68 MiB up, then 68 MiB down, through an 8 MiB limit per
    # direction (ssh's RekeyLimit, or the server's rekey_bytes): 8 exchanges (±2) each
    # way, each started by the side with the limit, as both sides count them. (As the
    # receiver, the side with the limit sees up to a window of data that was in flight
    # when it sent KEXINIT arrive under the old keys, so it may count one or two fewer.)
    server = SSHTestServer(reactor, rekey_bytes=LIMIT if limit_on == "server" else 0)
    key_path = generate_client_key("ed25519", tmp_path / "keys")
    server.add_user("tester", authorized_keys=[client_key("ed25519")])
    await server.start()
    target = reactor.listenTCP(0, Factory.forProtocol(Target), interface="127.0.0.1")
    ssh = SSHProcess()
    extra = ["-v"] + (["-o", f"RekeyLimit={LIMIT}"] if limit_on == "ssh" else [])
    args = _ssh_args(openssh_ssh, server, tmp_path, key_path, target.getHost().port, *extra)
    process = reactor.spawnProcess(ssh, openssh_ssh, args, env=clean_ssh_env)
    counts: list[tuple[int, int, int]] = []
    try:
        port, _target = await ssh.allocated.addTimeout(TIMEOUT, reactor)
        (transport,) = server._transports

        def count() -> None:
            counts.append(
                (transport.key_exchanges, transport.rekeys_by_us, transport.rekeys_by_peer)
            )

        count()
        upload = _pattern(VOLUME)
        assert await _one_way(port, upload) == hashlib.sha256(upload).digest()
        count()
        assert await _one_way(port, b"download") == _pattern(VOLUME)
        # The last limit may have been reached with the last bytes: let that exchange end.
        while transport._keyExchangeState != transport._KEY_EXCHANGE_NONE:
            await deferLater(reactor, 0.05, lambda: None)
        count()
    finally:
        if not ssh.ended.called:
            process.signalProcess("TERM")
        await ssh.ended.addTimeout(TIMEOUT, reactor)
        await server.stop()
        await target.stopListening()
    (first, _, _), (_, up_server, up_ssh), (exchanges, by_server, by_ssh) = counts
    assert first == 1
    if limit_on == "ssh":
        started, other, up = by_ssh, by_server, up_ssh
    else:
        started, other, up = by_server, by_ssh, up_server
    assert 6 <= up <= 10, counts
    assert 6 <= started - up <= 10, counts
    assert other == 0
    assert exchanges == 1 + started
    # ssh's own log (-v) agrees: the first exchange, then the rekeys, each started by
    # the side with the limit.
    seen = kex_initiators(ssh.stderr.decode("utf-8", "replace"))
    assert len(seen) == exchanges, seen
    assert seen[1:] == ["self" if limit_on == "ssh" else "peer"] * started


def test_kex_initiators_reads_an_openssh_debug_log() -> None:
    log = """\
debug1: SSH2_MSG_KEXINIT sent
debug1: SSH2_MSG_KEXINIT received
debug1: SSH2_MSG_NEWKEYS sent
debug1: SSH2_MSG_NEWKEYS received
debug1: SSH2_MSG_KEXINIT received
debug1: SSH2_MSG_KEXINIT sent
debug1: SSH2_MSG_NEWKEYS sent
debug1: SSH2_MSG_NEWKEYS received
debug1: SSH2_MSG_KEXINIT sent
"""
    # The last exchange has not finished: not counted.
    assert kex_initiators(log) == ["self", "peer"]
