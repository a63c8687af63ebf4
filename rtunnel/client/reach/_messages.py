"""
What a logon says about the server it reaches (the endpoint's message hooks): the lines
once the handshake is done, the error that stands for the connection ending, and the text
of a timed-out phase. Pure text over the transport's attributes; the tunnel passes them
to :class:`~rtunnel.client.reach.endpoint.LogonHooks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from rtunnel._core.text import printable
from rtunnel.client.transport._kex import shown_mac
from rtunnel.errors import ConnectionLostError, RTunnelError

if TYPE_CHECKING:
    from rtunnel.client.transport.client_transport import ClientTransport

__all__ = ["ServerMessages"]


@dataclass(frozen=True)
class ServerMessages:
    """
    The messages about one server.

    :ivar host: the server, as named to the tunnel.
    :ivar port: its port.
    :ivar connect_timeout: bounds the connect and the handshake (None: unbounded).
    :ivar auth_timeout: bounds authentication (None: unbounded).
    """

    host: str
    port: int
    connect_timeout: float | None
    auth_timeout: float | None

    def handshake_done(self, transport: ClientTransport, version: str | None) -> list[str]:
        """The SSHStatus lines once the keys are in use (``version``: the server's,
        already made printable)."""
        kex = printable(getattr(transport, "kexAlg", b""))
        host_key = printable(getattr(transport, "keyAlg", b""))
        ciphers = getattr(transport, "nextEncryptions", None)
        cipher = printable(getattr(ciphers, "outCipType", b""))
        mac = printable(shown_mac(ciphers.outCipType, ciphers.outMACType) if ciphers else b"")
        return [
            f"Server version: {version}",
            f"Keys exchanged: kex {kex}, host key {host_key}, cipher {cipher}, MAC {mac}.",
        ]

    def handshake_event(self, version: str | None) -> str:
        """The ``ssh-handshake-complete`` connection event's description."""
        return f"SSH handshake with {self.host} port {self.port} complete ({version})."

    def loss(
        self, transport: ClientTransport, reason: Failure, *, logged_on: bool, logging_off: bool
    ) -> RTunnelError:
        """
        The error that stands for the connection ending: the transport's own, the
        connection's protocol error, an authentication refusal (before the logon
        finished), a logoff, what the stream underneath said, else a close by the server.
        """
        if transport.error is not None:
            return transport.error
        if transport.connection.protocol_error is not None:
            return transport.connection.protocol_error
        userauth = transport.userauth
        if userauth is not None and userauth.failure is not None and not logged_on:
            return userauth.failure
        if logging_off:
            return ConnectionLostError("Logged off.")
        if isinstance(reason.value, RTunnelError):
            # Said by the transport underneath (a ProxyCommand that exited).
            return reason.value
        return ConnectionLostError(f"Connection to {self.host} closed by remote host.")

    def timeout(self, phase: str, transport: ClientTransport) -> str:
        """What to say when ``phase`` (``"handshake"``, ``"auth"``) timed out."""
        where = f"Connection to {self.host} port {self.port} timed out"
        if phase == "auth":
            return f"{where} during authentication (after {self.auth_timeout} s)."
        if not getattr(transport, "otherVersionString", b""):
            why = "the server sent no SSH version banner"
        else:
            why = "the key exchange did not finish"
        return f"{where} during the SSH handshake (after {self.connect_timeout} s): {why}."
