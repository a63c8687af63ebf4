"""
What :mod:`rtunnel.blocking` and :mod:`rtunnel.aio` share: one reactor in one background
thread, calls marshalled into it, and the reactor-side end of a channel stream.

Why a runner of rtunnel's own and not crochet: crochet drives the *global* reactor, so it
cannot be used in a process that runs (or will install) a reactor of its own, and it is a
dependency for about a hundred lines. This runner makes a *private* reactor instance (never
installed as ``twisted.internet.reactor``), so it coexists with any other Twisted or asyncio
code in the process; it is started when the first tunnel needs it and stopped, its thread
joined, when the last one is closed (a new instance next time: a reactor cannot be
restarted). The thread is a daemon thread and an ``atexit`` hook stops it, so an interrupted
program (Ctrl-C) still exits.

Every reactor-side object (the :class:`~rtunnel.ReverseTunnel`, the channel streams) is
touched only in the reactor thread: callers submit functions with :meth:`ReactorThread.submit`,
which is what makes the blocking and asyncio objects safe to share between threads.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTCP,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel._model import ChannelInfo
from rtunnel.errors import ChannelError, RTunnelError

__all__ = [
    "ChannelStream",
    "ChannelStreamFactory",
    "ListenerClosed",
    "ReactorThread",
    "now",
    "runner",
]

_T = TypeVar("_T")

#: Bytes a channel stream buffers before it stops granting SSH window (the reader is slow).
HIGH_WATER = 256 * 1024
#: ... and resumes once the reader has taken it below this.
LOW_WATER = 64 * 1024


class ListenerClosed(ChannelError):
    """The listener was closed (or its tunnel logged off): no more channels will come."""


def _new_reactor() -> Any:
    """A reactor instance that is not installed as the global one."""
    if sys.platform.startswith("linux"):
        from twisted.internet.epollreactor import EPollReactor

        return EPollReactor()
    from twisted.internet.selectreactor import SelectReactor

    return SelectReactor()


class ReactorThread:
    """
    A private reactor running in a daemon thread, shared by its users: started by the
    first :meth:`acquire`, stopped by the last :meth:`release`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._reactor: Any = None
        self._thread: threading.Thread | None = None

    @property
    def reactor(self) -> IReactorTCP:
        """The running reactor (only between :meth:`acquire` and :meth:`release`)."""
        assert self._reactor is not None, "acquire() the runner first"
        return cast(IReactorTCP, self._reactor)

    @property
    def running(self) -> bool:
        """Whether a reactor thread is running now."""
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def in_reactor_thread(self) -> bool:
        """Whether the caller is the reactor's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def acquire(self) -> None:
        """Start the reactor thread unless it runs; count one more user."""
        with self._lock:
            self._users += 1
            if self._thread is not None:
                return
            reactor = _new_reactor()
            started = threading.Event()
            reactor.callWhenRunning(started.set)
            thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="rtunnel-reactor",
                daemon=True,
            )
            self._reactor, self._thread = reactor, thread
            thread.start()
        started.wait(30)

    def release(self) -> None:
        """One user fewer; the last one stops the reactor and joins its thread."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            reactor, thread = self._reactor, self._thread
            self._reactor = self._thread = None
        reactor.callFromThread(reactor.stop)
        if threading.current_thread() is not thread:
            thread.join(10)

    def shutdown(self) -> None:
        """Stop the reactor whoever still uses it (at interpreter exit)."""
        with self._lock:
            self._users = 1
        self.release()

    def submit(
        self,
        function: Callable[[], Deferred[_T]],
        undo: Callable[[_T], object] | None = None,
    ) -> concurrent.futures.Future[_T]:
        """
        Run ``function`` in the reactor thread; the future has its result (a Deferred's
        result once it fires). Cancelling the future cancels that Deferred.

        :param undo: called (in the reactor thread) with a result that came too late, the
            future having been cancelled (a timeout) while the result was on its way: a
            read puts its bytes back, an accept its channel, so nothing is lost.
        """
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        reactor = self._reactor
        if reactor is None:
            future.set_exception(RTunnelError("The tunnel is closed."))
            return future

        # The future stays PENDING until the result is in (never set_running), so the
        # caller can still cancel() it while the Deferred waits; that cancels the Deferred.
        def settle(value: object) -> bool:
            try:
                if isinstance(value, Failure):
                    future.set_exception(value.value)
                elif isinstance(value, BaseException):
                    future.set_exception(value)
                else:
                    future.set_result(cast(_T, value))
            except concurrent.futures.InvalidStateError:
                return False
            return True

        def run() -> None:
            if future.cancelled():
                return
            try:
                d = function()
            except BaseException as e:
                settle(e)
                return

            def done(value: _T | Failure) -> None:
                if isinstance(value, Failure) and value.check(CancelledError) and future.done():
                    return None
                if not settle(value) and undo is not None and not isinstance(value, Failure):
                    undo(value)
                return None

            d.addBoth(done)
            future.add_done_callback(
                lambda f: reactor.callFromThread(d.cancel) if f.cancelled() else None
            )

        reactor.callFromThread(run)
        return future


