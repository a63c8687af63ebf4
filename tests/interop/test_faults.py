"""
Faults from RELIABILITY.md against a real OpenSSH sshd, most through the project's
fault-injecting proxy (``rtunnel.testing.FaultProxy``) between rtunnel and sshd: A1, A2,
A6, A8, A13, A14, A17 (on reconnect) and A18. test_reconnect.py has A4, A5, A7, A9 and A17
at first logon.

Keepalive K = 1 s and N = 2: a dead server must be noticed within K·(N+1)+1 = 4 s; the
bounds below add SLACK for a loaded 2-core CI machine.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_support import Recorder
from sockets import TargetServer, echo, eventually, exchange, in_thread, sleep
from twisted.internet import reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from rtunnel import (
    AuthenticationError,
    ConnectError,
    DecryptError,
    ForwardState,
    HostKeyError,
    KeepaliveError,
    PrivateKeyFile,
    ReconnectLimitError,
    ReverseTunnel,
    TimedOutError,
    TunnelOptions,
)
from rtunnel._core.policy import ReconnectPolicy
from rtunnel.testing import FaultProxy
from rtunnel.testing._openssh import OpenSSHServer

K, N = 1.0, 2
DETECT = K * (N + 1) + 1
SLACK = 1.5
KiB = 1024


@pytest_twisted.async_yield_fixture
async def proxy(openssh_server: OpenSSHServer) -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of the sshd, passing to begin with."""
    p = FaultProxy(reactor, openssh_server.host, openssh_server.port)
    await p.start()
    yield p
    await p.stop()


def tunnel(
    sshd: OpenSSHServer, key: Path, tmp_path: Path, port: int | None = None, **kw: Any
) -> ReverseTunnel:
    """A tunnel to ``sshd``, or to the same sshd through a proxy listening on ``port``."""
    port = sshd.port if port is None else port
    known_hosts = tmp_path / f"known_hosts_{port}"
    if not known_hosts.exists():
        known_hosts.write_text(
            "".join(f"[127.0.0.1]:{port} {k}\n" for k in sshd.host_public_keys())
        )
    kw.setdefault("keepalive_interval", K)
    kw.setdefault("keepalive_count_max", N)
    return ReverseTunnel(
        reactor,
        "127.0.0.1",
        port,
        options=TunnelOptions.create(
            user=sshd.user, auth=[PrivateKeyFile(key)], known_hosts=known_hosts, **kw
        ),
    )


def fast(**kw: Any) -> ReconnectPolicy:
    kw.setdefault("initial_delay", 0.2)
    kw.setdefault("max_delay", 0.5)
    kw.setdefault("jitter", 0.0)
    return ReconnectPolicy(**kw)


def log_since(sshd: OpenSSHServer, offset: int) -> str:
    return sshd.log_text()[offset:]


# -- A1 --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a1_server_down_at_start_retried_on_the_backoff_schedule(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    await in_thread(openssh_server.stop)
    logged: list[str] = []

    @provider(ILogObserver)
    def collect(event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith("rtunnel") and "attempt" in (
            event.get("log_format") or ""
        ):
            logged.append(formatEvent(event))

    watcher = Recorder()
    seen_at: list[float] = []
    attempt_event = watcher.reconnect_attempt

    def stamp(attempt: Any) -> None:
        seen_at.append(time.monotonic())
        attempt_event(attempt)

    watcher.reconnect_attempt = stamp  # type: ignore[method-assign]
    policy = ReconnectPolicy(mode="always", initial_delay=0.2, factor=2, max_delay=0.8, jitter=0)
    t = tunnel(openssh_server, openssh_client_key, tmp_path, reconnect=policy)
    t.add_observer(watcher)
    globalLogPublisher.addObserver(collect)
    try:
        logon = t.logon()
        await eventually(lambda: len(watcher.attempts) >= 4, timeout=10)
        await in_thread(openssh_server.start)
        await logon
        assert t.connected and watcher.connects == 1
    finally:
        globalLogPublisher.removeObserver(collect)
    try:
        intervals = [a.retry_interval for a in watcher.attempts]
        assert intervals[:4] == [0.2, 0.4, 0.8, 0.8]
        # Each retry waited its interval: no tight loop while the port is refused.
        for before, after, interval in zip(seen_at, seen_at[1:], intervals, strict=False):
            assert after - before >= interval * 0.9
        assert all(isinstance(a.error, ConnectError) for a in watcher.attempts)
        assert "Connection refused" in str(watcher.attempts[0].error)
        assert len(logged) == len(watcher.attempts)  # one log line per attempt
        target = TargetServer(echo)
        try:
            forward = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
            assert await in_thread(exchange, forward.port, b"up at last") == b"up at last"
        finally:
            target.close()
    finally:
        await t.logoff()


# -- A2 --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a2_tcp_accepted_but_no_banner_times_out_with_backoff(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path, proxy: FaultProxy
) -> None:
    proxy.blackhole()  # accepted, but not a byte of sshd's banner comes through
    timeout, wait = 1.0, 0.3
    watcher = Recorder()
    t = tunnel(
        openssh_server,
        openssh_client_key,
        tmp_path,
        proxy.port,
        connect_timeout=timeout,
        reconnect=ReconnectPolicy.fixed(wait, max_retries=1, mode="always"),
    )
    t.add_observer(watcher)
    started = time.monotonic()
    # Should the handshake never time out, reset the connections to end the test.
    guard = reactor.callLater(2 * timeout + wait + 10, proxy.reset)
    try:
        with pytest.raises(ReconnectLimitError) as raised:
            await t.logon()
    finally:
        if guard.active():
            guard.cancel()
    elapsed = time.monotonic() - started
    assert 2 * timeout + wait - 0.1 <= elapsed <= 2 * timeout + wait + SLACK
    (attempt,) = watcher.attempts
    assert isinstance(attempt.error, TimedOutError) and attempt.error.code == 201
    assert "banner" in str(attempt.error) and "banner" in str(raised.value)
    # One TCP connection per attempt, and each one given up on.
    assert proxy.accepted_connections == 2
    assert not t.connected


