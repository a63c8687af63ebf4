"""
Staying up against a real sshd: reconnect with re-forwarding (dropped sessions,
restarts, a frozen session holding the port). Keepalive on a Clock and the same
reconnects against the bundled server, in memory: tests/memory/test_reconnect_in_memory.py.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from e2e_support import Recorder, Server, openssh_only
from sockets import (
    TargetServer,
    echo,
    eventually,
    exchange,
    in_thread,
)
from twisted.internet import reactor

from rtunnel import (
    AuthenticationError,
    ForwardState,
    KeepaliveError,
    PrivateKeyFile,
    ReconnectLimitError,
    ReverseTunnel,
    TunnelOptions,
)
from rtunnel._core.policy import ReconnectPolicy

FAST = ReconnectPolicy(initial_delay=0.2, max_delay=1.0, jitter=0.0)


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@openssh_only  # the bundled server's: tests/memory/test_reconnect_in_memory.py
@pytest_twisted.ensureDeferred
async def test_reconnects_and_requests_every_forward_again(server: Server) -> None:
    # A4/B3: the session dies; rtunnel reconnects; the fixed port comes back on the same
    # port and the port-0 forward gets a (reported) new allocation.
    target = TargetServer(echo)
    watcher = Recorder()
    t = server.tunnel(reconnect=FAST)
    t.add_observer(watcher)
    await t.logon()
    try:
        fixed_port = free_port()
        fixed = await t.request_forwarding("127.0.0.1", fixed_port, "127.0.0.1", target.port)
        dynamic = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        first_dynamic = dynamic.port
        await server.drop()
        await eventually(lambda: watcher.connects == 2, timeout=15)
        await eventually(lambda: all(f.state is ForwardState.ACTIVE for f in t.forwards), 10)
        assert watcher.attempts[0].retry_type == "ssh" and watcher.attempts[0].retry_count == 1
        assert watcher.attempts[0].retries_remaining == -1
        assert fixed.port == fixed_port and dynamic.port != 0
        assert (0, ForwardState.ACTIVE, dynamic.port) in watcher.states[-2:]
        assert await in_thread(exchange, fixed_port, b"fixed again") == b"fixed again"
        assert await in_thread(exchange, dynamic.port, b"dynamic again") == b"dynamic again"
        assert first_dynamic > 0 and t.connected
        assert watcher.losses and watcher.losses[0] is not None
    finally:
        await t.logoff()
        target.close()


@openssh_only  # the bundled server's: tests/memory/test_reconnect_in_memory.py
@pytest_twisted.ensureDeferred
async def test_authentication_refusal_is_never_retried(server: Server, tmp_path: Any) -> None:
    # A17: a refusal is final, even with mode "always".
    from rtunnel.testing import generate_client_key

    stranger = generate_client_key("ecdsa", tmp_path / "stranger")
    watcher = Recorder()
    t = server.tunnel(
        auth=[PrivateKeyFile(stranger)], reconnect=ReconnectPolicy(mode="always", initial_delay=0.1)
    )
    t.add_observer(watcher)
    with pytest.raises(AuthenticationError):
        await t.logon()
    assert watcher.attempts == []


@openssh_only  # the bundled server's: tests/memory/test_reconnect_in_memory.py
@pytest_twisted.ensureDeferred
async def test_retry_limit_gives_up_with_1037(server: Server) -> None:
    t = server.tunnel(
        reconnect=ReconnectPolicy(initial_delay=0.1, max_delay=0.1, jitter=0, max_retries=2)
    )
    watcher = Recorder()
    t.add_observer(watcher)
    await t.logon()
    ended = t.when_disconnected()
    failures: list[Any] = []
    ended.addErrback(failures.append)
    if server.kind == "openssh":
        await in_thread(server.extra["server"].stop)
    else:
        await server.extra["server"].stop()
    await eventually(lambda: bool(failures), timeout=10)
    assert failures[0].check(ReconnectLimitError) and failures[0].value.code == 1037
    assert [a.retry_count for a in watcher.attempts] == [1, 2]
    assert not t.connected


@openssh_only  # the bundled server's: tests/memory/test_reconnect_in_memory.py
@pytest_twisted.ensureDeferred
async def test_observer_can_cancel_reconnecting(server: Server) -> None:
    t = server.tunnel(reconnect=FAST)
    watcher = Recorder()
    watcher.cancel_after = 0
    t.add_observer(watcher)
    await t.logon()
    ended = t.when_disconnected()
    failures: list[Any] = []
    ended.addErrback(failures.append)
    await server.drop()
    await eventually(lambda: bool(failures), timeout=10)
    assert failures[0].check(ReconnectLimitError) and len(watcher.attempts) == 1


@pytest_twisted.ensureDeferred
async def test_frozen_server_noticed_by_keepalive_and_stale_port_retried(
    openssh_server: Any, openssh_client_key: Any
) -> None:
    # A7 + A9: SIGSTOP the session: keepalives (1 s x 2) notice within K*(N+1)+1 s; the
    # reconnect succeeds but the frozen session still holds the fixed port, so that
    # forward is retried on its own until the stale session is gone.
    target = TargetServer(echo)
    watcher = Recorder()
    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        options=TunnelOptions.create(
            user=openssh_server.user,
            auth=[PrivateKeyFile(openssh_client_key)],
            known_hosts=openssh_server.known_hosts_path,
            keepalive_interval=1,
            keepalive_count_max=2,
            reconnect=ReconnectPolicy(initial_delay=0.2, max_delay=0.5, jitter=0),
        ),
    )
    t.add_observer(watcher)
    await t.logon()
    frozen: list[int] = []
    try:
        port = free_port()
        await t.request_forwarding("127.0.0.1", port, "127.0.0.1", target.port)
        frozen = openssh_server.sshd_session_pids()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await eventually(lambda: bool(watcher.losses), timeout=10)
        assert time.monotonic() - stopped_at <= 1 * (2 + 1) + 1 + 0.5  # slack for CI
        assert isinstance(watcher.losses[0], KeepaliveError) and watcher.losses[0].code == 1039
        await eventually(lambda: watcher.connects == 2, timeout=10)
        await eventually(lambda: any(a.retry_type == "tunnel" for a in watcher.attempts), 10)
        assert (port, ForwardState.RETRYING, port) in watcher.states
        for pid in frozen:  # the stale session goes away
            os.kill(pid, signal.SIGKILL)
        frozen = []
        await eventually(lambda: t.forwards[0].state is ForwardState.ACTIVE, timeout=15)
        assert await in_thread(exchange, port, b"back") == b"back"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        await t.logoff()
        target.close()


@pytest_twisted.ensureDeferred
async def test_sshd_restart(openssh_server: Any, openssh_client_key: Any) -> None:
    # A5: the server restarts; rtunnel comes back with its forward.
    target = TargetServer(echo)
    watcher = Recorder()
    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        options=TunnelOptions.create(
            user=openssh_server.user,
            auth=[PrivateKeyFile(openssh_client_key)],
            known_hosts=openssh_server.known_hosts_path,
            reconnect=FAST,
        ),
    )
    t.add_observer(watcher)
    await t.logon()
    try:
        fwd = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        await in_thread(openssh_server.restart)
        await eventually(lambda: watcher.connects == 2 and fwd.state is ForwardState.ACTIVE, 15)
        assert await in_thread(exchange, fwd.port, b"restarted") == b"restarted"
    finally:
        await t.logoff()
        target.close()


@openssh_only  # the bundled server's: tests/memory/test_reconnect_in_memory.py
@pytest_twisted.ensureDeferred
async def test_exit_on_forward_failure_after_a_reconnect(server: Server) -> None:
    # A re-forward refused after a reconnect ends the tunnel with ForwardingError, instead
    # of being retried, when exit_on_forward_failure is set (OpenSSH's ExitOnForwardFailure).
    from rtunnel import ForwardingError

    target = TargetServer(echo)
    watcher = Recorder()
    # Reconnect after 2 s, so that the port can be taken in between.
    t = server.tunnel(reconnect=ReconnectPolicy.fixed(2.0), exit_on_forward_failure=True)
    t.add_observer(watcher)
    await t.logon()
    squatter = socket.socket()
    try:
        port = free_port()
        await t.request_forwarding("127.0.0.1", port, "127.0.0.1", target.port)
        ended = t.when_disconnected()
        failures: list[Any] = []
        ended.addErrback(failures.append)
        await server.drop()

        def squat() -> bool:
            try:
                squatter.bind(("127.0.0.1", port))
            except OSError:
                return False  # the server's listener is not closed yet
            return True

        await eventually(squat, timeout=1.5)
        squatter.listen(1)
        await eventually(lambda: bool(failures), timeout=15)
        assert failures[0].check(ForwardingError)
        assert f"listen port {port}" in str(failures[0].value)
        assert not any(a.retry_type == "tunnel" for a in watcher.attempts)
        assert not t.connected
    finally:
        squatter.close()
        target.close()
        await t.logoff()
