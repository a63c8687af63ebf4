"""
rtunnel from asyncio: ``async with`` / ``await`` on the application's own running loop
(FastAPI, aiohttp, plain ``asyncio.run``; uvloop too).

::

    from rtunnel import PrivateKeyFile, TunnelOptions
    from rtunnel.aio import Tunnel

    async def main() -> None:
        options = TunnelOptions.create(user="me", auth=[PrivateKeyFile("~/.ssh/id_ed25519")])
        async with Tunnel("gateway.example.com", options=options) as tunnel:
            forward = await tunnel.request_forwarding("", 8080, "127.0.0.1", 8000)
            ...

The same API shape as :mod:`rtunnel.blocking`, with ``await``; event mode gives each
connection as a (:class:`ChannelReader`, :class:`ChannelWriter`) pair, shaped like
asyncio's ``StreamReader`` / ``StreamWriter``: a reader that stops reading stops the SSH
window, and ``await writer.drain()`` waits while the server's window is shut.

How: the Twisted reactor runs in rtunnel's background thread (:mod:`rtunnel._bridge`, the
same runner as :mod:`rtunnel.blocking`), and each call's result comes back to the calling
loop through ``asyncio.wrap_future`` (``loop.call_soon_threadsafe``). Not Twisted's
``AsyncioSelectorReactor`` on the application's loop: that works only while no other reactor
is installed in the process (and must be installed before anything imports
``twisted.internet.reactor``), its ``stop()`` stops the application's loop, its thread pool
and startup triggers start only from its own ``run()``, and it needs a loop with
``add_reader`` (not the Proactor loop). The thread costs one thread per process and a
thread hop per call (tens of microseconds), and works on any loop, uvloop included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred

from rtunnel._bridge import ChannelStream, ChannelStreamFactory, ListenerClosed, now, runner
from rtunnel._core.forward_policy import ForwardPolicy
from rtunnel._model import ChannelInfo, Forward, TunnelObserver, TunnelStatistics
from rtunnel.errors import CallTimeoutError, NotConnectedError, RTunnelError
from rtunnel.options import TunnelOptions
from rtunnel.tunnel import ReverseTunnel

__all__ = [
    "DEFAULT_TIMEOUT",
    "CallTimeoutError",
    "ChannelReader",
    "ChannelWriter",
    "Listener",
    "ListenerClosed",
    "Tunnel",
]

_T = TypeVar("_T")

#: Seconds a call waits by default (a tunnel's ``timeout``).
DEFAULT_TIMEOUT = 60.0

#: An event-mode handler: ``async def handler(reader, writer)``, as ``asyncio.start_server``.
Handler = Callable[["ChannelReader", "ChannelWriter"], Awaitable[object]]


async def _wait(
    what: str,
    function: Callable[[], Deferred[_T]],
    timeout: float | None,
    undo: Callable[[_T], object] | None = None,
) -> _T:
    """
    Run ``function`` in the reactor thread; await its result, at most ``timeout`` s.
    ``undo`` takes a result that arrives after the call was given up (timeout, cancel).
    """
    future = asyncio.wrap_future(runner.submit(function, undo))
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        if future.done() and not future.cancelled():
            raise  # the call's own TimeoutError
        raise CallTimeoutError(f"{what}() did not finish within {timeout:g} s.") from None


class Tunnel:
    """
    A reverse tunnel driven from asyncio. ``async with Tunnel(...) as tunnel:`` logs on,
    and logs off on exit; or call :meth:`logon` and :meth:`close`.

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
        self.host = host
        self.port = port
        self.timeout = timeout
        self._options = options
        self._tunnel: ReverseTunnel | None = None
        self._closed = False
        self._listeners: list[Listener] = []

    async def _started(self) -> ReverseTunnel:
        if self._closed:
            raise NotConnectedError("The tunnel is closed.")
        if self._tunnel is None:
            await asyncio.to_thread(runner.acquire)
            try:
                self._tunnel = await _wait(
                    "Tunnel",
                    now(
                        lambda: ReverseTunnel(
                            runner.reactor, self.host, self.port, options=self._options
                        )
                    ),
                    self.timeout,
                )
            except BaseException:
                await asyncio.to_thread(runner.release)
                raise
        return self._tunnel

    async def _call(
        self,
        what: str,
        function: Callable[[ReverseTunnel], Deferred[_T]],
        timeout: float | None,
    ) -> _T:
        tunnel = await self._started()
        return await _wait(
            what, lambda: function(tunnel), self.timeout if timeout is None else timeout
        )

    async def _call_now(
        self, what: str, function: Callable[[ReverseTunnel], _T], timeout: float | None
    ) -> _T:
        return await self._call(what, lambda t: maybeDeferred(function, t), timeout)

    # -- logon / logoff

    async def logon(self, timeout: float | None = None) -> None:
        """Connect, check the host key, authenticate (see :meth:`ReverseTunnel.logon`)."""
        try:
            await self._call("logon", lambda t: t.logon(), timeout)
        except (CallTimeoutError, asyncio.CancelledError):
            # Give the logon up at once rather than leave it running behind our back.
            if self._tunnel is not None:
                runner.submit(self._tunnel.logoff)
            raise

    async def logoff(self, timeout: float | None = None) -> None:
        """Cancel the forwards, close the channels and the connection."""
        for listener in list(self._listeners):
            await listener._forget()
        if self._tunnel is not None:
            await self._call("logoff", lambda t: t.logoff(), timeout)

    async def close(self, timeout: float | None = None) -> None:
        """:meth:`logoff`, then let the reactor thread go (if no other tunnel uses it)."""
        if self._closed:
            return
        try:
            await self.logoff(timeout)
        finally:
            self._closed = True
            if self._tunnel is not None:
                await asyncio.to_thread(runner.release)

    async def __aenter__(self) -> Tunnel:
        try:
            await self.logon()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        # Leaving on an error or a cancellation: log off all the same, without hiding it.
        with contextlib.suppress(RTunnelError, TimeoutError):
            await self.close()

    # -- forwards

    async def request_forwarding(
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
        Forwarding mode (``ssh -R [bind_address:]port:host:host_port``): the
        :class:`~rtunnel.Forward` (its ``port`` the listening one) once the server agreed.
        ``policy`` (a :class:`~rtunnel.ForwardPolicy`) as there too.
        """
        return await self._call(
            "request_forwarding",
            lambda t: t.request_forwarding(
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

    async def cancel_forwarding(
        self, bind_address: str, port: int, timeout: float | None = None
    ) -> None:
        """Ask the server to stop listening (``port``: the listening port)."""
        await self._call(
            "cancel_forwarding", lambda t: t.cancel_forwarding(bind_address, port), timeout
        )

    async def listen(
        self,
        bind_address: str,
        port: int,
        *,
        handler: Handler | None = None,
        backlog: int = 16,
        timeout: float | None = None,
    ) -> Listener:
        """
        Event mode: ask the server to listen on ``bind_address:port`` and bring each
        connection here as a (reader, writer) pair. Without ``handler``, take them with
        :meth:`Listener.accept`; with one, ``await handler(reader, writer)`` runs as a task
        per connection (as ``asyncio.start_server``), and the writer is closed after it.
        At most ``backlog`` connections wait to be accepted; more are refused.
        """
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {backlog}.")
        factory = ChannelStreamFactory(backlog)
        forward = await self._call(
            "listen", lambda t: t.request_forwarding(bind_address, port, factory=factory), timeout
        )
        listener = Listener(self, forward, factory, handler)
        self._listeners.append(listener)
        return listener

    async def forwards(self) -> list[Forward]:
        """The forwards requested (pending and active)."""
        return await self._call_now("forwards", lambda t: t.forwards, None)

    # -- the channel table

    async def channels(self) -> list[ChannelInfo]:
        """A snapshot of the live channels."""
        return await self._call_now("channels", lambda t: t.channels, None)

    async def channel(self, channel_id: int) -> ChannelInfo:
        """One live channel; :class:`~rtunnel.ChannelError` if there is none."""
        return await self._call_now("channel", lambda t: t.channel(channel_id), None)

    async def send_channel_data(
        self, channel_id: int, data: bytes, timeout: float | None = None
    ) -> None:
        """Send bytes on a channel (queued while the server's window is shut)."""
        await self._call_now(
            "send_channel_data", lambda t: t.send_channel_data(channel_id, data), timeout
        )

    async def send_channel_eof(self, channel_id: int, timeout: float | None = None) -> None:
        """Half-close a channel."""
        await self._call_now("send_channel_eof", lambda t: t.send_channel_eof(channel_id), timeout)

    async def close_channel(self, channel_id: int, timeout: float | None = None) -> None:
        """Close a channel after pending data is sent."""
        await self._call_now("close_channel", lambda t: t.close_channel(channel_id), timeout)

    # -- the rest

    async def statistics(self, timeout: float | None = None) -> TunnelStatistics:
        """A snapshot of the counters."""
        return await self._call_now("statistics", lambda t: t.statistics(), timeout)

    async def connected(self) -> bool:
        """True while logged on."""
        if self._closed or self._tunnel is None:
            return False
        return await self._call_now("connected", lambda t: t.connected, None)

    async def rekey(self, timeout: float | None = None) -> None:
        """Exchange new keys now."""
        await self._call("rekey", lambda t: t.rekey(), timeout)

    async def add_observer(self, observer: TunnelObserver) -> None:
        """
        Receive channel and connection events. Its methods run in the reactor thread, not
        on the loop: hand work to the loop with ``loop.call_soon_threadsafe``.
        """
        await self._call_now("add_observer", lambda t: t.add_observer(observer), None)

    async def remove_observer(self, observer: TunnelObserver) -> None:
        """Stop receiving events."""
        await self._call_now("remove_observer", lambda t: t.remove_observer(observer), None)


class Listener:
    """
    One event-mode forward (from :meth:`Tunnel.listen`).

    :ivar forward: the forward (``forward.port`` is the listening port).
    """

    def __init__(
        self,
        tunnel: Tunnel,
        forward: Forward,
        factory: ChannelStreamFactory,
        handler: Handler | None,
    ) -> None:
        self.forward = forward
        self._tunnel = tunnel
        self._factory = factory
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        if handler is not None:
            self._dispatcher = asyncio.create_task(self._dispatch(handler))

    async def accept(self, timeout: float | None = None) -> tuple[ChannelReader, ChannelWriter]:
        """
        The next connection as a (reader, writer) pair; ``timeout`` ``None`` waits as long
        as it takes. :class:`ListenerClosed` once the listener or the tunnel is closed.
        """
        stream = await _wait("accept", self._factory.accept, timeout, self._factory.unaccept)
        return ChannelReader(stream), ChannelWriter(stream)

    @property
    def refused(self) -> int:
        """Connections refused because ``backlog`` were waiting."""
        return self._factory.refused

    async def _dispatch(self, handler: Handler) -> None:
        while True:
            try:
                reader, writer = await self.accept()
            except RTunnelError:
                return
            task = asyncio.create_task(_handle(handler, reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forget(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(RTunnelError):
                await _wait("close", now(self._factory.close), self._tunnel.timeout)
            if self._dispatcher is not None:
                await asyncio.gather(self._dispatcher, return_exceptions=True)

    async def close(self, timeout: float | None = None) -> None:
        """Cancel the forward; connections not yet accepted are aborted, open ones stay."""
        if self._closed:
            return
        try:
            with contextlib.suppress(RTunnelError):
                await self._tunnel.cancel_forwarding(
                    self.forward.bind_address, self.forward.port, timeout
                )
        finally:
            await self._forget()
            if self in self._tunnel._listeners:
                self._tunnel._listeners.remove(self)

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _handle(handler: Handler, reader: ChannelReader, writer: ChannelWriter) -> None:
    try:
        await handler(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(RTunnelError):
            await writer.wait_closed()


class ChannelReader:
    """The reading end of a channel, shaped like ``asyncio.StreamReader``."""

    def __init__(self, stream: ChannelStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def _fill(self, max_bytes: int = 65536) -> bool:
        """Read more into the buffer; False at EOF."""
        if self._eof:
            return False
        data = await _wait("read", lambda: self._stream.read(max_bytes), None, self._stream.unread)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: everything until EOF); ``b""`` at EOF."""
        if n < 0:
            while await self._fill():
                pass
            return self._take(len(self._buffer))
        if n == 0:
            return b""
        if not self._buffer:
            await self._fill(n)
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if EOF comes first."""
        while len(self._buffer) < n:
            if not await self._fill():
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, n)
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Up to and including ``separator``; ``IncompleteReadError`` at EOF before it."""
        start = 0
        while (found := self._buffer.find(separator, start)) < 0:
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, None)
        return self._take(found + len(separator))

    async def readline(self) -> bytes:
        """One line with its ``\\n``; at EOF what is left (possibly ``b""``)."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial

    def at_eof(self) -> bool:
        """True once EOF was read and the buffer is empty."""
        return self._eof and not self._buffer

    def __aiter__(self) -> ChannelReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class ChannelWriter:
    """
    The writing end of a channel, shaped like ``asyncio.StreamWriter``: :meth:`write`
    queues, ``await`` :meth:`drain` waits until the channel took everything written
    (the server's window is open).

    :ivar info: the channel's row in the table (ids, addresses, byte counters).
    """

    def __init__(self, stream: ChannelStream) -> None:
        self._stream = stream
        assert stream.info is not None
        self.info: ChannelInfo = stream.info
        self._pending: list[asyncio.Future[None]] = []
        self._closing = False

    @property
    def channel_id(self) -> int:
        """The channel's id on the connection."""
        return self.info.channel_id

    def write(self, data: bytes) -> None:
        """Queue ``data`` (sent in order); ``await drain()`` for backpressure."""
        if not data:
            return
        payload = bytes(data)
        future = asyncio.wrap_future(runner.submit(lambda: self._stream.write(payload)))
        # Marked as seen: an error is raised by drain(), never printed by asyncio's
        # "exception was never retrieved" when the app closes without draining.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append(future)

    def writelines(self, data: list[bytes]) -> None:
        """Queue several byte strings."""
        self.write(b"".join(data))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the channel took what was written; ChannelError if it closed."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)
        except TimeoutError:
            raise CallTimeoutError(f"drain() did not finish within {timeout:g} s.") from None

    def write_eof(self) -> None:
        """Half-close: EOF after what was written."""
        runner.submit(now(self._stream.send_eof))

    def can_write_eof(self) -> bool:
        """Always True: SSH channels half-close."""
        return True

    def close(self) -> None:
        """Close after what was written has gone out."""
        self._closing = True
        runner.submit(now(self._stream.close))

    def is_closing(self) -> bool:
        """True after :meth:`close` or once the channel closed."""
        return self._closing or self._stream.closed

    async def wait_closed(self) -> None:
        """Wait for the queued writes (errors from a channel closed meanwhile are dropped)."""
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending, return_exceptions=True)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"`` (the remote client), ``"sockname"`` (where it connected), ``"info"``."""
        if name == "peername":
            return (self.info.origin_address, self.info.origin_port)
        if name == "sockname":
            return (self.info.connected_address, self.info.connected_port)
        if name == "info":
            return self.info
        return default
