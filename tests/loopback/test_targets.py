"""
Targets as objects (rtunnel/client/channels/targets.py): each kind behind ``open(channel)``.
TCP and Unix targets connect real sockets on 127.0.0.1 / in tmp_path; the SOCKS and
application targets connect nothing and run on a memory reactor.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from rtunnel import Forward
from rtunnel._model import ChannelInfo
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    ChannelRefused,
    ForwardingConnection,
)
from rtunnel.client.channels.dynamic import SocksChannel
from rtunnel.client.channels.forwarder import Splice
from rtunnel.client.channels.targets import (
    AppTarget,
    SocksTarget,
    Target,
    TCPTarget,
    UnixTarget,
    target_for,
)
from rtunnel.errors import ChannelError


def _channel(channel_id: int = 3) -> ForwardedChannel:
    conn = ForwardingConnection(
        None,  # type: ignore[arg-type]
        window_size=65536,
        max_packet=32768,
        max_channels=4,
        on_started=lambda c: None,
        on_stopped=lambda c: None,
    )
    info = ChannelInfo(channel_id, "forwarded-tcpip", "127.0.0.1", 8080, "203.0.113.9", 5555)
    return ForwardedChannel(conn, channel_id, 7, 65536, 32768, 65536, 32768, info)


def _now(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert len(box) == 1, "the target did not answer at once"
    return box[0]


class _Accepted(Protocol):
    def __init__(self, seen: list[Protocol]) -> None:
        self.seen = seen

    def connectionMade(self) -> None:  # noqa: N802
        self.seen.append(self)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_tcp_target_connects_and_fires_with_a_splice() -> None:
    seen: list[Protocol] = []
    listener = reactor.listenTCP(  # type: ignore[attr-defined]
        0, ServerFactory.forProtocol(lambda: _Accepted(seen)), interface="127.0.0.1"
    )
    errors: list[ChannelError] = []
    try:
        port = listener.getHost().port
        target: Target = TCPTarget(reactor, "127.0.0.1", port, timeout=5, on_error=errors.append)
        protocol = await target.open(_channel())
        assert isinstance(protocol, Splice)
        peer = protocol.target.transport.getPeer()  # type: ignore[union-attr]
        assert (peer.host, peer.port) == ("127.0.0.1", port)
        for _ in range(50):
            if seen:
                break
            await _later(0.01)
        assert len(seen) == 1 and errors == []
        protocol.target.transport.loseConnection()  # type: ignore[union-attr]
    finally:
        await listener.stopListening()


@pytest_twisted.ensureDeferred
async def test_tcp_target_refused_says_why_once() -> None:
    port = _free_port()
    errors: list[ChannelError] = []
    target = TCPTarget(reactor, "127.0.0.1", port, timeout=5, on_error=errors.append)
    with pytest.raises(ChannelRefused) as refused:
        await target.open(_channel(3))
    text = f"connect to 127.0.0.1 port {port} failed: Connection refused"
    assert (refused.value.code, refused.value.description) == (OPEN_CONNECT_FAILED, text)
    assert [str(e) for e in errors] == [f"Channel 3: {text}."]


@pytest_twisted.ensureDeferred
async def test_unix_target_connects_and_refuses_a_missing_socket(tmp_path: Path) -> None:
    seen: list[Protocol] = []
    path = str(tmp_path / "t.sock")
    listener = reactor.listenUNIX(  # type: ignore[attr-defined]
        path, ServerFactory.forProtocol(lambda: _Accepted(seen))
    )
    errors: list[ChannelError] = []
    try:
        target: Target = UnixTarget(reactor, path, timeout=5, on_error=errors.append)  # type: ignore[arg-type]
        protocol = await target.open(_channel())
        assert isinstance(protocol, Splice) and protocol.target.transport is not None
        protocol.target.transport.loseConnection()
        missing = str(tmp_path / "nobody.sock")
        gone = UnixTarget(reactor, missing, timeout=5, on_error=errors.append)  # type: ignore[arg-type]
        with pytest.raises(ChannelRefused) as refused:
            await gone.open(_channel(4))
        assert refused.value.code == OPEN_CONNECT_FAILED
        assert refused.value.description.startswith(f"connect to {missing} failed: ")
        assert "No such file or directory" in refused.value.description
        assert [str(e) for e in errors] == [f"Channel 4: {refused.value.description}."]
    finally:
        await listener.stopListening()


def test_socks_target_answers_at_once_and_connects_nothing() -> None:
    memory = MemoryReactorClock()
    logs: list[tuple[int, str]] = []
    target: Target = SocksTarget(
        memory, timeout=7, bind_address=None, permitted=None, log=lambda *a: logs.append(a)
    )
    first, second = _now(target.open(_channel())), _now(target.open(_channel()))
    assert isinstance(first, SocksChannel) and isinstance(second, SocksChannel)
    assert first is not second
    assert memory.tcpClients == [] and logs == []


def test_app_target_builds_the_factorys_protocol_for_the_peer() -> None:
    peers: list[object] = []

    class Counting(Factory):
        def buildProtocol(self, addr: object) -> Protocol:  # noqa: N802
            peers.append(addr)
            return Protocol()

    target: Target = AppTarget(Counting())
    protocol = _now(target.open(_channel()))
    assert isinstance(protocol, Protocol)
    assert [(p.host, p.port) for p in peers] == [("203.0.113.9", 5555)]  # type: ignore[attr-defined]


def test_app_target_whose_factory_builds_none_refuses() -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: object) -> None:  # noqa: N802
            return None

    failure = _now(AppTarget(Refusing()).open(_channel()))
    assert isinstance(failure, Failure) and failure.check(ChannelRefused)
    refused = failure.value
    assert (refused.code, refused.description) == (  # type: ignore[attr-defined]
        OPEN_ADMINISTRATIVELY_PROHIBITED,
        "refused by the factory",
    )


def test_target_for_picks_the_kind_the_forward_names() -> None:
    memory = MemoryReactorClock()

    def pick(forward: Forward) -> Target:
        return target_for(
            forward,
            memory,
            timeout=5,
            bind_address=("127.0.0.2", 0),
            permitted=None,
            on_error=lambda e: None,
            log=lambda level, text: None,
        )

    factory = Factory.forProtocol(Protocol)
    app = pick(Forward("", 80, factory=factory))
    assert isinstance(app, AppTarget) and app.factory is factory
    assert isinstance(pick(Forward("", 80, dynamic=True)), SocksTarget)
    unix = pick(Forward("", 80, target_path="/run/x.sock"))
    assert isinstance(unix, UnixTarget) and unix.path == "/run/x.sock"
    tcp = pick(Forward("", 80, "localhost", 8080))
    assert isinstance(tcp, TCPTarget) and (tcp.host, tcp.port) == ("localhost", 8080)
    with pytest.raises(ValueError, match="names no target"):
        pick(Forward("", 80))


def _later(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]
