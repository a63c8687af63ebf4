"""
systemd's ``Type=notify`` protocol (issue #14; sd_notify(3)), in a few lines and no
dependency: datagrams of ``KEY=VALUE`` lines to the Unix socket ``$NOTIFY_SOCKET`` names
(a path, or ``@name`` in the abstract namespace).

:class:`SystemdNotifier` watches a :class:`~rtunnel.operations.status.StatusSource`:
``READY=1`` once, when every configured forward of every tunnel is first active (so
``systemctl start`` returns when the tunnel is usable, as ``ssh -f -o
ExitOnForwardFailure=yes`` does); a ``STATUS=`` line whenever the summary changes
(``systemctl status`` shows it); ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` while no
tunnel has failed (a reactor that hangs stops it, and systemd restarts the service);
``STOPPING=1`` on stop. Without ``$NOTIFY_SOCKET`` it does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rtunnel._core.text import printable
from rtunnel.operations.status import StatusSource, TunnelStatus

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["SystemdNotifier", "notify", "notify_address", "summary", "watchdog_interval"]

_log = Logger()

#: The longest STATUS= text sent (systemctl shows one line).
MAX_STATUS = 200


def notify_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The socket ``$NOTIFY_SOCKET`` names (``@`` becomes the abstract namespace's NUL),
    or None when unset or not a Unix socket (``vsock:`` is not supported)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification; False when there is nowhere to send it or it failed."""
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode("utf-8"), address)
    except OSError as e:
        _log.debug("sd_notify to {address!r} failed: {error}", address=address, error=e)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """
    Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3)
    recommends that), or None without a watchdog or when ``$WATCHDOG_PID`` names another
    process.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


def summary(tunnels: Sequence[TunnelStatus]) -> str:
    """
    The ``STATUS=`` text: each tunnel's state and how many of its forwards are active
    (no channel or byte counts, which would change at every connection).
    """
    parts = []
    for t in tunnels:
        active = sum(f.state == "active" for f in t.forwards)
        parts.append(f"{t.name}: {t.state}, {active}/{len(t.forwards)} forwards active")
    text = "; ".join(parts) if parts else "no tunnels"
    return printable(text, MAX_STATUS)


class SystemdNotifier:
    """
    Tells systemd how the tunnels of ``source`` are (see the module's text).

    :param clock: runs the checks.
    :param source: the tunnels.
    :param environ: where ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` are read (default:
        ``os.environ``).
    :param interval: seconds between looks at ``source``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        source: StatusSource,
        environ: Mapping[str, str] | None = None,
        interval: float = 1.0,
    ) -> None:
        self._clock = clock
        self._source = source
        self._environ = dict(os.environ if environ is None else environ)
        self._interval = interval
        self.ready_sent = False
        self._last: str | None = None
        self._loops: list[LoopingCall] = []
        self._stopping = False
        self._nudge: IDelayedCall | None = None

    @property
    def enabled(self) -> bool:
        """Whether ``$NOTIFY_SOCKET`` names a socket to talk to."""
        return notify_address(self._environ) is not None

    def start(self) -> None:
        """Look at the tunnels now and every ``interval``; ping the watchdog if asked."""
        if not self.enabled:
            return
        look = LoopingCall(self.check)
        look.clock = self._clock
        self._loops.append(look)
        look.start(self._interval, now=True)
        ping = watchdog_interval(self._environ)
        if ping is not None:
            dog = LoopingCall(self._watchdog)
            dog.clock = self._clock
            self._loops.append(dog)
            dog.start(ping, now=True)

    def changed(self) -> None:
        """
        Something changed (a tunnel's observer says so): look again as soon as the event
        that said so is over, not at the next tick, which a short-lived state (ready, then
        lost within the second) would slip between.
        """
        if not self.enabled or self._stopping or self._nudge is not None:
            return

        def look() -> None:
            self._nudge = None
            if not self._stopping:
                self.check()

        self._nudge = self._clock.callLater(0, look)

    def check(self) -> None:
        """READY=1 the first time every forward is active; STATUS= when it changed."""
        tunnels = tuple(self._source.status())
        line = summary(tunnels)
        ready = bool(tunnels) and all(t.ready for t in tunnels)
        if ready and not self.ready_sent:
            self.ready_sent = True
            self._last = line
            notify(f"READY=1\nSTATUS={line}", self._environ)
        elif line != self._last:
            self._last = line
            notify(f"STATUS={line}", self._environ)

    def _watchdog(self) -> None:
        # A failed tunnel will not come back by itself: let the watchdog restart us.
        if all(t.state != "failed" for t in self._source.status()):
            notify("WATCHDOG=1", self._environ)

    def stop(self) -> None:
        """``STOPPING=1`` (once), and no more checks or pings: call it when the shutdown
        begins (sd_notify(3)), not once it is over."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self._nudge is not None and self._nudge.active():
            self._nudge.cancel()
        self._nudge = None
        if self.enabled and not self._stopping:
            self._stopping = True
            notify("STOPPING=1", self._environ)