# -- A6 --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a6_silent_partition_detected_then_reconnected_once_it_heals(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path, proxy: FaultProxy
) -> None:
    target = TargetServer(echo)
    watcher = Recorder()
    t = tunnel(
        openssh_server,
        openssh_client_key,
        tmp_path,
        proxy.port,
        connect_timeout=1.5,
        reconnect=fast(),
    )
    t.add_observer(watcher)
    await t.logon()
    try:
        forward = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        assert await in_thread(exchange, forward.port, b"before") == b"before"
        proxy.blackhole()
        cut = time.monotonic()
        await eventually(lambda: bool(watcher.losses), timeout=DETECT + 10)
        assert time.monotonic() - cut <= DETECT + SLACK
        assert isinstance(watcher.losses[0], KeepaliveError) and watcher.losses[0].code == 1039
        # While the partition lasts, reconnecting fails (no banner gets through).
        await eventually(
            lambda: any(isinstance(a.error, TimedOutError) for a in watcher.attempts), 10
        )
        assert watcher.connects == 1
        proxy.pass_through()
        await eventually(
            lambda: watcher.connects == 2 and forward.state is ForwardState.ACTIVE, timeout=10
        )
        assert await in_thread(exchange, forward.port, b"healed") == b"healed"
    finally:
        await t.logoff()
        target.close()


# -- A8 --------------------------------------------------------------------------------


def stream_slowly(conn: socket.socket) -> None:
    """
    A local target that keeps sending, about 500 KiB/s, until its socket breaks: sshd's
    2 MiB channel window (OpenSSH's CHAN_TCP_WINDOW_DEFAULT) then lasts about 4 s without
    window adjustments, longer than the keepalives need.
    """
    chunk = random.randbytes(16 * KiB)
    try:
        while True:
            conn.sendall(chunk)
            time.sleep(0.03)
    except OSError:
        return


class RemoteReader:
    """A client of the forwarded port that reads everything, counting, in a thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.received = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.sock.recv(256 * KiB):
                self.received += len(data)
        except OSError:
            return

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_a8_one_way_blackhole_detected_while_our_data_streams_up(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path, proxy: FaultProxy
) -> None:
    target = TargetServer(stream_slowly)
    watcher = Recorder()
    t = tunnel(
        openssh_server, openssh_client_key, tmp_path, proxy.port, reconnect=ReconnectPolicy.off()
    )
    t.add_observer(watcher)
    await t.logon()
    reader = None
    try:
        forward = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        reader = await in_thread(RemoteReader, forward.port)
        await eventually(lambda: reader.received > 64 * KiB, timeout=10)
        # Nothing from the server reaches us any more; what we send still gets through.
        proxy.blackhole("downstream")
        cut = time.monotonic()
        await sleep(1.5)
        up_midway = proxy.bytes_from_clients
        await eventually(lambda: bool(watcher.losses), timeout=DETECT + 10)
        up_at_the_end = proxy.bytes_from_clients
        assert time.monotonic() - cut <= DETECT + SLACK
        assert isinstance(watcher.losses[0], KeepaliveError)
        # Our own stream was still going up while the keepalives went unanswered, and did
        # not count as a sign of life.
        assert up_at_the_end - up_midway > 128 * KiB
    finally:
        if reader is not None:
            reader.close()
        await t.logoff()
        target.close()


# -- A13 -------------------------------------------------------------------------------


class Recording:
    """A local target that records what arrives and how its connection ended."""

    def __init__(self) -> None:
        self.data: list[bytearray] = []
        self.ended: list[str] = []
        self.server = TargetServer(self._run)
        self.port = self.server.port

    def _run(self, conn: socket.socket) -> None:
        data = bytearray()
        self.data.append(data)
        try:
            while chunk := conn.recv(64 * KiB):
                data += chunk
            self.ended.append("eof")
        except ConnectionResetError:
            self.ended.append("reset")


def send_then_wait(port: int, payload: bytes) -> None:
    """A remote client that sends ``payload`` and waits for the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        try:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
        except OSError:
            return


