"""
The per-channel idle timeout (the reference's DefaultChannelIdleTimeout, with its
AbsoluteTimeout rule): one timer per connection samples every channel's byte counters, so
the data path pays nothing for it. The deadline arithmetic is
:func:`rtunnel._core.policy.channel_idle_deadline`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from rtunnel._core.policy import channel_idle_deadline
from rtunnel._model import Forward
from rtunnel.client.channels.channel import ForwardedChannel


class ReapedConnection(Protocol):
    """
    What the reaper reads of a
    :class:`~rtunnel.client.channels.connection.ForwardingConnection`; said as a protocol
    because the connection makes a reaper per forward with its own idle timeout (issue
    #15), so this module cannot import it.
    """

    @property
    def stopped(self) -> bool: ...

    @property
    def channels(self) -> dict[int, ForwardedChannel]: ...


__all__ = ["IdleChannelReaper"]

#: Samples per timeout: a channel is closed within timeout * (1 + 1/SAMPLES) of its last
#: activity (RELIABILITY.md C12 asks for T ± 10 %).
SAMPLES = 20


@dataclass
class _Seen:
    opened_at: float
    last_activity: float
    total: int


class IdleChannelReaper:
    """
    Closes channels of ``conn`` that carried no data either way for ``timeout`` seconds
    (or, with ``absolute``, that have been open that long), calling ``on_expired`` for each
    before closing it.

    With ``forward``, only that forward's channels (its policy's own idle timeout, issue
    #15); without, every channel but those of forwards whose policy sets their own.
    """

    def __init__(
        self,
        conn: ReapedConnection,
        clock: IReactorTime,
        timeout: float,
        absolute: bool,
        on_expired: Callable[[ForwardedChannel], None],
        *,
        forward: Forward | None = None,
    ) -> None:
        self._conn = conn
        self._forward = forward
        self._clock = clock
        self._timeout = timeout
        self._absolute = absolute
        self._on_expired = on_expired
        self._seen: dict[ForwardedChannel, _Seen] = {}
        self._call: IDelayedCall | None = None
        self._step = max(0.01, timeout / SAMPLES)

    def start(self) -> None:
        """Begin watching (no-op when the timeout is 0)."""
        if self._timeout > 0:
            self._call = self._clock.callLater(self._step, self._check)

    def stop(self) -> None:
        """Stop watching."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._seen.clear()

    def _watches(self, channel: ForwardedChannel) -> bool:
        # getattr: a stand-in channel table (tests) may have rows without a forward.
        forward = getattr(channel.info, "forward", None)
        if self._forward is not None:
            return forward is self._forward
        policy = forward.policy if forward is not None else None
        return policy is None or policy.idle_timeout is None

    def _check(self) -> None:
        self._call = None
        if self._conn.stopped:
            return
        now = self._clock.seconds()
        seen, self._seen = self._seen, {}
        for channel in list(self._conn.channels.values()):
            if not channel.confirmed or channel.finished or not self._watches(channel):
                continue
            total = channel.info.bytes_sent + channel.info.bytes_received
            entry = seen.get(channel)
            if entry is None:
                # First sighting: it opened within the last step.
                entry = _Seen(now, now, total)
            elif total != entry.total:
                entry.last_activity, entry.total = now, total
            if channel.close_sent:
                continue  # already closing
            deadline = channel_idle_deadline(
                entry.opened_at, entry.last_activity, self._timeout, self._absolute
            )
            if now >= deadline:
                self._on_expired(channel)
                channel.loseConnection()
            self._seen[channel] = entry
        self._call = self._clock.callLater(self._step, self._check)
