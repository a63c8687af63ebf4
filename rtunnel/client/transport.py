"""
The SSH client transport: Conch's key exchange with rtunnel's packet layer, algorithm lists,
strict key exchange and rekeying (:mod:`rtunnel.client._kex`), rtunnel's host-key policy,
a service requested once per connection, and the reason a connection ended kept for the
caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.conch.ssh import transport
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel.client import _algorithms
from rtunnel.client._kex import DEFAULT_REKEY_BYTES, SecureTransportMixin
from rtunnel.client.auth import AuthOptions, LoadedKey, UserAuthClient
from rtunnel.client.connection import ForwardingConnection
from rtunnel.errors import ConnectionLostError, HostKeyError, RTunnelError

__all__ = ["ClientTransport"]

#: Checks a host key blob; fires True to accept, or fails with HostKeyError.
HostKeyVerifier = Callable[[bytes], Deferred[bool]]


class ClientTransport(SecureTransportMixin, transport.SSHClientTransport):
    """
    :param ciphers: cipher names to offer, in order (default
        :data:`~rtunnel.client._algorithms.DEFAULT_CIPHERS`); likewise ``macs``,
        ``kex_algorithms`` and ``host_key_algorithms``. Checked by the caller
        (:func:`rtunnel.client._algorithms.resolve`).
    :param require_strict_kex: disconnect unless the server offers strict key exchange.
    :param rekey_bytes: rekey after this many bytes either way (0: never).
    :param rekey_seconds: rekey after this many seconds (None: never).
    :param clock: the clock for ``rekey_seconds`` (default: the global reactor).
    :param compression: offer zlib compression (``zlib@openssh.com``, then ``zlib``).
    :ivar error: why the connection ended, when we know better than "connection lost"
        (host key refused, authentication refused, the server's DISCONNECT message, a
        protocol error).
    """

    def __init__(
        self,
        *,
        user: str,
        keys_to_try: Sequence[LoadedKey],
        passwords: Sequence[str],
        verify_host_key: HostKeyVerifier,
        connection: ForwardingConnection,
        on_lost: Callable[[ClientTransport, Failure], None],
        auth_options: AuthOptions | None = None,
        ciphers: Sequence[str] = _algorithms.DEFAULT_CIPHERS,
        macs: Sequence[str] = _algorithms.DEFAULT_MACS,
        kex_algorithms: Sequence[str] = _algorithms.DEFAULT_KEX,
        host_key_algorithms: Sequence[str] = _algorithms.DEFAULT_HOST_KEY_ALGORITHMS,
        require_strict_kex: bool = False,
        rekey_bytes: int = DEFAULT_REKEY_BYTES,
        rekey_seconds: float | None = None,
        clock: IReactorTime | None = None,
        compression: bool = False,
    ) -> None:
        self._user = user
        self._keys = keys_to_try
        self._passwords = passwords
        self._auth_options = auth_options
        self._verify = verify_host_key
        self.connection = connection
        self._on_lost = on_lost
        self._first_host_key: bytes | None = None
        self.userauth: UserAuthClient | None = None
        self.error: RTunnelError | None = None
        self.supportedCiphers = [name.encode() for name in ciphers]
        self.supportedMACs = [name.encode() for name in macs]
        self.supportedKeyExchanges = [name.encode() for name in kex_algorithms]
        self.supportedPublicKeys = [name.encode() for name in host_key_algorithms]
        # Off by default, as in OpenSSH; on: zlib@openssh.com (from authentication on) or
        # zlib, with every inflate bounded.
        self.supportedCompressions = (
            [b"zlib@openssh.com", b"zlib", b"none"] if compression else [b"none"]
        )
        self.require_strict_kex = require_strict_kex
        self.rekey_bytes = rekey_bytes
        self.rekey_seconds = rekey_seconds
        self.rekey_clock = clock

    @override
    def transport_error(self, error: RTunnelError) -> None:
        if self.error is None:
            self.error = error

    @override
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        if self._first_host_key is not None:
            # A later key exchange must present the same key as the first.
            if hostKey == self._first_host_key:
                return defer.succeed(True)
            self.error = HostKeyError("The server presented a different host key on re-key.")
            return defer.fail(self.error)
        d = self._verify(hostKey)

        def accepted(ok: bool) -> bool:
            self._first_host_key = hostKey
            return ok

        def refused(failure: Failure) -> Failure:
            if isinstance(failure.value, RTunnelError):
                self.error = failure.value
            return failure

        return d.addCallbacks(accepted, refused)

    @override
    def connectionSecure(self) -> None:
        # Conch calls this after every key exchange; the service is requested once
        # (a second request makes OpenSSH log kex_protocol_error).
        if self.userauth is not None:
            return
        self.userauth = UserAuthClient(
            self._user, self.connection, self._keys, self._passwords, self._auth_options
        )
        self.requestService(self.userauth)

    @override
    def receiveError(self, reasonCode: int, description: bytes) -> None:
        text = description.decode("utf-8", "replace")[:512]
        if self.error is None:
            self.error = ConnectionLostError(
                f"The server disconnected: {text!r} (SSH reason code {reasonCode})."
            )

    @override
    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if (
            reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
            and self.userauth is not None
            and self.userauth.failure is not None
            and self.error is None
        ):
            self.error = self.userauth.failure
        if self.connection.protocol_error is not None and self.error is None:
            self.error = self.connection.protocol_error
        super().sendDisconnect(reason, desc)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._on_lost(self, reason if reason is not None else Failure(ConnectionLostError("lost")))
