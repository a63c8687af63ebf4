"""
End to end over real sockets on 127.0.0.1: ReverseTunnel against the bundled server and
against a real OpenSSH sshd, with the remote clients and local targets as plain threaded
sockets (so nothing on the test side shares rtunnel's reactor or its flow control).
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_support import Server
from sockets import TargetServer, echo, eventually, exchange, in_thread, sleep
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from rtunnel import (
    AlreadyConnectedError,
    AuthenticationError,
    ChannelInfo,
    ChannelOpenRequest,
    ConnectError,
    ConnectionLostError,
    ForwardingError,
    HostKeyError,
    Password,
    PrivateKeyFile,
    ReverseTunnel,
    TunnelObserver,
    TunnelOptions,
)

MiB = 1024 * 1024


# -- servers under test ---------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def tunnel(server: Server) -> AsyncIterator[ReverseTunnel]:
    t = server.tunnel()
    await t.logon()
    try:
        yield t
    finally:
        await t.logoff()


# -- local targets and remote clients (threads, blocking sockets) --------------------


@pytest.fixture
def echo_target() -> Iterator[TargetServer]:
    t = TargetServer(echo)
    yield t
    t.close()


def refused(port: int) -> bool:
    """Connect through the server and expect to be closed or reset without any data."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"anyone?")
            return c.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError, OSError):
        return True


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


# -- the tests ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_port_zero_forward_round_trip(
    tunnel: ReverseTunnel, echo_target: TargetServer
) -> None:
    fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo_target.port)
    assert 1024 <= fwd.port <= 65535
    assert await in_thread(exchange, fwd.port, b"hello through the tunnel") == (
        b"hello through the tunnel"
    )


@pytest_twisted.ensureDeferred
async def test_fixed_port_forward_and_localhost_bind(
    tunnel: ReverseTunnel, echo_target: TargetServer
) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    fwd = await tunnel.request_forwarding("localhost", port, "127.0.0.1", echo_target.port)
    assert fwd.port == port
    assert await in_thread(exchange, port, b"fixed") == b"fixed"


@pytest_twisted.ensureDeferred
async def test_several_forwards_on_one_connection_and_cancel(tunnel: ReverseTunnel) -> None:
    targets = [TargetServer(lambda c, n=n: c.sendall(b"target %d" % n)) for n in range(3)]
    try:
        forwards = [
            await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", t.port) for t in targets
        ]
        assert len({f.port for f in forwards}) == 3
        for n, f in enumerate(forwards):
            assert await in_thread(exchange, f.port, b"") == b"target %d" % n
        await tunnel.cancel_forwarding("127.0.0.1", forwards[1].port)
        assert not await in_thread(listening, forwards[1].port)
        assert await in_thread(exchange, forwards[2].port, b"") == b"target 2"
        assert [f.port for f in tunnel.forwards] == [forwards[0].port, forwards[2].port]
    finally:
        for t in targets:
            t.close()


@pytest_twisted.ensureDeferred
async def test_refused_target_closes_the_remote_client_at_once(tunnel: ReverseTunnel) -> None:
    # C1: a closed local port becomes OPEN_FAILURE; the server drops its client at once.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", dead_port)
    started = time.monotonic()
    assert await in_thread(refused, fwd.port)
    assert time.monotonic() - started < 5
    assert tunnel.connected and tunnel.channels == []


