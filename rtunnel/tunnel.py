"""
The public facade: :class:`ReverseTunnel` logs on to an SSH server, requests remote forwards
and keeps the table of live channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IReactorTCP, IReactorTime

from rtunnel._model import AcceptHook, ChannelInfo, Forward, TunnelObserver
from rtunnel.client.credentials import Credential

__all__ = ["HostKeyPolicy", "ReverseTunnel"]

HostKeyPolicy = Literal["strict", "accept-new", "accept-any"]

DEFAULT_WINDOW_SIZE = 2 * 1024 * 1024
DEFAULT_MAX_PACKET = 32 * 1024


class ReverseTunnel:
    """
    A reverse tunnel over one SSH connection (``ssh -R``).

    :param reactor: the reactor (TCP and time) to use.
    :param host: the SSH server.
    :param port: its port.
    :param user: the user name to log on as (default: the local user).
    :param auth: credentials to try, in order.
    :param known_hosts: known_hosts file(s) to check the host key against
        (default ``~/.ssh/known_hosts``).
    :param host_key_policy: ``"strict"`` (default: unknown keys are refused),
        ``"accept-new"`` (unknown keys are trusted and written to the first known_hosts
        file; changed keys are refused) or ``"accept-any"`` (no check, with a warning).
    :param connect_timeout: seconds to wait for TCP connect plus handshake and logon.
    :param target_connect_timeout: seconds to wait for a local target to accept before the
        channel is refused with "connect failed".
    :param window_size: the SSH channel window we grant (how much the server may send
        before we have passed it on).
    :param max_packet: the largest channel data packet we accept.
    :param max_channels: at most this many channels at once; more are refused with
        "resource shortage".
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str,
        port: int = 22,
        *,
        user: str | None = None,
        auth: Sequence[Credential] = (),
        known_hosts: str | Path | Sequence[str | Path] | None = None,
        host_key_policy: HostKeyPolicy = "strict",
        connect_timeout: float | None = 30.0,
        target_connect_timeout: float = 10.0,
        window_size: int = DEFAULT_WINDOW_SIZE,
        max_packet: int = DEFAULT_MAX_PACKET,
        max_channels: int = 1024,
        clock: IReactorTime | None = None,
    ) -> None:
        raise NotImplementedError

    def logon(self) -> Deferred[None]:
        """Connect, verify the host key, authenticate. Fires when the tunnel is usable."""
        raise NotImplementedError

    def request_forwarding(
        self,
        bind_address: str,
        port: int,
        host: str | None = None,
        host_port: int | None = None,
        *,
        factory: IProtocolFactory | None = None,
        accept: AcceptHook | None = None,
    ) -> Deferred[Forward]:
        """
        Ask the server to listen on ``bind_address:port`` (``port`` 0: server's choice).

        Give ``host`` and ``host_port`` for forwarding mode, or ``factory`` for event mode.
        Fires with the :class:`Forward` (whose ``port`` is the listening port) once the
        server agreed; fails with :class:`~rtunnel.errors.ForwardingError` if it refused.
        """
        raise NotImplementedError

    def cancel_forwarding(self, bind_address: str, port: int) -> Deferred[None]:
        """Ask the server to stop listening (``port`` is the allocated one for port 0)."""
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        """True while logged on."""
        raise NotImplementedError

    @property
    def forwards(self) -> list[Forward]:
        """The forwards requested on this connection."""
        raise NotImplementedError

    @property
    def channels(self) -> list[ChannelInfo]:
        """A snapshot of the live channels."""
        raise NotImplementedError

    def channel(self, channel_id: int) -> ChannelInfo:
        """One live channel by id."""
        raise NotImplementedError

    def send_channel_data(self, channel_id: int, data: bytes) -> None:
        """Send bytes on a channel (the reference's SendChannelData)."""
        raise NotImplementedError

    def send_channel_eof(self, channel_id: int) -> None:
        """Half-close a channel: no more data will be sent on it."""
        raise NotImplementedError

    def close_channel(self, channel_id: int) -> None:
        """Close a channel (the reference's CloseChannel)."""
        raise NotImplementedError

    def add_observer(self, observer: TunnelObserver) -> None:
        """Receive channel and connection events."""
        raise NotImplementedError

    def remove_observer(self, observer: TunnelObserver) -> None:
        """Stop receiving events."""
        raise NotImplementedError

    def when_disconnected(self) -> Deferred[None]:
        """
        Fires with None when the SSH connection ends after :meth:`logoff`; fails with the
        reason (a :class:`~rtunnel.errors.RTunnelError`) when it ends any other way. Each
        call returns a new Deferred.
        """
        raise NotImplementedError

    def logoff(self) -> Deferred[None]:
        """Cancel every forward, close every channel, close the connection."""
        raise NotImplementedError
