"""
rtunnel from plain blocking code: scripts, thread-based servers, Django or Flask apps.

:class:`Tunnel` is a :class:`~rtunnel.ReverseTunnel` behind blocking calls::

    from rtunnel import PrivateKeyFile, TunnelOptions
    from rtunnel.blocking import Tunnel

    options = TunnelOptions.create(user="me", auth=[PrivateKeyFile("~/.ssh/id_ed25519")])
    with Tunnel("gateway.example.com", options=options) as tunnel:   # logon
        forward = tunnel.request_forwarding("", 8080, "127.0.0.1", 8000)
        ...                                                          # logoff on exit

The reactor runs in a background thread that rtunnel starts with the first tunnel and stops
after the last one is closed: a private reactor instance, never the global
``twisted.internet.reactor``, so this works beside any other Twisted or asyncio code. Not
crochet: crochet runs the global reactor, which a process can have only one of, and it would
be a dependency for what :mod:`rtunnel._bridge` does in about a hundred lines.

Every call marshals into the reactor thread and waits for the answer, at most ``timeout``
seconds (default: the tunnel's ``timeout``): past that it raises :class:`CallTimeoutError`
(a :class:`TimeoutError`) naming the call. Errors are the library's own
(:class:`~rtunnel.SpecError`, :class:`~rtunnel.AuthenticationError`,
:class:`~rtunnel.ForwardingError`, ...). Objects may be shared between threads. Ctrl-C
while a call waits raises :class:`KeyboardInterrupt` in the caller as usual, gives that call
up, and leaving the ``with`` block logs off.

Event mode, as sockets: :meth:`Tunnel.listen` asks for a forward whose connections come to
this program as :class:`Channel` objects (``recv`` / ``sendall`` / ``send_eof`` /
``close``), taken with :meth:`Listener.accept` or handed to a ``handler`` in a thread of its
own per channel. A slow reader stops the SSH window (the server stops sending) instead of
buffering, and ``sendall`` returns once the channel took the bytes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from twisted.internet.defer import Deferred

from rtunnel._bridge import ChannelStream, ChannelStreamFactory, ListenerClosed, now, runner
from rtunnel._core.forward_policy import ForwardPolicy
from rtunnel._model import ChannelInfo, Forward, TunnelObserver, TunnelStatistics
from rtunnel.errors import CallTimeoutError, NotConnectedError, RTunnelError
from rtunnel.options import TunnelOptions
from rtunnel.tunnel import ReverseTunnel

__all__ = ["DEFAULT_TIMEOUT", "CallTimeoutError", "Channel", "Listener", "ListenerClosed", "Tunnel"]

_T = TypeVar("_T")

#: Seconds a call waits by default (a tunnel's ``timeout``).
DEFAULT_TIMEOUT = 60.0


def _wait(
    what: str,
    function: Callable[[], Deferred[_T]],
    timeout: float | None,
    undo: Callable[[_T], object] | None = None,
) -> _T:
    """
    Run ``function`` in the reactor thread and wait for its result.

    :param what: the call's name, for the timeout error.
    :param timeout: seconds, or ``None`` to wait as long as it takes.
    :param undo: what to do with a result that arrives after the call was given up.
    """
    if runner.in_reactor_thread():
        raise RuntimeError(
            f"rtunnel.blocking: {what}() called from the reactor thread (an observer or "
            "accept hook?) would wait for itself; use the ReverseTunnel there."
        )
    future = runner.submit(function, undo)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done():
            raise  # the call's own TimeoutError
        future.cancel()
        raise CallTimeoutError(f"{what}() did not finish within {timeout:g} s.") from None
    except BaseException:
        # KeyboardInterrupt (Ctrl-C) in the caller: give the call up.
        future.cancel()
        raise


class Tunnel:
    """
    A reverse tunnel driven by blocking calls. Create, then :meth:`logon` (or use it as a
    context manager: ``with Tunnel(...) as tunnel:`` logs on, and logs off on exit).

    :param host: the SSH server.
    :param port: its port.
    :param options: credentials, host keys and the rest (see
        :meth:`rtunnel.TunnelOptions.create`).
    :param timeout: seconds each call waits by default.
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        *,
        options: TunnelOptions | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._closed = False
        self._listeners: list[Listener] = []
        runner.acquire()
        try:
            self._tunnel: ReverseTunnel = _wait(
                "Tunnel",
                now(lambda: ReverseTunnel(runner.reactor, host, port, options=options)),
                timeout,
            )
        except BaseException:
            runner.release()
            raise

    def _call(self, what: str, function: Callable[[], Deferred[_T]], timeout: float | None) -> _T:
        if self._closed:
            raise NotConnectedError(f"{what}(): the tunnel is closed.")
        return _wait(what, function, self.timeout if timeout is None else timeout)

    def _call_now(self, what: str, function: Callable[[], _T], timeout: float | None) -> _T:
        return self._call(what, now(function), timeout)

    # -- logon / logoff

    def logon(self, timeout: float | None = None) -> None:
        """Connect, check the host key, authenticate (see :meth:`ReverseTunnel.logon`)."""
        try:
            self._call("logon", self._tunnel.logon, timeout)
        except (CallTimeoutError, KeyboardInterrupt):
            # Give the logon up at once rather than leave it running behind our back.
            runner.submit(self._tunnel.logoff)
            raise

    def logoff(self, timeout: float | None = None) -> None:
        """Cancel the forwards, close the channels and the connection."""
        for listener in list(self._listeners):
            listener._forget()
        self._call("logoff", self._tunnel.logoff, timeout)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`logoff`, then let the reactor thread go (if no other tunnel uses it)."""
        with self._lock:
            if self._closed:
                return
        try:
            self.logoff(timeout)
        finally:
            with self._lock:
                closed, self._closed = self._closed, True
            if not closed:
                runner.release()

    def __enter__(self) -> Tunnel:
        try:
            self.logon()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # Leaving on an error (or Ctrl-C): log off all the same, without hiding it.
        with contextlib.suppress(RTunnelError, TimeoutError, KeyboardInterrupt):
            self.close()

    # -- forwards

    def request_forwarding(
        self,
        bind_address: str,
        port: int,
        host: str | None = None,
        host_port: int | None = None,
        *,
        dynamic: bool = False,
        target_path: str | None = None,
        policy: ForwardPolicy | None = None,
        timeout: float | None = None,
    ) -> Forward:
        """
        Forwarding mode (``ssh -R [bind_address:]port:host:host_port``): returns the
        :class:`~rtunnel.Forward` (its ``port`` the listening one) once the server agreed.
        ``dynamic=True`` or ``target_path`` as for :meth:`ReverseTunnel.request_forwarding`.
        ``policy`` (a :class:`~rtunnel.ForwardPolicy`) as there too.
        """
        return self._call(
            "request_forwarding",
            lambda: self._tunnel.request_forwarding(
                bind_address,
                port,
                host,
                host_port,
                dynamic=dynamic,
                target_path=target_path,
                policy=policy,
            ),
            timeout,
        )

    def cancel_forwarding(self, bind_address: str, port: int, timeout: float | None = None) -> None:
        """Ask the server to stop listening (``port``: the listening port)."""
        self._call(
            "cancel_forwarding", lambda: self._tunnel.cancel_forwarding(bind_address, port), timeout
        )

    def listen(
        self,
        bind_address: str,
        port: int,
        *,
        handler: Callable[[Channel], object] | None = None,
        backlog: int = 16,
        timeout: float | None = None,
    ) -> Listener:
        """
        Event mode: ask the server to listen on ``bind_address:port`` and bring each
        connection to this program as a :class:`Channel`. Without ``handler``, take them
        with :meth:`Listener.accept`; with one, each channel is handed to
        ``handler(channel)`` in a new thread and closed when it returns. At most
        ``backlog`` channels wait to be accepted; more are refused.
        """
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {backlog}.")
        factory = ChannelStreamFactory(backlog)
        forward = self._call(
            "listen",
            lambda: self._tunnel.request_forwarding(bind_address, port, factory=factory),
            timeout,
        )
        listener = Listener(self, forward, factory, handler)
        self._listeners.append(listener)
        return listener

    @property
    def forwards(self) -> list[Forward]:
        """The forwards requested (pending and active)."""
        return self._call_now("forwards", lambda: self._tunnel.forwards, None)

    # -- the channel table

    @property
    def channels(self) -> list[ChannelInfo]:
        """A snapshot of the live channels."""
        return self._call_now("channels", lambda: self._tunnel.channels, None)

    def channel(self, channel_id: int) -> ChannelInfo:
        """One live channel; :class:`~rtunnel.ChannelError` if there is none."""
        return self._call_now("channel", lambda: self._tunnel.channel(channel_id), None)

    def send_channel_data(self, channel_id: int, data: bytes, timeout: float | None = None) -> None:
        """Send bytes on a channel (queued while the server's window is shut)."""
        self._call_now(
            "send_channel_data", lambda: self._tunnel.send_channel_data(channel_id, data), timeout
        )

    def send_channel_eof(self, channel_id: int, timeout: float | None = None) -> None:
        """Half-close a channel."""
        self._call_now(
            "send_channel_eof", lambda: self._tunnel.send_channel_eof(channel_id), timeout
        )

    def close_channel(self, channel_id: int, timeout: float | None = None) -> None:
        """Close a channel after pending data is sent."""
        self._call_now("close_channel", lambda: self._tunnel.close_channel(channel_id), timeout)

    # -- the rest

    def statistics(self, timeout: float | None = None) -> TunnelStatistics:
        """A snapshot of the counters."""
        return self._call_now("statistics", self._tunnel.statistics, timeout)

    @property
    def connected(self) -> bool:
        """True while logged on."""
        return not self._closed and self._call_now(
            "connected", lambda: self._tunnel.connected, None
        )

    def rekey(self, timeout: float | None = None) -> None:
        """Exchange new keys now."""
        self._call("rekey", self._tunnel.rekey, timeout)

    def add_observer(self, observer: TunnelObserver) -> None:
        """
        Receive channel and connection events. Its methods run in the reactor thread: they
        must return quickly and must not call this tunnel's blocking methods.
        """
        self._call_now("add_observer", lambda: self._tunnel.add_observer(observer), None)

    def remove_observer(self, observer: TunnelObserver) -> None:
        """Stop receiving events."""
        self._call_now("remove_observer", lambda: self._tunnel.remove_observer(observer), None)

    @property
    def reverse_tunnel(self) -> ReverseTunnel:
        """The :class:`~rtunnel.ReverseTunnel` underneath (reactor thread only)."""
        return self._tunnel


class Listener:
    """
    One event-mode forward (from :meth:`Tunnel.listen`): its connections as
    :class:`Channel` objects.

    :ivar forward: the forward (``forward.port`` is the listening port).
    """

    def __init__(
        self,
        tunnel: Tunnel,
        forward: Forward,
        factory: ChannelStreamFactory,
        handler: Callable[[Channel], object] | None,
    ) -> None:
        self.forward = forward
        self._tunnel = tunnel
        self._factory = factory
        self._closed = False
        self._dispatcher: threading.Thread | None = None
        if handler is not None:
            self._dispatcher = threading.Thread(
                target=self._dispatch, args=(handler,), name="rtunnel-listener", daemon=True
            )
            self._dispatcher.start()

    def accept(self, timeout: float | None = None) -> Channel:
        """
        The next connection. ``timeout`` ``None`` waits as long as it takes (as
        ``socket.accept`` does); raises :class:`ListenerClosed` once the listener or the
        tunnel is closed.
        """
        stream = _wait("accept", self._factory.accept, timeout, self._factory.unaccept)
        return Channel(stream)

    @property
    def refused(self) -> int:
        """Connections refused because ``backlog`` were waiting."""
        return self._factory.refused

    def _dispatch(self, handler: Callable[[Channel], object]) -> None:
        while True:
            try:
                channel = self.accept()
            except (ListenerClosed, RTunnelError):
                return
            threading.Thread(
                target=_handle, args=(handler, channel), name="rtunnel-channel", daemon=True
            ).start()

    def _forget(self) -> None:
        """The tunnel logs off: no more channels."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(RTunnelError):
                _wait("close", now(self._factory.close), self._tunnel.timeout)

    def close(self, timeout: float | None = None) -> None:
        """Cancel the forward; channels not yet accepted are aborted, open ones stay."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(RTunnelError):
                self._tunnel.cancel_forwarding(
                    self.forward.bind_address, self.forward.port, timeout
                )
        finally:
            _wait("close", now(self._factory.close), self._tunnel.timeout)
            if self in self._tunnel._listeners:
                self._tunnel._listeners.remove(self)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handle(handler: Callable[[Channel], object], channel: Channel) -> None:
    with channel:
        handler(channel)


class Channel:
    """
    One accepted connection, as a socket: :meth:`recv`, :meth:`sendall`,
    :meth:`send_eof`, :meth:`close`.

    :ivar info: the channel's row in the table (ids, addresses, byte counters).
    """

    def __init__(self, stream: ChannelStream) -> None:
        self._stream = stream
        assert stream.info is not None
        self.info: ChannelInfo = stream.info

    @property
    def channel_id(self) -> int:
        """The channel's id on the connection."""
        return self.info.channel_id

    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> bytes:
        """
        Up to ``max_bytes`` bytes, as soon as there are some; ``b""`` once the remote
        client sent EOF or the channel closed. ``timeout`` ``None`` waits as long as it
        takes.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}.")
        return _wait("recv", lambda: self._stream.read(max_bytes), timeout, self._stream.unread)

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        """
        Send ``data``; returns once the channel took it (waits while the server's window is
        shut). :class:`~rtunnel.ChannelError` if the channel is closed.
        """
        _wait("sendall", lambda: self._stream.write(bytes(data)), timeout)

    def send_eof(self, timeout: float | None = None) -> None:
        """Half-close: the remote client reads EOF after what was sent."""
        _wait("send_eof", now(self._stream.send_eof), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Close after what was sent has gone out."""
        with contextlib.suppress(RTunnelError):
            _wait("close", now(self._stream.close), timeout)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