@pytest_twisted.ensureDeferred
async def test_remote_half_close_then_answer(tunnel: ReverseTunnel) -> None:
    # C3: the remote client half-closes and waits; the target sees EOF, then answers.
    def answer_after_eof(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(
            b"got %d bytes, sha %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
        )

    target = TargetServer(answer_after_eof)
    try:
        fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        payload = random.randbytes(300_001)
        got = await in_thread(exchange, fwd.port, payload)
        assert got == b"got 300001 bytes, sha " + hashlib.sha256(payload).hexdigest().encode()
    finally:
        target.close()


@pytest_twisted.ensureDeferred
async def test_target_half_close_first(tunnel: ReverseTunnel) -> None:
    # C4: the target sends a greeting and half-closes; the remote client's later writes
    # still reach it, and its answer to them... cannot come (it half-closed), so it reports
    # what it read out of band.
    read_back: list[bytes] = []

    def greet_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"greeting")
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        read_back.append(data)

    target = TargetServer(greet_then_listen)
    try:
        fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=10) as c:
                received = b""
                while chunk := c.recv(65536):  # EOF arrives after the greeting
                    received += chunk
                c.sendall(b"still talking after your EOF")
                c.shutdown(socket.SHUT_WR)
                c.recv(1)
                return received

        assert await in_thread(client) == b"greeting"
        await eventually(lambda: bool(read_back))
        assert read_back == [b"still talking after your EOF"]
    finally:
        target.close()


def _odd_chunks(total: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(total - sent, rng.choice([1, 7, 1000, 4095, 32769, 65537, 200_003]))
        yield rng.randbytes(n)
        sent += n


@pytest_twisted.ensureDeferred
async def test_64_mib_each_way_intact(tunnel: ReverseTunnel) -> None:
    # C5 with odd write sizes: upload hashed by the target, download hashed by the client.
    size = 64 * MiB

    def sink_and_stream(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        received = 0
        while received < size:
            chunk = conn.recv(256 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        conn.sendall(digest.hexdigest().encode() + b"\n")
        for chunk in _odd_chunks(size, seed=2):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)

    target = TargetServer(sink_and_stream)
    try:
        fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)

        def client() -> tuple[str, str, str, int]:
            up = hashlib.sha256()
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=60) as c:
                for chunk in _odd_chunks(size, seed=1):
                    up.update(chunk)
                    c.sendall(chunk)
                buf = b""
                while b"\n" not in buf:
                    buf += c.recv(65536)
                line, rest = buf.split(b"\n", 1)
                down = hashlib.sha256(rest)
                n = len(rest)
                while chunk := c.recv(256 * 1024):
                    down.update(chunk)
                    n += len(chunk)
            expected_down = hashlib.sha256(b"".join(_odd_chunks(size, seed=2))).hexdigest()
            return up.hexdigest() + "|" + line.decode(), down.hexdigest(), expected_down, n

        up_pair, down, expected_down, n = await in_thread(client)
        sent, seen = up_pair.split("|")
        assert sent == seen, "upload corrupted"
        assert n == size and down == expected_down, "download corrupted"
        assert target.errors == []
    finally:
        target.close()


@pytest_twisted.ensureDeferred
async def test_100_concurrent_1_mib_echoes(
    tunnel: ReverseTunnel, echo_target: TargetServer
) -> None:
    # C8: all intact, and the channel table is empty afterwards.
    fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo_target.port)
    payloads = [random.randbytes(MiB) for _ in range(100)]
    results = await Deferred.fromCoroutine(
        _gather([in_thread(exchange, fwd.port, p, 60) for p in payloads])
    )
    assert [hashlib.sha256(r).digest() for r in results] == [
        hashlib.sha256(p).digest() for p in payloads
    ]
    await eventually(lambda: tunnel.channels == [])


async def _gather(ds: list[Deferred[Any]]) -> list[Any]:
    return [await d for d in ds]


