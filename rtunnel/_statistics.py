"""
The counters behind ``ReverseTunnel.statistics()``: what ended sessions and closed
channels carried, added to what the live session has now. No reactor; the live parts
are read through the small protocols below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from rtunnel._model import ChannelInfo, TunnelStatistics

__all__ = ["CounterAlias", "TunnelCounters"]


class KeyExchangeCounts(Protocol):
    """A session's transport, as counted (``ClientTransport``)."""

    @property
    def key_exchanges(self) -> int: ...
    @property
    def rekeys_by_us(self) -> int: ...
    @property
    def rekeys_by_peer(self) -> int: ...


class _Channel(Protocol):
    @property
    def info(self) -> ChannelInfo: ...


class LiveChannels(Protocol):
    """A session's connection, as counted (``ForwardingConnection``)."""

    @property
    def stopped(self) -> bool: ...
    @property
    def channels(self) -> Mapping[int, _Channel]: ...


class SentCount(Protocol):
    """The session's keepalives (``Keepalive``)."""

    @property
    def sent(self) -> int: ...


class TunnelCounters:
    """A tunnel's counters over all its sessions."""

    def __init__(self) -> None:
        self.sessions = 0
        # What ended sessions carried.
        self.past_key_exchanges = 0
        self.past_rekeys_by_us = 0
        self.past_rekeys_by_server = 0
        # Channels, and the bytes of those already closed.
        self.channels_opened = 0
        self.closed_bytes_sent = 0
        self.closed_bytes_received = 0

    def session_started(self) -> None:
        self.sessions += 1

    def session_ended(self, transport: KeyExchangeCounts) -> None:
        """Keep what an ended session's transport counted."""
        self.past_key_exchanges += transport.key_exchanges
        self.past_rekeys_by_us += transport.rekeys_by_us
        self.past_rekeys_by_server += transport.rekeys_by_peer

    def snapshot(
        self,
        conn: LiveChannels | None,
        transport: KeyExchangeCounts | None,
        keepalive: SentCount | None,
        forwards_active: int,
    ) -> TunnelStatistics:
        """The counters now, with the live session's (``conn`` stopped or None: none)."""
        connected = conn is not None and not conn.stopped
        live = list(conn.channels.values()) if conn is not None and connected else []
        current = transport.key_exchanges if transport is not None else 0
        by_us = transport.rekeys_by_us if transport is not None else 0
        by_server = transport.rekeys_by_peer if transport is not None else 0
        return TunnelStatistics(
            connected=connected,
            sessions=self.sessions,
            key_exchanges=current,
            rekeys_by_us=by_us,
            rekeys_by_server=by_server,
            total_key_exchanges=self.past_key_exchanges + current,
            total_rekeys_by_us=self.past_rekeys_by_us + by_us,
            total_rekeys_by_server=self.past_rekeys_by_server + by_server,
            keepalives_sent=keepalive.sent if keepalive is not None else 0,
            channels_open=len(live),
            channels_opened=self.channels_opened,
            bytes_sent=self.closed_bytes_sent + sum(c.info.bytes_sent for c in live),
            bytes_received=self.closed_bytes_received + sum(c.info.bytes_received for c in live),
            forwards_active=forwards_active,
        )


class _HasCounters(Protocol):
    _statistics: TunnelCounters


class CounterAlias:
    """
    A tunnel attribute that reads and writes one field of its ``_statistics``: the
    connection host's ``channel_event`` counts channels as ``tunnel._channels_opened``
    and ``tunnel._closed_bytes_*`` (kept unchanged while per-forward counters are added
    there; it may count on ``tunnel._statistics`` directly afterwards).
    """

    def __init__(self, field: str) -> None:
        self._field = field

    def __get__(self, tunnel: _HasCounters | None, owner: type | None = None) -> int:
        if tunnel is None:
            raise AttributeError(self._field)
        value: int = getattr(tunnel._statistics, self._field)
        return value

    def __set__(self, tunnel: _HasCounters, value: int) -> None:
        setattr(tunnel._statistics, self._field, value)