def now(function: Callable[[], _T]) -> Callable[[], Deferred[_T]]:
    """``function`` (a plain call) as :meth:`ReactorThread.submit` takes it."""
    return lambda: maybeDeferred(function)


#: The one runner of this process.
runner = ReactorThread()
atexit.register(runner.shutdown)


def _settle_waiters(waiters: deque[Deferred[Any]], value: object) -> None:
    while waiters:
        d = waiters.popleft()
        if not d.called:
            if isinstance(value, BaseException):
                d.errback(Failure(value))
            else:
                d.callback(value)


@implementer(IHalfCloseableProtocol, IPushProducer)
class ChannelStream(Protocol):
    """
    The reactor-side end of one accepted channel, read and written by a blocking or an
    asyncio caller through Deferreds. Backpressure both ways: past :data:`HIGH_WATER`
    unread bytes the channel stops granting SSH window (the server stops sending), and a
    :meth:`write` fires only once the channel has taken the bytes (the server's window is
    open), so neither side buffers without bound.
    """

    def __init__(self) -> None:
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._eof = False
        self._closed = False
        #: close() or abort() was called: no more writes, whatever the server says.
        self._close_asked = False
        self._readers: deque[Deferred[None]] = deque()
        self._writers: deque[Deferred[None]] = deque()
        self._send_paused = False
        self.info: ChannelInfo | None = None

    # -- Twisted's side

    @override
    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.info = transport.info
        transport.registerProducer(self, True)

    @override
    def dataReceived(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        _settle_waiters(self._readers, None)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        """The remote client sent EOF."""
        self._eof = True
        _settle_waiters(self._readers, None)

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        """Our EOF went out."""

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = self._eof = True
        _settle_waiters(self._readers, None)
        _settle_waiters(self._writers, ChannelError(f"Channel {self._id()} is closed."))

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """The server's window is shut: writers wait."""
        self._send_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """The window is open again: waiting writers go on."""
        self._send_paused = False
        _settle_waiters(self._writers, None)

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """The channel is going away (its connectionLost follows)."""

    # -- the caller's side (always in the reactor thread)

    def _id(self) -> int:
        return self.info.channel_id if self.info is not None else -1

    def read(self, max_bytes: int) -> Deferred[bytes]:
        """Up to ``max_bytes`` bytes once some are there; ``b""`` at EOF."""
        return Deferred.fromCoroutine(self._read(max_bytes))

    async def _read(self, max_bytes: int) -> bytes:
        while not self._buffer and not self._eof:
            waiter: Deferred[None] = Deferred(lambda d: self._readers.remove(d))
            self._readers.append(waiter)
            await waiter
        if not self._buffer:
            return b""
        head = self._buffer.popleft()
        if len(head) > max_bytes:
            self._buffer.appendleft(head[max_bytes:])
            head = head[:max_bytes]
        self._buffered -= len(head)
        if self._reading_paused and self._buffered <= LOW_WATER and not self._closed:
            self._reading_paused = False
            cast(IPushProducer, self.transport).resumeProducing()
        return head

    def unread(self, data: bytes) -> None:
        """Put back bytes a reader gave up on (see :meth:`ReactorThread.submit`)."""
        if data:
            self._buffer.appendleft(data)
            self._buffered += len(data)
            _settle_waiters(self._readers, None)

    def write(self, data: bytes) -> Deferred[None]:
        """Hand ``data`` to the channel; fires once the channel can take more."""
        return Deferred.fromCoroutine(self._write(data))

    async def _write(self, data: bytes) -> None:
        # Closed by us counts from close() itself, as for a socket: the server's CLOSE
        # may still be on its way when the caller writes again.
        if self._closed or self._close_asked:
            raise ChannelError(f"Channel {self._id()} is closed.")
        assert self.transport is not None
        self.transport.write(data)
        while self._send_paused and not self._closed:
            waiter: Deferred[None] = Deferred(lambda d: self._writers.remove(d))
            self._writers.append(waiter)
            await waiter

    def send_eof(self) -> None:
        """Half-close: EOF once everything written has gone out."""
        if not self._closed:
            cast(Any, self.transport).loseWriteConnection()

    def close(self) -> None:
        """Close after pending data is sent."""
        self._close_asked = True
        if not self._closed and self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Close at once."""
        self._close_asked = True
        if not self._closed and self.transport is not None:
            cast(Any, self.transport).abortConnection()

    @property
    def closed(self) -> bool:
        """Whether the channel has finished."""
        return self._closed


class ChannelStreamFactory(Factory):
    """
    The event-mode factory behind a listener: one :class:`ChannelStream` per channel, held
    until :meth:`accept` takes it. At most ``backlog`` wait; more are refused (OPEN_FAILURE),
    so an application that stops accepting cannot make the queue grow without bound.
    """

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self._ready: deque[ChannelStream] = deque()
        self._building = 0
        self._accepters: deque[Deferred[None]] = deque()
        self._closed = False
        self.refused = 0

    @override
    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self._closed or len(self._ready) >= self.backlog:
            self.refused += 1
            return None
        stream = _QueuedStream(self)
        return stream

    def _made(self, stream: ChannelStream) -> None:
        self._ready.append(stream)
        _settle_waiters(self._accepters, None)

    def accept(self) -> Deferred[ChannelStream]:
        """The next channel; fails with :class:`ListenerClosed` after :meth:`close`."""
        return Deferred.fromCoroutine(self._accept())

    async def _accept(self) -> ChannelStream:
        while True:
            while self._ready:
                stream = self._ready.popleft()
                if not stream.closed or stream._buffer:
                    return stream
            if self._closed:
                raise ListenerClosed("The listener is closed.")
            waiter: Deferred[None] = Deferred(lambda d: self._accepters.remove(d))
            self._accepters.append(waiter)
            await waiter

    def unaccept(self, stream: ChannelStream) -> None:
        """Put back a channel an accept gave up on (see :meth:`ReactorThread.submit`)."""
        if self._closed:
            stream.abort()
            return
        self._ready.appendleft(stream)
        _settle_waiters(self._accepters, None)

    def close(self) -> None:
        """Refuse new channels, abort those never accepted, fail waiting accepts."""
        self._closed = True
        while self._ready:
            self._ready.popleft().abort()
        _settle_waiters(self._accepters, None)


class _QueuedStream(ChannelStream):
    def __init__(self, factory: ChannelStreamFactory) -> None:
        super().__init__()
        self._queue = factory

    @override
    def connectionMade(self) -> None:
        super().connectionMade()
        self._queue._made(self)
