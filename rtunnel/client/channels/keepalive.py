"""
SSH keepalives (``keepalive@openssh.com``), OpenSSH's ServerAliveInterval and
ServerAliveCountMax: the decisions are :func:`rtunnel._core.policy.keepalive_decision`; this
module only runs them on a clock.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from rtunnel._core.policy import keepalive_decision
from rtunnel.client.channels.connection import ForwardingConnection

__all__ = ["Keepalive"]


class Keepalive:
    """
    Sends keepalives on ``conn`` after ``interval`` seconds with nothing received, and
    calls ``on_dead`` once ``count_max`` of them have gone unanswered.

    :ivar sent: keepalives sent so far.
    """

    def __init__(
        self,
        conn: ForwardingConnection,
        clock: IReactorTime,
        interval: float,
        count_max: int,
        on_dead: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._interval = interval
        self._count_max = count_max
        self._on_dead = on_dead
        self._outstanding = 0
        self._last_sent: float | None = None
        # conn.packets_received when the last keepalive went out: any packet after it
        # answers every keepalive outstanding (OpenSSH, packet.c).
        self._packets_at_send = 0
        self._call: IDelayedCall | None = None
        self.sent = 0

    def start(self) -> None:
        """Begin watching (no-op when the interval is 0)."""
        if self._interval > 0:
            self._call = self._clock.callLater(self._interval, self._check)

    def stop(self) -> None:
        """Stop watching."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        conn = self._conn
        if conn.stopped:
            return
        if conn.packets_received != self._packets_at_send:
            self._outstanding = 0
        now = self._clock.seconds()
        decision = keepalive_decision(
            now,
            conn.last_received,
            self._last_sent,
            self._outstanding,
            self._interval,
            self._count_max,
        )
        self._outstanding = decision.outstanding
        if decision.give_up:
            self._on_dead()
            return
        if decision.send:
            self.sent += 1
            self._last_sent = now
            self._packets_at_send = conn.packets_received
            # Any reply, success or failure, is traffic and so proves liveness; RFC 4254
            # §4 keeps it in order with our other global requests.
            conn.send_global_request(b"keepalive@openssh.com", b"").addErrback(_ignore)
        self._call = self._clock.callLater(max(0.0, decision.next_check - now), self._check)


def _ignore(failure: Failure) -> None:
    return None