@pytest_twisted.ensureDeferred
async def test_connection_loss_aborts_local_sockets(server: Server) -> None:
    # C13: every local socket is aborted (RST) within a second; callers are told.
    stalled = threading.Event()
    outcomes: list[str] = []

    def hold(conn: socket.socket) -> None:
        conn.sendall(b"x")
        stalled.set()
        try:
            while conn.recv(65536):
                pass
            outcomes.append("eof")
        except ConnectionResetError:
            outcomes.append("reset")

    target = TargetServer(hold)
    t = server.tunnel()
    await t.logon()
    try:
        fwd = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        clients = [socket.create_connection(("127.0.0.1", fwd.port), timeout=10) for _ in range(3)]
        await eventually(lambda: len(t.channels) == 3)
        disconnected = t.when_disconnected()
        failures: list[Any] = []
        disconnected.addErrback(failures.append)
        dropped_at = time.monotonic()
        await server.drop()
        await eventually(lambda: len(outcomes) == 3, timeout=5)
        assert time.monotonic() - dropped_at < 2
        assert outcomes == ["reset"] * 3
        assert failures and failures[0].check(ConnectionLostError)
        assert not t.connected and t.channels == []
        for c in clients:
            c.close()
    finally:
        target.close()
        await t.logoff()


class EchoProtocol(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        assert self.transport is not None
        self.transport.write(data.upper())


class Recorder(TunnelObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.data = b""

    def channel_opened(self, info: ChannelInfo) -> None:
        self.events.append(("opened", info.channel_id))

    def channel_data(self, info: ChannelInfo, data: bytes) -> None:
        self.data += data

    def channel_eof(self, info: ChannelInfo) -> None:
        self.events.append(("eof", info.channel_id))

    def channel_closed(self, info: ChannelInfo) -> None:
        self.events.append(("closed", info.channel_id))


@pytest_twisted.ensureDeferred
async def test_event_mode_with_accept_hook_and_observers(tunnel: ReverseTunnel) -> None:
    requests: list[ChannelOpenRequest] = []

    async def accept(request: ChannelOpenRequest) -> bool:
        requests.append(request)
        await sleep(0.01)  # answering later is allowed
        return len(requests) == 1

    observer = Recorder()
    tunnel.add_observer(observer)
    fwd = await tunnel.request_forwarding(
        "127.0.0.1", 0, factory=Factory.forProtocol(EchoProtocol), accept=accept
    )
    assert await in_thread(exchange, fwd.port, b"shout") == b"SHOUT"
    assert requests[0].connected_port == fwd.port
    assert requests[0].origin_address == "127.0.0.1" and requests[0].origin_port > 0
    # The second connection is refused by the hook.
    assert await in_thread(refused, fwd.port)
    await eventually(lambda: ("closed", 0) in observer.events)
    assert observer.events[0] == ("opened", 0) and ("eof", 0) in observer.events
    assert observer.data == b"shout"


@pytest_twisted.ensureDeferred
async def test_channel_table_and_send_by_id(tunnel: ReverseTunnel) -> None:
    fwd = await tunnel.request_forwarding("127.0.0.1", 0, factory=Factory.forProtocol(Protocol))

    def client() -> bytes:
        # Reads until the tunnel closes the channel: closing first would race the
        # lookups by id below.
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=10) as c:
            c.sendall(b"12345")
            received = b""
            while chunk := c.recv(100):
                received += chunk
            return received

    result = in_thread(client)
    await eventually(lambda: len(tunnel.channels) == 1 and tunnel.channels[0].bytes_received == 5)
    (info,) = tunnel.channels
    assert info.service == "forwarded-tcpip" and info.connected_port == fwd.port
    assert info.origin_address == "127.0.0.1"
    tunnel.send_channel_data(info.channel_id, b"pushed by id")
    await eventually(lambda: tunnel.channel(info.channel_id).bytes_sent == 12)
    tunnel.close_channel(info.channel_id)
    assert await result == b"pushed by id"
    await eventually(lambda: tunnel.channels == [])


@pytest_twisted.ensureDeferred
async def test_logoff_removes_listeners(server: Server, echo_target: TargetServer) -> None:
    t = server.tunnel()
    await t.logon()
    fwd = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo_target.port)
    done = t.when_disconnected()
    await t.logoff()
    assert await done is None
    assert not t.connected
    await eventually(lambda: not listening(fwd.port), timeout=5)


