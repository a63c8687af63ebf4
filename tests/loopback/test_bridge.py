"""
rtunnel._bridge on its own: the reactor thread's life, and a call given up (a timeout)
at the moment its result arrives, which must lose no bytes and no channel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sync_support import reactor_threads

from rtunnel._bridge import ChannelStream, ChannelStreamFactory, ReactorThread, now, runner
from rtunnel._model import ChannelInfo


class _Transport:
    """What a ChannelStream uses of a ForwardedChannel."""

    def __init__(self) -> None:
        self.info = ChannelInfo(7, "forwarded-tcpip", "127.0.0.1", 1, "127.0.0.1", 2)
        self.paused = False
        self.aborted = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        pass

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted = True


@pytest.fixture
def reactor_thread() -> Iterator[ReactorThread]:
    runner.acquire()
    try:
        yield runner
    finally:
        runner.release()
    assert reactor_threads() == 0


def _in_reactor(thread: ReactorThread, function: Any) -> Any:
    return thread.submit(now(function)).result(5)


def _result_arrives_as_the_call_is_given_up(
    thread: ReactorThread, future: Any, arrive: Any
) -> None:
    """
    Hold the reactor, queue the result's arrival, give the call up (which queues the
    Deferred's cancel behind it), release the reactor: the result comes first.
    """
    gate = threading.Event()
    reactor: Any = thread.reactor
    reactor.callFromThread(gate.wait, 5)
    reactor.callFromThread(arrive)
    assert future.cancel()
    gate.set()


def test_bytes_of_a_recv_given_up_are_read_by_the_next(reactor_thread: ReactorThread) -> None:
    stream = ChannelStream()
    _in_reactor(reactor_thread, lambda: stream.makeConnection(_Transport()))  # type: ignore[arg-type]
    future = reactor_thread.submit(lambda: stream.read(100), stream.unread)
    while not _in_reactor(reactor_thread, lambda: len(stream._readers)):
        pass
    _result_arrives_as_the_call_is_given_up(
        reactor_thread, future, lambda: stream.dataReceived(b"late")
    )
    again = reactor_thread.submit(lambda: stream.read(100), stream.unread)
    assert again.result(5) == b"late"
    assert _in_reactor(reactor_thread, lambda: stream._buffered) == 0


def test_a_channel_of_an_accept_given_up_goes_to_the_next(reactor_thread: ReactorThread) -> None:
    factory = ChannelStreamFactory(backlog=4)
    future = reactor_thread.submit(factory.accept, factory.unaccept)
    while not _in_reactor(reactor_thread, lambda: len(factory._accepters)):
        pass

    def arrive() -> None:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(_Transport())  # type: ignore[arg-type]

    _result_arrives_as_the_call_is_given_up(reactor_thread, future, arrive)
    again = reactor_thread.submit(factory.accept, factory.unaccept)
    stream = again.result(5)
    assert stream.info is not None and stream.info.channel_id == 7


def test_the_thread_starts_with_the_first_user_and_stops_after_the_last() -> None:
    thread = ReactorThread()
    assert not thread.running
    thread.acquire()
    thread.acquire()
    assert thread.running
    assert _in_reactor(thread, lambda: thread.in_reactor_thread()) is True
    assert not thread.in_reactor_thread()
    thread.release()
    assert thread.running
    thread.release()
    assert not thread.running
    # A reactor cannot be restarted: the next user gets a new one.
    thread.acquire()
    assert _in_reactor(thread, lambda: 42) == 42
    thread.release()
    assert not thread.running


def test_a_write_after_close_fails_before_the_server_confirms_the_close() -> None:
    # Found in the whole suite under load: sendall() right after close() went out while
    # the server's CLOSE was still on its way (test_recv_and_accept_timeouts).
    from twisted.internet.testing import StringTransport

    from rtunnel.errors import ChannelError

    stream = ChannelStream()
    transport = StringTransport()
    transport.info = None  # type: ignore[attr-defined]  # a channel's ChannelInfo
    stream.makeConnection(transport)
    stream.write(b"before")
    assert transport.value() == b"before"
    stream.close()
    assert transport.disconnecting and not stream.closed
    failures: list[Any] = []
    stream.write(b"after").addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ChannelError)
    assert transport.value() == b"before"
