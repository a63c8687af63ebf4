"""
Reconnect as its own state machine (after Twisted's ``ClientService``): the
:class:`Reconnector` drives the states and transitions of :mod:`rtunnel._core.reconnect`
(``connect -> logged on -> lost -> waiting -> connect ...``, giving up after the last
retry, stopping from any state) with its timers on an injected clock. What a connect is,
what a retry announces and what a reconnect re-establishes is the tunnel's
(:class:`ReconnectHost`). When the tunnel stops for good, the :class:`Reconnector` says so
to the host and to the ``when_stopped()`` waiters.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtunnel._core.policy import ReconnectPolicy
from rtunnel._core.reconnect import Event, State, after_failure, next_state
from rtunnel.errors import (
    AlreadyConnectedError,
    AuthenticationError,
    ConnectError,
    CredentialError,
    HostKeyError,
    ProxyAuthenticationError,
    ReconnectLimitError,
    RTunnelError,
    SpecError,
)

__all__ = ["LogonAbandoned", "ReconnectHost", "Reconnector", "retryable"]

_log = Logger()

_LOGON_UNDER_WAY = (State.LOGGING_ON, State.LOGON_WAIT, State.WAITING, State.RECONNECTING)


class ReconnectHost(Protocol):
    """What the :class:`Reconnector` asks of the tunnel it drives."""

    def connect(self) -> Coroutine[Any, Any, None]:
        """One logon (cancelled: given up; raises an RTunnelError when it fails)."""

    def announce(self, retry: int, error: Exception) -> float | None:
        """Tell observers of retry ``retry``; the delay before it, or None to give up."""

    def retryable(self, error: Exception) -> bool:
        """Whether ``error`` may go away by itself (a fault, not a refusal)."""

    def abandoned(self) -> Exception:
        """The error of a logon given up because logoff() was called."""

    def reconnected(self) -> Coroutine[Any, Any, None]:
        """A reconnect logged on: re-establish what the lost connection had."""

    def lost(self) -> None:
        """The connection was lost and a reconnect follows: what it had waits for it."""

    def stopped(self, failure: Failure | None) -> None:
        """The tunnel stops for good, with ``failure`` (None: logged off)."""


class Reconnector:
    """
    Drives the tunnel connection's state machine.

    :param clock: runs the waits before retries.
    :param host: the tunnel's side.
    :param policy: the reconnect policy now (read at each decision: options may change).
    :param where: names the server in messages (``"HOST port N"``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        host: ReconnectHost,
        policy: Callable[[], ReconnectPolicy],
        where: str,
    ) -> None:
        self._clock = clock
        self._host = host
        self._policy = policy
        self._where = where
        self.state = State.STOPPED
        #: When :attr:`state` was entered (the clock's seconds), for status (issue #14).
        self.since = clock.seconds()
        #: Stopped by an error (given up, or the connection lost for good), not logoff.
        self.failed = False
        #: Retries in a row of the current outage (the backoff's step).
        self.retry = 0
        #: The wait before a reconnect (WAITING).
        self.call: IDelayedCall | None = None
        # Fires when the logon under way (LOGGING_ON, LOGON_WAIT, RECONNECTING) settles.
        self._finished: Deferred[None] | None = None
        # Gives up the step of that logon under way (its connect or its wait).
        self._abort: Callable[[], object] | None = None
        # when_stopped() calls waiting for the tunnel to stop.
        self._stop_waiters: list[Deferred[None]] = []
        # The error the tunnel stops with, whatever stops it (fail_with()).
        self._fatal: Exception | None = None

    def waiting(self) -> bool:
        """Between connections, with a reconnect scheduled or its logon under way."""
        return self.call is not None or self.state is State.RECONNECTING

    def move(self, event: Event) -> None:
        """Take the transition ``event`` leads to (IllegalTransition: a bug in rtunnel)."""
        state = next_state(self.state, event)
        if state is not self.state:
            self.since = self._clock.seconds()
        if event is Event.LOGON:
            self.failed = False
        elif state is State.STOPPED and event in (Event.FAIL, Event.LOST):
            self.failed = True
        self.state = state

    # -- the first logon

    def logon(self) -> Deferred[None]:
        """
        Log on; with reconnect mode ``"always"``, retry a failed logon by the policy.
        Fails with the logon's error, or :class:`~rtunnel.errors.ReconnectLimitError`.
        """
        if self.state in _LOGON_UNDER_WAY:
            return defer.fail(AlreadyConnectedError("A logon is already in progress."))
        if self.state is not State.STOPPED:
            return defer.fail(AlreadyConnectedError("Already logged on; log off first."))
        self.move(Event.LOGON)
        finished: Deferred[None] = Deferred()
        self._finished = finished
        return Deferred.fromCoroutine(self._logon(finished))

    async def _logon(self, finished: Deferred[None]) -> None:
        try:
            retry = 0
            while True:
                try:
                    await self._attempt()
                    return
                except RTunnelError as e:
                    then = self._after(e)
                    if then is not Event.RETRY:
                        self.move(then)
                        raise
                    retry += 1
                    delay = self._host.announce(retry, e)
                    if self.state is not State.LOGGING_ON:
                        raise self._host.abandoned() from None  # an observer logged off
                    if delay is None:
                        self.move(Event.FAIL)
                        raise ReconnectLimitError(
                            f"Gave up connecting to {self._where} after {retry - 1} retries: {e}"
                        ) from None
                    self.move(Event.RETRY)
                    await self._wait(delay)
                    self.move(Event.TIMER)
        finally:
            # Fired here, inside the coroutine, not from the returned Deferred's callbacks:
            # a logoff() waiting on it must not resume in the middle of that chain.
            self._finished = None
            finished.callback(None)

    # -- an established connection lost

    def lost(self, error: Exception) -> bool:
        """
        The connection ended (not by logoff): move on by the table. True when a
        reconnect follows (the caller then resets what must be re-established and calls
        :meth:`schedule`); False when the tunnel stops.
        """
        then = self._after(error)
        self.move(then)
        return then is Event.LOST_RETRY

    def ended(self, failure: Failure, clean: bool, worked: Callable[[], bool]) -> None:
        """
        The logged-on connection ended with ``failure`` (``clean``: while logging off)
        and observers have heard: stop, or reconnect by the table. ``worked`` says whether
        that connection showed reconnecting works (the backoff then starts again).
        """
        if self.state is State.LOGGING_OFF:
            # Logged off, or an observer of the loss called logoff().
            self.give_up(None if clean else failure)
            return
        error = cast(Exception, failure.value)
        if self.lost(error):
            if worked():
                # This outage starts from the first step again (issue #12).
                self.retry = 0
            self._host.lost()
            self.schedule(error)
            return
        self.give_up(failure)

    def schedule(self, error: Exception) -> None:
        """Announce the next retry and wait for it on the clock, or give up."""
        if self.state is not State.WAITING:
            return  # an observer of the loss called logoff(), which takes it from here
        self.retry += 1
        delay = self._host.announce(self.retry, error)
        if self.state is not State.WAITING:
            return  # an observer of the attempt called logoff()
        if delay is None:
            self.move(Event.FAIL)
            self.give_up(
                Failure(
                    ReconnectLimitError(
                        f"Gave up reconnecting to {self._where} after {self.retry - 1} "
                        f"retries; the last error was: {error}"
                    )
                )
            )
            return
        self.call = self._clock.callLater(delay, self._reconnect_now)

    def _reconnect_now(self) -> None:
        self.call = None
        self.move(Event.TIMER)
        finished: Deferred[None] = Deferred()
        self._finished = finished
        d = Deferred.fromCoroutine(self._reconnect(finished))
        d.addErrback(lambda f: _log.failure("reconnecting failed unexpectedly", f))

    async def _reconnect(self, finished: Deferred[None]) -> None:
        try:
            try:
                await self._attempt()
            finally:
                self._finished = None
                finished.callback(None)
        except RTunnelError as e:
            if self.state is State.LOGGING_OFF:
                return  # logoff() takes it from here
            then = self._after(e)
            self.move(then)
            if then is Event.RETRY:
                self.schedule(e)
            else:
                self.give_up(Failure(e))
            return
        await self._host.reconnected()

    # -- stopping for good

    def fail_with(self, error: Exception) -> None:
        """Make ``error`` the reason the tunnel stops, whatever stops it next (a logoff)."""
        self._fatal = error

    def give_up(self, failure: Failure | None) -> None:
        """The tunnel stops for good (``failure`` None: logged off): tell the host, then
        the when_stopped() waiters."""
        if self._fatal is not None:
            failure, self._fatal = Failure(self._fatal), None
        if failure is not None:
            self.failed = True
        self.retry = 0
        self._host.stopped(failure)
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    def when_stopped(self) -> Deferred[None]:
        """Fires with None when the tunnel next stops by a logoff; fails with the reason
        when it stops any other way."""
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        return d

    # -- logoff

    async def stop(self) -> None:
        """
        Logoff begins: cancel a scheduled reconnect, give up a logon under way and wait
        for it to settle. :meth:`stopped` ends the logoff.
        """
        self.move(Event.LOGOFF)
        if self.call is not None:
            # Waiting to reconnect: nothing is connected.
            self.call.cancel()
            self.call = None
        finished = self._finished
        if finished is not None:
            # It fails with the host's abandoned() error; wait for it to settle.
            if self._abort is not None:
                self._abort()
            await finished

    def stopped(self) -> None:
        """Logoff finished (a second logoff() during one may have finished it already)."""
        if self.state is State.LOGGING_OFF:
            self.move(Event.LOGGED_OFF)

    # -- steps

    def _after(self, error: Exception) -> Event:
        return after_failure(
            self.state, mode=self._policy().mode, retryable=self._host.retryable(error)
        )

    async def _attempt(self) -> None:
        connecting = Deferred.fromCoroutine(self._host.connect())
        self._abort = connecting.cancel
        try:
            await connecting
        finally:
            self._abort = None

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds; logoff ends the wait with the abandoned() error."""
        waiting: Deferred[None] = Deferred()
        call = self._clock.callLater(delay, waiting.callback, None)

        def abandon() -> None:
            if call.active():
                call.cancel()
            if not waiting.called:
                waiting.errback(Failure(defer.CancelledError()))

        self._abort = abandon
        try:
            await waiting
        except defer.CancelledError:
            raise self._host.abandoned() from None
        finally:
            self._abort = None


class LogonAbandoned(ConnectError):
    """A logon given up because logoff() was called, or its Deferred cancelled."""


def retryable(error: BaseException) -> bool:
    """
    Network faults, timeouts and server restarts are retried; refusals, and a logon the
    user gave up on, are final.
    """
    return isinstance(error, RTunnelError) and not isinstance(
        error,
        (
            LogonAbandoned,
            HostKeyError,
            AuthenticationError,
            ProxyAuthenticationError,
            CredentialError,
            SpecError,
            AlreadyConnectedError,
            ReconnectLimitError,
        ),
    )
