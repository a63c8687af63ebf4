"""
One exception hierarchy for rtunnel.

Every error carries a stable integer ``code`` (the SSHReverseTunnel reference's numbers where
one fits, so code written against that component can map them one to one) and a message that
says what went wrong and what to do about it.
"""

from __future__ import annotations

from typing import ClassVar

from typing_extensions import override

__all__ = [
    "AlreadyConnectedError",
    "AuthenticationError",
    "CallTimeoutError",
    "ChannelError",
    "ConnectError",
    "ConnectionLostError",
    "CredentialError",
    "DecompressError",
    "DecryptError",
    "ECDHKeyExchangeError",
    "ForwardRetryLimitError",
    "ForwardingError",
    "HostKeyError",
    "HostKeySignatureError",
    "KeepaliveError",
    "KeyExchangeError",
    "NegotiationError",
    "NotConnectedError",
    "ProtocolError",
    "ProxyAuthenticationError",
    "ProxyError",
    "RTunnelError",
    "ReconnectLimitError",
    "SpecError",
    "TimedOutError",
    "VersionError",
]


class RTunnelError(Exception):
    """
    Base of every error rtunnel raises.

    :ivar code: a stable number identifying the kind of error.
    :ivar message: what went wrong, and what to do.
    """

    code: ClassVar[int] = 1036

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @override
    def __str__(self) -> str:
        return self.message


class SpecError(RTunnelError, ValueError):
    """
    A forward specification, option or argument is malformed (a user mistake, found
    before anything is sent).
    """

    code = 10022  # the reference's "Invalid argument"


class ConnectError(RTunnelError):
    """
    The TCP connection to the SSH server could not be made (refused, unreachable, DNS
    failure, timed out).
    """

    code = 1036  # "SSH connection failed."


class TimedOutError(ConnectError):
    """
    The log-on took too long: the TCP connect and SSH handshake (``connect_timeout``) or
    authentication (``auth_timeout``).
    """

    code = 201  # the reference's "Timeout"


class ProxyError(ConnectError):
    """
    The proxy (SOCKS4, SOCKS4A, SOCKS5 or an HTTP CONNECT tunnel: the reference's firewall)
    could not be reached, broke its protocol, or would not connect to the SSH server. The
    message names the proxy and gives its own reason. Retried like any connect failure.
    """

    code = 1036  # "SSH connection failed."


class ProxyAuthenticationError(ProxyError):
    """
    The proxy refused the user name and password (or asked for credentials none were
    given for). Not retried: the same credentials would be refused again.
    """


class CallTimeoutError(RTunnelError, TimeoutError):
    """
    A call of the blocking or asyncio API (:mod:`rtunnel.blocking`, :mod:`rtunnel.aio`)
    did not finish within its timeout; the message names the call. It was given up.
    """

    code = 201  # the reference's "Timeout"


class ConnectionLostError(RTunnelError):
    """The SSH connection closed or was lost while it was in use."""

    code = 1001  # "Server has disconnected."


class KeepaliveError(ConnectionLostError):
    """The server stopped answering keepalives; the connection was dropped."""

    code = 1039  # "SSH keep-alive limit reached."


class ReconnectLimitError(RTunnelError):
    """Reconnecting was given up: the retry limit was reached or an observer cancelled."""

    code = 1037  # "SSH reconnect limit reached."


class NotConnectedError(RTunnelError):
    """An operation needs a logged-on tunnel and there is none."""

    code = 1117  # "You need to connect first."


class AlreadyConnectedError(RTunnelError):
    """:meth:`~rtunnel.ReverseTunnel.logon` was called while logged on or logging on."""

    code = 104  # "Already connected. ... close the current connection first."


class CredentialError(RTunnelError):
    """A key file could not be used (missing, unreadable, wrong passphrase, bad format)."""

    code = 302  # "Could not open file"


class ProtocolError(RTunnelError):
    """The server broke the SSH protocol; the connection was closed."""

    code = 1023  # "Invalid channel message."


class NegotiationError(RTunnelError):
    """
    The client and the server have no algorithm of some kind in common (key exchange, host
    key, cipher, MAC, compression), or strict key exchange was required and not offered.

    :ivar kind: which list failed (``"cipher"``, ``"mac"``, ``"kex"``, ``"host key"``,
        ``"compression"``, ``"strict kex"``).
    :ivar ours: what we offered.
    :ivar theirs: what the server offered.
    """

    code = 1003  # "Could not negotiate SSH algorithms."

    def __init__(
        self, message: str, kind: str = "", ours: tuple[str, ...] = (), theirs: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.ours = ours
        self.theirs = theirs


class HostKeyError(RTunnelError):
    """
    The server's host key was not accepted (unknown, changed, or refused by policy).

    :ivar fingerprint: the key's SHA256 fingerprint in OpenSSH's form.
    """

    code = 1030

    def __init__(self, message: str, fingerprint: str = "") -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class AuthenticationError(RTunnelError):
    """
    The server refused every authentication method tried.

    :ivar methods: the methods the server said can continue.
    """

    code = 1032

    def __init__(self, message: str, methods: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.methods = methods


class ForwardingError(RTunnelError):
    """The server refused a ``tcpip-forward`` or ``cancel-tcpip-forward`` request."""

    code = 1098  # "Request failure."


class ForwardRetryLimitError(ForwardingError):
    """A forward the server kept refusing after a reconnect was given up."""

    code = 10057  # "Reconnection limit exceeded for SSH tunnel."


class ChannelError(RTunnelError):
    """An operation named a channel that does not exist or is closed."""

    code = 1021  # "Invalid channel ID."


class VersionError(ProtocolError):
    """
    The server's identification is not usable: no SSH version line (not an SSH server),
    more than 4 KiB before it, or a protocol version the ``server_version_pattern`` does
    not accept (SSH-1.x).
    """

    code = 1002  # "Protocol version unsupported or other issue with version string."


class DecryptError(ProtocolError):
    """A packet from the server failed its MAC or AEAD check (corrupted or tampered with)."""

    code = 1015  # "Cannot decrypt packet."


class DecompressError(ProtocolError):
    """A compressed packet from the server could not be inflated, or inflated too far."""

    code = 1016  # "Cannot decompress packet."


class KeyExchangeError(ProtocolError):
    """The server's Diffie-Hellman values were invalid (a group or public value out of range)."""

    code = 1034  # "Diffie-Hellman exchange failed."


class ECDHKeyExchangeError(KeyExchangeError):
    """The server's elliptic-curve (or hybrid ML-KEM/X25519) key exchange values were invalid."""

    code = 1038  # "Elliptic Curve Diffie-Hellman exchange failed."


class HostKeySignatureError(HostKeyError):
    """The server's signature over the key exchange does not verify with its host key."""

    code = 1031  # "Cannot verify server's host key."
