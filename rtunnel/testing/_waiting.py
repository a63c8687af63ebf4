"""
Waiting for a condition with a deadline, for the test servers' ``wait_for_*`` helpers.

A helper without a deadline turns a broken test into a hang (issue #16: a first test that
waited for a connection count it could never reach sat for ten minutes under pytest).
Every wait here gives up after its ``timeout`` (seconds on the owner's clock: simulated
ones on a :class:`~twisted.internet.testing.MemoryReactorClock`) with a
:class:`WaitTimeoutError` that says what was awaited and what was seen instead.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["DEFAULT_TIMEOUT", "WaitTimeoutError", "Waiters"]

#: Seconds a ``wait_for_*`` helper waits before it gives up, unless told otherwise.
DEFAULT_TIMEOUT = 30.0


class WaitTimeoutError(TimeoutError):
    """
    A test helper gave up waiting. The message names the helper, what it waited for, how
    long, and what it saw instead.
    """


class _Waiter:
    def __init__(self, ready: Callable[[], bool], deferred: Deferred[None]) -> None:
        self.ready = ready
        self.deferred = deferred
        self.timer: IDelayedCall | None = None


def check_timeout(timeout: float | None) -> None:
    """
    :param timeout: a helper's ``timeout`` argument.
    :raises ValueError: it is negative (None, no deadline, and 0 are accepted).
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or 0 or more seconds, not {timeout!r}")


class Waiters:
    """
    The conditions an object's helpers wait for: each is checked again whenever the
    object calls :meth:`changed`, and given up after its timeout.

    :param clock: the clock deadlines run on (the owner's reactor).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waiters: list[_Waiter] = []

    def when(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float | None,
        what: str,
        seen: Callable[[], str],
    ) -> Deferred[None]:
        """
        Wait until ``ready()`` is true.

        :param ready: the condition, checked now and on each :meth:`changed`.
        :param timeout: seconds before giving up; None waits without a deadline.
        :param what: the call that waits, with its arguments, e.g.
            ``"SSHTestServer.wait_for_connections(1)"``.
        :param seen: what there is instead, for the error message, e.g. ``"0 live SSH
            connections"``; called when giving up.
        :return: a Deferred that fires with None once ``ready()`` is true, or fails with
            :class:`WaitTimeoutError` after ``timeout`` seconds. Cancelling it stops the
            wait (so ``Deferred.addTimeout`` works on it as on any Deferred).
        """
        check_timeout(timeout)
        if ready():
            return defer.succeed(None)

        def cancel(deferred: Deferred[None]) -> None:
            self._forget(waiter)

        waiter = _Waiter(ready, Deferred(cancel))
        self._waiters.append(waiter)
        if timeout is not None:

            def give_up() -> None:
                waiter.timer = None
                self._forget(waiter)
                waiter.deferred.errback(
                    WaitTimeoutError(f"{what}: gave up after {timeout:g} s; {seen()}")
                )

            waiter.timer = self._clock.callLater(timeout, give_up)
        return waiter.deferred

    def __len__(self) -> int:
        """The number of waits not yet over."""
        return len(self._waiters)

    def changed(self) -> None:
        """Check every condition again; fire the Deferreds of those now true."""
        for waiter in list(self._waiters):
            if waiter in self._waiters and waiter.ready():
                self._forget(waiter)
                waiter.deferred.callback(None)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None
