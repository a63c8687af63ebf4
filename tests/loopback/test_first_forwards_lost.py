"""
A connection lost right after the logon, before or while the first forwards are
requested (issue #12 leftovers): with reconnect on, the tunnel keeps those forwards,
requests them on the next connection, and ``request_forwarding()`` fires then; with
reconnect off it fails with the loss, as ``ssh`` exits. In memory on a clock first, then
the ``rtunnel`` command against a real sshd whose session dies right after the logon.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from command_support import PYTHON_CLI, RTunnelProcess, _clean_env, exchange
from memory_stack import ReconnectingStack, Upper, result_of
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ClientFactory, Factory, Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from rtunnel import (
    ConnectionLostError,
    Forward,
    ForwardingError,
    ForwardState,
    NotConnectedError,
    ReconnectPolicy,
)
from rtunnel.service import Options, TunnelService
from rtunnel.testing import generate_client_key
from rtunnel.testing._openssh import OpenSSHServer

POLICY = ReconnectPolicy(initial_delay=1.0, max_delay=60.0, jitter=0.0)


def _stack(tmp_path: Path, **kw: Any) -> ReconnectingStack:
    kw.setdefault("reconnect", POLICY)
    stack = ReconnectingStack(tmp_path, keepalive_interval=0, **kw)
    d = stack.tunnel.logon()
    assert stack.join()
    result_of(d)
    return stack


def _request(stack: ReconnectingStack) -> Deferred[Forward]:
    d = stack.tunnel.request_forwarding("127.0.0.1", 8080, factory=Factory.forProtocol(Upper))
    assert stack.pump is not None
    stack.pump.flush()
    return d


def _outcome(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def _lost_while_requested(stack: ReconnectingStack) -> Deferred[Forward]:
    """Request a forward; the server has it, and the session dies before it answers."""
    stack.server.delay_replies(global_requests=5)
    d = _request(stack)
    assert not d.called
    stack.kill()
    stack.server.delay_replies(global_requests=0)
    return d


def test_lost_while_the_forward_is_requested_it_is_requested_again(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    d = _lost_while_requested(stack)
    box = _outcome(d)
    assert box == [], box  # not a failure: the tunnel reconnects
    assert [f.state for f in stack.tunnel.forwards] == [ForwardState.PENDING]

    stack.next_attempt()
    assert len(box) == 1 and isinstance(box[0], Forward), box
    assert box[0].state is ForwardState.ACTIVE and box[0].port == 8080
    assert stack.tunnel.forwards == [box[0]]
    assert [(f.bind_address, f.port) for f in stack.server.forwards] == [("127.0.0.1", 8080)]
    assert stack.round_trip(b"hello") == b"HELLO"
    assert [a.retry_count for a in stack.watcher.attempts] == [1]
    stack.logoff()


def test_lost_after_the_logon_before_the_request(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack.kill()
    assert not stack.tunnel.connected
    box = _outcome(_request(stack))
    assert box == [], box  # registered: requested once the tunnel is back
    assert [f.state for f in stack.tunnel.forwards] == [ForwardState.PENDING]

    stack.next_attempt()
    assert len(box) == 1 and isinstance(box[0], Forward), box
    assert box[0].port == 8080 and stack.round_trip(b"back") == b"BACK"
    assert len(stack.server.forwards) == 1
    stack.logoff()


def test_with_reconnect_off_the_request_fails_with_the_loss(tmp_path: Path) -> None:
    stack = _stack(tmp_path, reconnect=ReconnectPolicy.off())
    ended = _outcome(stack.tunnel.when_disconnected())
    box = _outcome(_lost_while_requested(stack))
    assert len(box) == 1 and isinstance(box[0], Failure), box
    assert box[0].check(ConnectionLostError)
    assert "closed by remote host" in str(box[0].value)
    assert stack.tunnel.forwards == []
    assert len(ended) == 1 and isinstance(ended[0], Failure)
    # Not connected and not reconnecting: a request is a mistake, as before.
    with pytest.raises(NotConnectedError):
        result_of(_request(stack))
    assert stack.reactor.getDelayedCalls() == []


def test_logoff_while_waiting_fails_the_request(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack.kill()
    box = _outcome(_request(stack))
    stack.logoff()
    assert len(box) == 1 and isinstance(box[0], Failure), box
    assert box[0].check(ConnectionLostError)
    assert "Logged off before the server agreed" in str(box[0].value)
    assert stack.tunnel.forwards == []


def test_a_cancelled_request_is_not_requested_again(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    d = _lost_while_requested(stack)
    box = _outcome(d)
    d.cancel()
    assert len(box) == 1 and box[0].check(CancelledError), box
    assert stack.tunnel.forwards == []
    stack.next_attempt()
    assert stack.tunnel.connected and stack.server.forwards == []
    stack.logoff()


def test_refused_on_the_new_connection_it_is_retried_as_a_stale_port(tmp_path: Path) -> None:
    # The first session may have got the port before it died; until the server notices,
    # it refuses the port to the next one (RELIABILITY A9): retried on its own schedule.
    stack = _stack(tmp_path)
    box = _outcome(_lost_while_requested(stack))
    stack.server.refuse_forwards(8080)
    stack.next_attempt()
    assert box == [] and [f.state for f in stack.tunnel.forwards] == [ForwardState.RETRYING]
    retry = stack.watcher.attempts[-1]
    assert (retry.retry_type, retry.retry_count, retry.remote_port) == ("tunnel", 1, 8080)

    stack.server.allow_forwards(8080)
    stack.reactor.advance(retry.retry_interval)
    assert stack.pump is not None
    stack.pump.flush()
    assert len(box) == 1 and isinstance(box[0], Forward), box
    assert box[0].state is ForwardState.ACTIVE and stack.round_trip(b"late") == b"LATE"
    stack.logoff()


def test_refused_on_the_new_connection_with_exit_on_forward_failure(tmp_path: Path) -> None:
    stack = _stack(tmp_path, exit_on_forward_failure=True)
    box = _outcome(_lost_while_requested(stack))
    ended = _outcome(stack.tunnel.when_disconnected())
    stack.server.refuse_forwards(8080)
    stack.next_attempt()
    assert stack.pump is not None
    stack.pump.flush()
    assert len(box) == 1 and isinstance(box[0], Failure), box
    assert box[0].check(ForwardingError)
    assert str(box[0].value) == "remote port forwarding failed for listen port 8080"
    assert len(ended) == 1 and isinstance(ended[0], Failure) and ended[0].check(ForwardingError)
    assert not stack.tunnel.connected and stack.tunnel.forwards == []
    assert stack.reactor.getDelayedCalls() == []


def test_the_twistd_service_requests_its_forwards_again(tmp_path: Path) -> None:
    # The service on the memory reactor: its first session dies while the forward is
    # requested; it reconnects and gets the forward instead of stopping the reactor.
    stack = ReconnectingStack(tmp_path)  # the server and reactor; its own tunnel unused
    config = Options()
    config.parseOptions(
        [
            *["-i", str(generate_client_key("ed25519", tmp_path))],
            *["-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "BatchMode=yes"],
            *["-p", "2222", "-R", "8080:127.0.0.1:9", "alice@127.0.0.1"],
        ]
    )
    failures: list[Exception] = []
    service = TunnelService(
        stack.reactor, config.host, config.client_options, on_failure=failures.append
    )
    stack.server.delay_replies(global_requests=5)
    service.startService()
    assert stack.join()
    tunnel = service.tunnel
    assert tunnel is not None and tunnel.connected
    assert [f.state for f in tunnel.forwards] == [ForwardState.PENDING]
    stack.kill()
    stack.server.delay_replies(global_requests=0)
    assert failures == []
    stack.reactor.advance(1.5)  # RetryInterval 1 s, +-20 %
    assert stack.join()
    assert tunnel.connected and failures == []
    assert [(f.state, f.port) for f in tunnel.forwards] == [(ForwardState.ACTIVE, 8080)]
    assert len(stack.server.forwards) == 1
    stopped = service.stopService()
    assert stack.pump is not None
    stack.pump.flush()
    result_of(stopped)
    assert failures == [] and stack.reactor.getDelayedCalls() == []


# --------------------------------------------------------------------------------------
# The command against a real sshd whose session dies right after the logon.

#: How late the relay below delivers what the server sends.
LATENCY = 0.5


class _Upstream(Protocol):
    """The relay's connection to sshd: what sshd sends reaches the client LATENCY late."""

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:  # noqa: N802 (Protocol)
        self.downstream.upstream_made(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Protocol)
        self.downstream.relay.last_reply_at = reactor.seconds()  # type: ignore[attr-defined]
        self.downstream.later(lambda: self.downstream.write(data))

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 (Protocol)
        self.downstream.later(self.downstream.close)