@pytest_twisted.ensureDeferred
async def test_unknown_host_key_is_refused_then_accept_new_writes_it(
    server: Server, tmp_path: Path
) -> None:
    known = tmp_path / "kh"
    with pytest.raises(HostKeyError, match="Host key verification failed") as e:
        await server.tunnel(known_hosts=known).logon()
    assert e.value.code == 1030 and e.value.fingerprint.startswith("SHA256:")
    t = server.tunnel(known_hosts=known, host_key_policy="accept-new")
    await t.logon()
    await t.logoff()
    assert f"[{server.host}]:{server.port} " in known.read_text()
    t = server.tunnel(known_hosts=known)  # strict again: now it is known
    await t.logon()
    await t.logoff()


@pytest_twisted.ensureDeferred
async def test_changed_host_key_is_refused(server: Server, tmp_path: Path) -> None:
    line = server.known_hosts.read_text().splitlines()[0]
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known = tmp_path / "kh"
    known.write_text(f"{line.split()[0]} ssh-ed25519 {other}\n")
    with pytest.raises(HostKeyError, match="CHANGED") as e:
        await server.tunnel(known_hosts=known).logon()
    assert f"{known}:1" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_wrong_key_is_refused_in_openssh_words(server: Server, tmp_path: Path) -> None:
    from rtunnel.testing import generate_client_key

    stranger = generate_client_key("ecdsa", tmp_path / "stranger")
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(") as e:
        await server.tunnel(auth=[PrivateKeyFile(stranger)]).logon()
    assert e.value.code == 1032 and "publickey" in e.value.methods


@pytest_twisted.ensureDeferred
async def test_key_kinds(server: Server, tmp_path: Path) -> None:
    # RSA signs with rsa-sha2 (OpenSSH 8.8+ refuses SHA-1 ssh-rsa); ECDSA and ed25519 too.
    if server.kind == "openssh":
        keys = [server.extra["rsa_key"], server.key]
    else:
        from twisted.conch.ssh.keys import Key

        from rtunnel.testing import generate_client_key

        keys = [generate_client_key(k, tmp_path / k) for k in ("rsa", "ecdsa")]
        server.extra["server"].add_user(
            server.user, authorized_keys=[Key.fromFile(str(k) + ".pub") for k in keys]
        )
    for key in keys:
        t = server.tunnel(auth=[PrivateKeyFile(key)])
        await t.logon()
        await t.logoff()


@pytest_twisted.ensureDeferred
async def test_password_auth_on_bundled_server(
    ssh_test_server: Any, ssh_user: str, ssh_known_hosts: Path
) -> None:
    for password, ok in [("wrong", False), ("password", True)]:
        t = ReverseTunnel(
            reactor,
            ssh_test_server.host,
            ssh_test_server.port,
            options=TunnelOptions.create(
                user=ssh_user, auth=[Password(password)], known_hosts=ssh_known_hosts
            ),
        )
        if ok:
            await t.logon()
            await t.logoff()
        else:
            with pytest.raises(AuthenticationError, match="Permission denied"):
                await t.logon()


@pytest_twisted.ensureDeferred
async def test_refused_forward_is_a_typed_error_and_others_stay_up(
    tunnel: ReverseTunnel, echo_target: TargetServer
) -> None:
    # B2: the same fixed port twice: the second is refused, the first keeps working.
    first = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo_target.port)
    with pytest.raises(ForwardingError, match=f"listen port {first.port}") as e:
        await tunnel.request_forwarding("127.0.0.1", first.port, "127.0.0.1", echo_target.port)
    assert e.value.code == 1098
    assert await in_thread(exchange, first.port, b"ok") == b"ok"