@pytest_twisted.ensureDeferred
async def test_a13_flipped_bit_is_a_mac_error_and_no_corrupt_byte_is_delivered(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path, proxy: FaultProxy
) -> None:
    target = Recording()
    watcher = Recorder()
    t = tunnel(openssh_server, openssh_client_key, tmp_path, proxy.port, reconnect=fast())
    t.add_observer(watcher)
    await t.logon()
    try:
        forward = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        payload = random.randbytes(2 * 1024 * KiB)
        proxy.flip_bit(after=300 * KiB, bit=6)
        sender = in_thread(send_then_wait, forward.port, payload)
        await eventually(lambda: bool(watcher.losses), timeout=DETECT + 10)
        assert isinstance(watcher.losses[0], DecryptError), watcher.losses
        assert proxy.flips == 1
        await eventually(lambda: watcher.connects == 2, timeout=10)
        await eventually(lambda: forward.state is ForwardState.ACTIVE, timeout=10)
        await sender
        await eventually(lambda: len(target.ended) == 1, timeout=10)
        (got,) = target.data
        # Cut short, by a reset, and every byte that did arrive is the byte sent.
        assert 0 < len(got) < len(payload) and target.ended == ["reset"]
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload[: len(got)]).digest()
        # And the reconnected tunnel carries data again.
        probe = TargetServer(echo)
        try:
            again = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", probe.port)
            assert await in_thread(exchange, again.port, payload) == payload
        finally:
            probe.close()
    finally:
        await t.logoff()
        target.server.close()


# -- A14 -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a14_new_host_key_after_restart_is_fatal_and_not_retried(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    watcher = Recorder()
    t = tunnel(openssh_server, openssh_client_key, tmp_path, reconnect=fast())
    t.add_observer(watcher)
    await t.logon()
    failures: list[Any] = []
    t.when_disconnected().addErrback(failures.append)
    await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9)
    offset = len(openssh_server.log_text())
    await in_thread(lambda: openssh_server.restart(new_host_keys=True))
    await eventually(lambda: bool(failures), timeout=10)
    assert failures[0].check(HostKeyError) and failures[0].value.code == 1030
    assert "CHANGED" in str(failures[0].value)
    # Several backoff intervals later: no attempt after the one that met the new key, and
    # no more connections. (On a loaded machine the restarted sshd may not listen yet at
    # the first attempt: a refused connect is retried, so one or two attempts.)
    attempts = len(watcher.attempts)
    await sleep(1.5)
    assert 1 <= len(watcher.attempts) == attempts <= 2, watcher.attempts
    assert watcher.connects == 1 and not t.connected
    after = log_since(openssh_server, offset)
    assert after.count("Connection from 127.0.0.1") == 1
    # Refused at key exchange: never authenticated, no forward requested.
    assert "Accepted publickey" not in after and "tcpip-forward" not in after


# -- A17 -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a17_authentication_refused_on_reconnect_is_final_even_with_always(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    # test_reconnect.py covers a refusal at the first logon; here the key is withdrawn
    # while the tunnel is up, and the reconnect is refused.
    watcher = Recorder()
    t = tunnel(openssh_server, openssh_client_key, tmp_path, reconnect=fast(mode="always"))
    t.add_observer(watcher)
    await t.logon()
    failures: list[Any] = []
    t.when_disconnected().addErrback(failures.append)
    openssh_server.authorized_keys_path.write_text("")
    offset = len(openssh_server.log_text())
    openssh_server.kill_sessions()
    await eventually(lambda: bool(failures), timeout=10)
    assert failures[0].check(AuthenticationError) and failures[0].value.code == 1032
    await sleep(1.5)
    assert len(watcher.attempts) == 1 and not t.connected
    after = log_since(openssh_server, offset)
    assert after.count("Connection from 127.0.0.1") == 1
    assert f"Failed publickey for {openssh_server.user}" in after


# -- A18 -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a18_dns_failure_backs_off_and_names_the_failure(tmp_path: Path) -> None:
    watcher = Recorder()
    empty = tmp_path / "known_hosts"
    empty.touch()
    policy = ReconnectPolicy(
        mode="always", initial_delay=0.2, factor=2, max_delay=1, jitter=0, max_retries=2
    )
    t = ReverseTunnel(
        reactor,
        "no-such-host.invalid",
        22,
        options=TunnelOptions.create(known_hosts=empty, reconnect=policy),
    )
    t.add_observer(watcher)
    started = time.monotonic()
    with pytest.raises(ReconnectLimitError) as raised:
        await t.logon()
    assert time.monotonic() - started >= 0.2 + 0.4
    assert [a.retry_interval for a in watcher.attempts] == [0.2, 0.4]
    for attempt in watcher.attempts:
        assert isinstance(attempt.error, ConnectError)
        assert "no-such-host.invalid" in str(attempt.error)
        assert "Could not resolve hostname" in str(attempt.error)
    assert "Could not resolve hostname" in str(raised.value)
