"""
Reconnect, keepalive and rate-limit arithmetic. Pure: no reactor, no clock; callers pass
the time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "KeepaliveDecision",
    "ReconnectPolicy",
    "TokenBucket",
    "channel_idle_deadline",
    "connection_worked",
    "keepalive_decision",
]

ReconnectMode = Literal["off", "on-loss", "always"]


@dataclass(frozen=True)
class ReconnectPolicy:
    """
    When and how often to reconnect (the reference's AutoReconnect, MaxRetryCount and
    RetryInterval, with exponential backoff).

    :ivar mode: ``"off"``; ``"on-loss"`` (default): reconnect when an established
        connection breaks; ``"always"``: also retry the first logon.
    :ivar initial_delay: seconds before the first retry.
    :ivar max_delay: the cap on the delay, jitter included.
    :ivar factor: each retry waits this much longer than the last (1: a fixed interval).
    :ivar jitter: the delay varies by up to this fraction either way, so that many
        clients cut off together do not return together.
    :ivar max_retries: give up after this many retries in a row (0: never).
    :ivar reset_after: a connection that lasted this many seconds starts the next
        outage from the first retry again, as does a reconnect that was shown to work
        sooner (see :class:`~rtunnel.ReverseTunnel`).
    """

    mode: ReconnectMode = "on-loss"
    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2
    max_retries: int = 0
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in ("off", "on-loss", "always"):
            raise ValueError(f"reconnect mode must be off, on-loss or always, not {self.mode!r}")
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if self.factor < 1 or not 0 <= self.jitter < 1 or self.max_retries < 0:
            raise ValueError("need factor >= 1, 0 <= jitter < 1 and max_retries >= 0")

    @classmethod
    def off(cls) -> ReconnectPolicy:
        """Never reconnect."""
        return cls(mode="off")

    @classmethod
    def fixed(
        cls, interval: float, max_retries: int = 0, mode: ReconnectMode = "on-loss"
    ) -> ReconnectPolicy:
        """The reference's fixed RetryInterval: the same wait every time, no jitter."""
        return cls(mode, interval, interval, 1.0, 0.0, max_retries)

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """
        Seconds to wait before retry number ``retry`` (1-based): ``initial_delay`` times
        ``factor`` for each retry before it, varied by up to ``jitter`` either way, and
        never more than ``max_delay``: the cap applies with the jitter, so the capped
        waits spread over ``max_delay * (1 - jitter) / (1 + jitter)`` to ``max_delay``.
        """
        steps = max(0, retry - 1)
        if self.initial_delay <= 0:
            grown = 0.0
        elif self.factor == 1:
            grown = self.initial_delay
        else:
            # Past the cap more steps change nothing; bounding them keeps factor ** steps
            # finite after thousands of retries (a server down for days).
            to_cap = math.log(self.max_delay / self.initial_delay, self.factor)
            grown = self.initial_delay * self.factor ** min(steps, math.ceil(to_cap) + 1)
        base = min(self.max_delay / (1 + self.jitter), grown)
        return max(0.0, min(self.max_delay, base * (1 + self.jitter * (2 * rand() - 1))))

    def retries_remaining(self, retry: int) -> int:
        """Retries left after ``retry`` (-1: unlimited, as the reference reports it)."""
        return -1 if self.max_retries == 0 else max(0, self.max_retries - retry)

    def exhausted(self, retry: int) -> bool:
        """Whether retry number ``retry`` is one too many."""
        return self.max_retries != 0 and retry > self.max_retries


def connection_worked(
    lasted: float, reset_after: float, packets_received: int, working_from: int | None
) -> bool:
    """
    Whether a connection that just ended showed that reconnecting works, so that the next
    outage starts from the first retry again (issue #12): it lasted ``reset_after``
    seconds, or the server sent something (``packets_received``) after every forward was
    re-established on it (at ``working_from`` packets; None: never). Logging on and
    getting the forward replies alone is not enough: a server that drops each session
    right after them must still meet a growing backoff.
    """
    if lasted >= reset_after:
        return True
    return working_from is not None and packets_received > working_from


@dataclass(frozen=True)
class KeepaliveDecision:
    """
    What to do at a keepalive check.

    :ivar send: send ``keepalive@openssh.com`` now.
    :ivar give_up: the server is dead: disconnect.
    :ivar outstanding: keepalives sent since anything was received (after this check).
    :ivar next_check: when to check again.
    """

    send: bool
    give_up: bool
    outstanding: int
    next_check: float


def keepalive_decision(
    now: float,
    last_received: float,
    last_sent: float | None,
    outstanding: int,
    interval: float,
    count_max: int,
) -> KeepaliveDecision:
    """
    OpenSSH's ServerAlive rule (clientloop.c ``server_alive_check``, packet.c
    ``ssh_packet_read_poll_seqnr``): once ``interval`` seconds have passed with nothing
    received and no keepalive sent, send one; give up when a check would send one more
    than ``count_max`` unanswered ones. Any packet received answers all of them: the
    caller resets ``outstanding`` to 0 when one arrives (by counting packets, not by
    comparing times, so a reply read at the same clock reading as its request counts).
    Only what we *receive* counts: our own outbound traffic proves nothing about the
    server (RELIABILITY.md A8). A dead server is noticed ``interval * (count_max + 1)``
    seconds after its last packet (plus the lateness of each check).

    :param last_received: when the last packet from the server arrived.
    :param last_sent: when our last keepalive was sent (None: none yet).
    :param outstanding: keepalives sent since the last packet from the server.
    """
    quiet_since = last_received if last_sent is None else max(last_received, last_sent)
    due = quiet_since + interval
    if now < due:
        return KeepaliveDecision(False, False, outstanding, due)
    if outstanding >= count_max:
        return KeepaliveDecision(False, True, outstanding, now)
    return KeepaliveDecision(True, False, outstanding + 1, now + interval)


def channel_idle_deadline(
    opened_at: float, last_activity: float, timeout: float, absolute: bool
) -> float:
    """
    When a channel is closed for idleness (the reference's DefaultChannelIdleTimeout and
    AbsoluteTimeout): ``timeout`` seconds after its last activity, or, with ``absolute``,
    after it opened whatever it carries. ``timeout`` 0 means never (infinity).
    """
    if timeout <= 0:
        return float("inf")
    return (opened_at if absolute else last_activity) + timeout


class TokenBucket:
    """
    The reference's MaxTransferRate: at most ``rate`` bytes per second, with bursts of at
    most ``burst`` bytes (a tenth of a second's worth by default, at least 1 KiB), so a
    sender is held back within a fraction of a second rather than after a whole buffer.

    :param rate: bytes per second (> 0).
    :param now: the time the bucket starts (full).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1024.0, self.rate / 10)
        self._tokens = self.burst
        self._stamp = now

    def allowance(self, now: float) -> int:
        """Bytes that may be sent at ``now``."""
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        # The epsilon keeps float error (0.05 s x 10,000 B/s = 499.99...) from losing a byte.
        return int(self._tokens + 1e-6)

    def spend(self, nbytes: int) -> None:
        """``nbytes`` were sent (at most the last :meth:`allowance`)."""
        self._tokens -= nbytes

    def wait(self, now: float, nbytes: int) -> float:
        """Seconds from ``now`` until ``nbytes`` (capped at the burst) may be sent."""
        want = min(float(nbytes), self.burst)
        missing = want - (self._tokens if now <= self._stamp else self.allowance(now))
        return max(0.0, missing / self.rate)