@pytest.mark.parametrize("direction", ["stalled_target", "stalled_remote_reader"])
@pytest_twisted.ensureDeferred
async def test_memory_stays_bounded_when_one_side_stalls(
    direction: str, openssh_server: Any, openssh_client_key: Path
) -> None:
    # C6: a target that never reads while the remote client pushes; C7: a remote client
    # that never reads while the target streams. Against real sshd, so the RSS measured is
    # rtunnel's alone. The pushing side must be stopped after about one window plus socket
    # buffers, not after hundreds of MiB.
    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        options=TunnelOptions.create(
            user=openssh_server.user,
            auth=[PrivateKeyFile(openssh_client_key)],
            known_hosts=openssh_server.known_hosts_path,
        ),
    )
    await t.logon()
    pushed = [0]
    stop = threading.Event()

    def push(conn: socket.socket) -> None:
        conn.setblocking(False)
        block = b"\0" * 65536
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and not stop.is_set():
            try:
                pushed[0] += conn.send(block)
            except BlockingIOError:
                time.sleep(0.005)

    def never_read(conn: socket.socket) -> None:
        stop.wait(10)

    target = TargetServer(never_read if direction == "stalled_target" else push)
    try:
        fwd = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        before = rss_bytes()

        def remote() -> None:
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=10) as c:
                if direction == "stalled_target":
                    push(c)
                else:
                    time.sleep(4.5)  # connected, never reading

        await in_thread(remote)
        grown = rss_bytes() - before
        stop.set()
        # One 2 MiB window plus kernel socket buffers on three hops is well under 48 MiB;
        # an unbounded relay would have taken everything offered in 4 s (gigabytes).
        assert pushed[0] < 48 * MiB, f"{pushed[0] / MiB:.1f} MiB accepted"
        assert pushed[0] > 256 * 1024, "nothing flowed at all"
        assert grown < 24 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"
    finally:
        stop.set()
        target.close()
        await t.logoff()


@pytest_twisted.ensureDeferred
async def test_target_that_never_answers_syn_times_out(server: Server) -> None:
    # C2: a listener whose accept queue is full drops further SYNs, so a connect to it
    # hangs; the channel is refused after target_connect_timeout and others carry on.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(blackhole.getsockname())
        fillers.append(s)
    echo = TargetServer(globals()["echo"])
    t = server.tunnel(target_connect_timeout=1)
    await t.logon()
    try:
        dead = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", blackhole.getsockname()[1])
        live = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo.port)
        started = time.monotonic()
        waiting = in_thread(refused, dead.port)
        assert await in_thread(exchange, live.port, b"unaffected") == b"unaffected"
        assert await waiting
        assert 0.9 < time.monotonic() - started < 5
        assert t.connected
    finally:
        await t.logoff()
        echo.close()
        blackhole.close()
        for s in fillers:
            s.close()


@pytest_twisted.ensureDeferred
async def test_logon_twice_and_logoff_during_a_hung_handshake() -> None:
    # A TCP listener that never speaks SSH: logon hangs in the handshake.
    mute = TargetServer(lambda conn: time.sleep(30))
    t = ReverseTunnel(
        reactor,
        "127.0.0.1",
        mute.port,
        options=TunnelOptions.create(known_hosts=[], connect_timeout=60),
    )
    try:
        attempt = t.logon()
        with pytest.raises(AlreadyConnectedError) as e:
            await t.logon()
        assert e.value.code == 104
        await sleep(0.2)
        started = time.monotonic()
        await t.logoff()
        assert time.monotonic() - started < 1
        with pytest.raises(ConnectError, match="abandoned"):
            await attempt
        assert not t.connected
    finally:
        mute.close()


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_is_a_connect_error() -> None:
    mute = TargetServer(lambda conn: time.sleep(30))
    t = ReverseTunnel(
        reactor,
        "127.0.0.1",
        mute.port,
        options=TunnelOptions.create(known_hosts=[], connect_timeout=0.5),
    )
    try:
        with pytest.raises(ConnectError, match="timed out during the SSH handshake"):
            await t.logon()
    finally:
        mute.close()


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_a_connect_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(
        ConnectError, match=f"connect to host 127.0.0.1 port {port}: Connection refused"
    ) as e:
        await ReverseTunnel(reactor, "127.0.0.1", port).logon()
    assert e.value.code == 1036