class _Downstream(Protocol):
    """The client's connection to the relay: what it sends goes on to sshd at once."""

    def __init__(self, relay: SlowReplies) -> None:
        self.relay = relay
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.last = 0.0

    def connectionMade(self) -> None:  # noqa: N802 (Protocol)
        factory = ClientFactory.forProtocol(lambda: _Upstream(self))
        reactor.connectTCP(self.relay.host, self.relay.port, factory)  # type: ignore[attr-defined]

    def upstream_made(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        for data in self.pending:
            self.send_up(data)
        self.pending.clear()

    def send_up(self, data: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Protocol)
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.send_up(data)

    def later(self, action: Any) -> None:
        # In order: each event LATENCY after it happened, never before the one before.
        now = reactor.seconds()  # type: ignore[attr-defined]
        self.last = max(now + LATENCY, self.last)
        self.relay.calls.append(reactor.callLater(self.last - now, action))  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 (Protocol)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()


class SlowReplies:
    """A TCP relay to an SSH server whose answers arrive LATENCY seconds late."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.calls: list[Any] = []
        #: When the server last sent something (to be delivered LATENCY later).
        self.last_reply_at = 0.0
        factory = ServerFactory.forProtocol(lambda: _Downstream(self))
        self.listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, factory, interface="127.0.0.1"
        )
        self.relay_port: int = self.listening.getHost().port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for call in self.calls:
            if call.active():
                call.cancel()
        await self.listening.stopListening()


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Protocol)
        assert self.transport is not None
        self.transport.write(data)


@pytest_twisted.async_yield_fixture
async def echo_port() -> AsyncIterator[int]:
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), interface="127.0.0.1"
    )
    yield listening.getHost().port  # type: ignore[attr-defined]
    await listening.stopListening()


@pytest_twisted.async_yield_fixture
async def relay(openssh_server: OpenSSHServer) -> AsyncIterator[SlowReplies]:
    slow = SlowReplies(openssh_server.host, openssh_server.port)
    yield slow
    await slow.stop()


async def _kill_sessions_after_logon(
    sshd: OpenSSHServer, offset: int, slow: SlowReplies
) -> list[int]:
    """
    Kill the sshd session right after the logon: once its log says the key was accepted
    (the monitor logs that before the session sends USERAUTH_SUCCESS: auth2.c,
    userauth_finish) and the relay has the success in hand. The relay holds it for
    LATENCY, so the client has not sent its forward requests yet: they go to a session
    that is gone, and the loss reaches the client just after the success.
    """
    polled = reactor.seconds()  # type: ignore[attr-defined]
    for _ in range(int(10 / 0.01)):
        if "Accepted publickey" in sshd.log_text()[offset:]:
            logged_after = polled
            for _ in range(int(LATENCY / 2 / 0.005)):
                if slow.last_reply_at > logged_after:
                    break
                await deferLater(reactor, 0.005, lambda: None)
            # The pre-auth child may exit between listing and signalling: kill_sessions
            # tolerates that.
            return sshd.kill_sessions()
        polled = reactor.seconds()  # type: ignore[attr-defined]
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"no logon in the sshd log:\n{sshd.log_tail()}")


def _spawn(
    sshd: OpenSSHServer, key: Path, slow: SlowReplies, tmp_path: Path, *args: str
) -> RTunnelProcess:
    known_hosts = tmp_path / "known_hosts_relay"
    known_hosts.write_text(
        "".join(f"[127.0.0.1]:{slow.relay_port} {k}\n" for k in sshd.host_public_keys())
    )
    argv = [
        *PYTHON_CLI,
        "-N",
        *["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}"],
        *["-i", str(key), "-p", str(slow.relay_port)],
        *["-o", "RetryInterval=1"],
        *args,
        f"{sshd.user}@127.0.0.1",
    ]
    child = RTunnelProcess()
    reactor.spawnProcess(  # type: ignore[attr-defined]
        child, argv[0], argv, env=_clean_env(tmp_path), path=str(tmp_path)
    )
    return child


ALLOCATED = r"^Allocated port (\d+) for remote forward to 127\.0\.0\.1:{}$"


@pytest_twisted.ensureDeferred
async def test_the_command_requests_its_forwards_again_after_a_loss_right_after_logon(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    relay: SlowReplies,
    echo_port: int,
    tmp_path: Path,
) -> None:
    offset = len(openssh_server.log_text())
    child = _spawn(
        openssh_server,
        openssh_client_key,
        relay,
        tmp_path,
        *["-R", f"0:127.0.0.1:{echo_port}", "-R", f"127.0.0.1:0:127.0.0.1:{echo_port}"],
    )
    try:
        assert await _kill_sessions_after_logon(openssh_server, offset, relay)
        await child.wait_for(r"^Reconnected to 127\.0\.0\.1\.$", timeout=30)
        # Both forwards, requested on the new connection, each reported once, after it.
        ports: list[int] = []
        for _ in range(200):
            ports = [
                int(m.group(1))
                for line in child.lines
                if (m := re.match(ALLOCATED.format(echo_port), line))
            ]
            if len(ports) == 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert len(ports) == 2 and ports[0] != ports[1], child.stderr
        reconnected = child.lines.index("Reconnected to 127.0.0.1.")
        assert all(
            child.lines.index(line) > reconnected
            for line in child.lines
            if re.match(ALLOCATED.format(echo_port), line)
        ), child.stderr
        for port in ports:
            assert await exchange(port, b"through the second session") == (
                b"through the second session"
            )
        assert child.running
        assert not any(line.startswith(("rtunnel:", "Warning:")) for line in child.lines), (
            child.stderr
        )
    finally:
        if child.running:
            child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        status = await child.ended
    assert status == (0, None), child.stderr


@pytest_twisted.ensureDeferred
async def test_with_autoreconnect_no_the_command_exits_as_ssh_does(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    relay: SlowReplies,
    echo_port: int,
    tmp_path: Path,
) -> None:
    offset = len(openssh_server.log_text())
    child = _spawn(
        openssh_server,
        openssh_client_key,
        relay,
        tmp_path,
        *["-o", "AutoReconnect=no", "-R", f"0:127.0.0.1:{echo_port}"],
    )
    try:
        assert await _kill_sessions_after_logon(openssh_server, offset, relay)
        status = await child.ended.addTimeout(30, reactor)
    finally:
        if child.running:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await child.ended
    assert status == (255, None), child.stderr
    assert child.lines == ["Connection to 127.0.0.1 closed by remote host."], child.stderr
