"""
Telling a tunnel's observers (:class:`~rtunnel.TunnelObserver`) and its log: the
reference's events (SSHStatus, connection events, Log, Error, reconnect attempts, forward
states). An observer that raises is logged and skipped; the others still hear the event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.logger import Logger, LogLevel
from typing_extensions import override

from rtunnel._core.policy import ReconnectPolicy
from rtunnel._model import Forward, ReconnectAttempt, TunnelObserver
from rtunnel.client.channels.connection import ForwardingConnection
from rtunnel.errors import ChannelError, ConnectionLostError, RTunnelError

__all__ = ["JumpProgress", "Observers"]

# The facade's namespace, as before these lines moved out of rtunnel/tunnel.py.
_log = Logger(namespace="rtunnel.tunnel")


class Observers:
    """
    A tunnel's observers, in the order added, and its log lines.

    :param log_level: the tunnel's log level now (1 info, 2 verbose, 3 debug).
    """

    def __init__(self, log_level: Callable[[], int]) -> None:
        self._observers: list[TunnelObserver] = []
        self._log_level = log_level

    def add(self, observer: TunnelObserver) -> None:
        self._observers.append(observer)

    def remove(self, observer: TunnelObserver) -> None:
        self._observers.remove(observer)

    def __iter__(self) -> Iterator[TunnelObserver]:
        return iter(self._observers)

    def __len__(self) -> int:
        return len(self._observers)

    def notify(self, event: str, *args: object) -> None:
        """Call ``event`` (a TunnelObserver method name) on every observer."""
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                _log.failure(
                    "observer {observer!r} failed on {event}", observer=observer, event=event
                )

    def forward_changed(self, forward: Forward) -> None:
        self.notify("forward_state_changed", forward)

    def log(self, level: int, message: str) -> None:
        """A log message at the reference's ``level`` (1 info, 2 verbose, 3 debug)."""
        if level > self._log_level():
            return
        if level <= 1:
            _log.info("{message}", message=message)
        else:
            _log.debug("{message}", message=message)
        self.notify("log", level, message)

    def status(self, message: str) -> None:
        """Progress of the SSH connection (the reference's SSHStatus), also logged."""
        self.notify("ssh_status", message)
        self.log(1, message)

    def connection_status(self, event: str, code: int, description: str) -> None:
        self.notify("connection_status", event, code, description)

    def connection_ended(self, where: str, error: Exception, clean: bool) -> None:
        """The logged-on connection to ``where`` (``"HOST port N"``) ended (``clean``: by
        logoff): its connection event, the log line of a loss, then ``disconnected``."""
        if clean:
            self.connection_status("disconnected", 0, f"Logged off from {where}.")
        else:
            code = error.code if isinstance(error, RTunnelError) else ConnectionLostError.code
            self.connection_status("broken", code, str(error))
            self.log(1, f"Connection to {where} lost: {error}")
        self.notify("disconnected", None if clean else error)

    def error(self, error: RTunnelError, conn: ForwardingConnection | None) -> None:
        """An error that fails no call of the user's (the reference's Error event)."""
        if isinstance(error, ChannelError) and conn is not None:
            # One per channel, which remote clients open at will: rate-limited (D18).
            conn.warn_limited("channel-error", str(error), LogLevel.error)
        else:
            _log.error("{error}", error=error)
        self.notify("error", error)

    def next_retry(
        self,
        policy: ReconnectPolicy,
        where: tuple[str, int],
        kind: str,
        retry: int,
        error: Exception,
        remote_port: int | None = None,
    ) -> float | None:
        """The delay before retry ``retry``, after telling observers (who may cancel it);
        None to give up."""
        if policy.exhausted(retry):
            return None
        delay = policy.delay(retry)
        attempt = ReconnectAttempt(
            host=where[0],
            port=where[1],
            retry_count=retry,
            retries_remaining=policy.retries_remaining(retry),
            max_retry_count=policy.max_retries,
            retry_interval=delay,
            retry_type=kind,
            remote_port=remote_port,
            error=error,
        )
        # The one log line per attempt (the command prints the same text itself and
        # skips this event by its reconnect_attempt key).
        _log.info(attempt.LOG_FORMAT, reconnect_attempt=attempt, **attempt.fields())
        for observer in list(self._observers):
            try:
                observer.reconnect_attempt(attempt)
            except Exception:
                _log.failure("observer {observer!r} failed", observer=observer)
        return None if attempt.cancelled else delay


class JumpProgress(TunnelObserver):
    """
    Passes a jump host's progress on to the observers of the tunnel it carries (its
    SSHStatus and connection events, named as the jump host's), so ``-v`` and observers
    see the whole way; twisted.logger already has the jump tunnel's own log lines.
    """

    def __init__(self, outer: Observers, where: str) -> None:
        self._outer = outer
        self._where = where

    @override
    def ssh_status(self, message: str) -> None:
        self._outer.notify("ssh_status", f"{self._where}: {message}")

    @override
    def connection_status(self, event: str, status_code: int, description: str) -> None:
        self._outer.notify(
            "connection_status", f"jump-{event}", status_code, f"{self._where}: {description}"
        )
