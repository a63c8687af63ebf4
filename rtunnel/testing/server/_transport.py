"""
The test server's SSH transport: Conch's server transport with rtunnel's packet layer
(the client's ciphers, MACs, strict key exchange and rekeying), the held packets of a
frozen connection, and server-sig-algs as sshd sends it.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.conch.ssh import transport
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel.client.hostkeys.certificates import SSHCertificate
from rtunnel.client.transport import _algorithms
from rtunnel.client.transport._kex import SecureTransportMixin
from rtunnel.testing.server._context import ServerContext, server_of


class _TransportSettings(Protocol):
    """What the transport reads from its factory (``_ServerFactory``)."""

    server: ServerContext
    #: Cipher and MAC names to offer instead of every supported one (for tests).
    ciphers: list[bytes] | None
    macs: list[bytes] | None
    #: Offer strict key exchange (``kex-strict-s-v00@openssh.com``).
    offer_strict_kex: bool
    #: Rekey after this many bytes one way (SSHTestServer's ``rekey_bytes``).
    rekey_bytes: int


class _ServerTransport(SecureTransportMixin, transport.SSHServerTransport):
    """
    Conch's server transport with rtunnel's packet layer (the client's ciphers, MACs,
    strict key exchange and rekeying), reporting to the test server and fixing
    server-sig-algs.
    """

    # Everything the client supports, so a test can ask for any of it.
    supportedCiphers = [name.encode() for name in _algorithms.SUPPORTED_CIPHERS]  # noqa: N815
    supportedMACs = [name.encode() for name in _algorithms.SUPPORTED_MACS]  # noqa: N815
    # The client's key exchanges too (RFC 8268 groups, the ML-KEM hybrid), less group
    # exchange: the server has no moduli file to pick groups from.
    supportedKeyExchanges = [  # noqa: N815
        name.encode() for name in _algorithms.SUPPORTED_KEX if "group-exchange" not in name
    ]
    supportedCompressions = [b"none", b"zlib@openssh.com", b"zlib"]  # noqa: N815

    @override
    def connectionMade(self) -> None:
        # Small packets (window adjustments, replies) must not wait for Nagle's algorithm
        # and the peer's delayed ACK: 40 ms each on Linux, which adds up in a test suite.
        ITCPTransport(self.transport).setTcpNoDelay(True)
        ssh_factory = cast(_TransportSettings, cast(Any, self).factory)
        if ssh_factory.ciphers is not None:
            self.supportedCiphers = list(ssh_factory.ciphers)
        if ssh_factory.macs is not None:
            self.supportedMACs = list(ssh_factory.macs)
        self.offer_strict_kex = ssh_factory.offer_strict_kex
        self.rekey_bytes = ssh_factory.rekey_bytes
        self.rekey_clock = ssh_factory.server._clock
        if ssh_factory.server._version is not None:
            # SSHTestServer.set_version(): sent as it is, whatever it holds.
            self.ourVersionString = ssh_factory.server._version
        super().connectionMade()
        server_of(self)._transport_made(self)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        server_of(self)._transport_lost(self)

    #: The user certificate the client logged on with (its extensions grant forwarding).
    user_certificate: SSHCertificate | None = None

    # SSHTestServer.freeze(): no reading, and packets held (already in order, not yet
    # sealed) until thaw(), as a stopped sshd session that keeps its TCP connection.
    _held: list[tuple[int, bytes]] | None = None

    @override
    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self._held is not None:
            self._held.append((messageType, payload))
            return
        super().sendPacket(messageType, payload)

    def freeze(self) -> None:
        if self._held is None:
            self._held = []
            cast(IPushProducer, self.transport).pauseProducing()

    def thaw(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        for message_type, payload in held:
            self.sendPacket(message_type, payload)
        cast(IPushProducer, self.transport).resumeProducing()

    @override
    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # RFC 8308 section 3.1: server-sig-algs lists the algorithms accepted for publickey
        # authentication. Conch sends its host key algorithms there (SSHFactory.buildProtocol
        # sets supportedPublicKeys from the host keys), so with an ed25519 host key an
        # OpenSSH client with an RSA key sees no rsa-sha2-* and gives up on the key
        # (OpenSSH 8.8+ will not fall back to ssh-rsa).
        accepted = b",".join(server_of(self)._user_sig_algs)
        super().sendExtInfo(
            [
                (name, accepted if name == b"server-sig-algs" else value)
                for name, value in extensions
            ]
        )
