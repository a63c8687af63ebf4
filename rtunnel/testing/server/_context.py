"""
What the test server's protocol pieces share with the :class:`SSHTestServer` that made
them: its user table's records, and :class:`ServerContext`, the settings, fault switches,
logs and callbacks they read and call. The pieces (transport, authentication,
forwarding) sit below the server and see it only through this interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from twisted.conch.ssh import common
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime

if TYPE_CHECKING:
    from rtunnel.client.hostkeys.certificates import SSHCertificate
    from rtunnel.testing.server._ports import _Forward

__all__ = ["KbdIntPrompt"]


class KbdIntPrompt(NamedTuple):
    """
    One keyboard-interactive prompt the test server asks (RFC 4256 section 3.2).

    :ivar prompt: the text sent, e.g. ``"Password: "``.
    :ivar echo: whether the client should echo the answer.
    :ivar answer: the answer that is accepted.
    """

    prompt: str
    echo: bool
    answer: str


class _UserAuth(NamedTuple):
    """How one user may log on, beyond passwords and keys."""

    kbd_int: tuple[tuple[KbdIntPrompt, ...], ...]
    methods: tuple[tuple[str, ...], ...]
    password_expired: bool


def _parse_auth_methods(value: str | Iterable[str] | None) -> tuple[tuple[str, ...], ...]:
    """OpenSSH ``AuthenticationMethods``: lists of comma-separated methods, any one list."""
    if value is None:
        return ()
    lists = value.split() if isinstance(value, str) else list(value)
    return tuple(tuple(m for m in item.split(",") if m) for item in lists)


class ServerContext(Protocol):
    """What the protocol pieces read and call on their :class:`SSHTestServer`."""

    # The reactor it listens with, and its clock.
    _reactor: IReactorTCP
    _clock: IReactorTime

    # Transport: the version line sent (set_version), signature algorithms for publickey.
    _version: bytes | None
    _user_sig_algs: tuple[bytes, ...]

    # Authentication: the user table, its logs, and the fault switches.
    _passwords: dict[bytes, bytes]
    _user_auth: dict[bytes, _UserAuth]
    _password_delay: int
    _keyboard_interactive: bool
    _auth_log: list[tuple[str, str]]
    _kbd_answers: list[list[str]]
    _banner: bytes | None
    _refuse_auth: bool

    # Forwarding: reply delays (delay_replies), inbound connections.
    _global_request_delay: float
    _channel_open_delay: float
    _inbound: set[Any]

    def _transport_made(self, ssh_transport: Any) -> None: ...

    def _transport_lost(self, ssh_transport: Any) -> None: ...

    def _user_certificate_refusal(
        self, cert: SSHCertificate, user: bytes, client_address: str
    ) -> str | None: ...

    def _user_certificate_refused(self, reason: str) -> None: ...

    def _forward_refused(self, port: int) -> bool: ...

    def _forward_gone(self, forward: _Forward) -> None: ...

    def _track(self, stopping: Deferred[None]) -> None: ...

    def _changed(self) -> None: ...


def _pack_string(value: str) -> bytes:
    """An SSH ``string`` holding ``value`` in UTF-8 (RFC 4251 section 5)."""
    return bytes(common.NS(value.encode("utf-8")))


def server_of(ssh_transport: object) -> ServerContext:
    """The test server behind a Conch transport (the one seam where its factory is cast)."""
    return cast(ServerContext, cast(Any, ssh_transport).factory.server)
