"""
The SSH client transport: Conch's key exchange and ciphers, with rtunnel's host-key policy,
a service requested once per connection, and the reason a connection ended kept for the
caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.conch.ssh import transport
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel.client.auth import LoadedKey, UserAuthClient
from rtunnel.client.connection import ForwardingConnection
from rtunnel.errors import ConnectionLostError, HostKeyError, RTunnelError

__all__ = ["ClientTransport"]

#: Checks a host key blob; fires True to accept, or fails with HostKeyError.
HostKeyVerifier = Callable[[bytes], Deferred[bool]]


class ClientTransport(transport.SSHClientTransport):
    """
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
    ) -> None:
        self._user = user
        self._keys = keys_to_try
        self._passwords = passwords
        self._verify = verify_host_key
        self.connection = connection
        self._on_lost = on_lost
        self._first_host_key: bytes | None = None
        self.userauth: UserAuthClient | None = None
        self.error: RTunnelError | None = None

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
        self.userauth = UserAuthClient(self._user, self.connection, self._keys, self._passwords)
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
