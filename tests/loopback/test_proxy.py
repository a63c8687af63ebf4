"""
rtunnel.testing.FaultProxy over real sockets on 127.0.0.1: the proxy runs on the test
reactor; clients and targets are plain blocking sockets in threads, so what they see is
what the kernel delivered (a FIN is ``recv() == b""``, a reset is ``ConnectionResetError``,
silence is a timeout).
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
from sockets import TargetServer, echo, eventually, exchange, in_thread, sleep
from twisted.internet import reactor

from rtunnel.testing import FaultProxy

MiB = 1024 * 1024
LINGER_0 = struct.pack("ii", 1, 0)


class Sink:
    """A target that records everything each connection sends, and can send too."""

    def __init__(self) -> None:
        self.accepted: list[tuple[socket.socket, bytearray]] = []
        self.ended: list[str] = []
        self._to_reset: set[socket.socket] = set()
        self.server = TargetServer(self._run)
        self.port = self.server.port

    @property
    def conns(self) -> list[socket.socket]:
        return [conn for conn, _ in self.accepted]

    @property
    def received(self) -> list[bytearray]:
        return [data for _, data in self.accepted]

    def _run(self, conn: socket.socket) -> None:
        data = bytearray()
        self.accepted.append((conn, data))
        try:
            while chunk := conn.recv(65536):
                data += chunk
                if data.endswith(b"RST!") or conn in self._to_reset:
                    # Reset from this thread: a close() from another one would wait for
                    # the recv() blocked here.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
                    self.ended.append("we reset")
                    return
            if conn in self._to_reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
                self.ended.append("we reset")
                return
            self.ended.append("eof")
        except ConnectionResetError:
            self.ended.append("reset")
        except TimeoutError:
            self.ended.append("timeout")

    def reset(self, index: int) -> None:
        """Reset connection ``index`` (its thread does it, woken by shutting down reading)."""
        conn = self.conns[index]
        self._to_reset.add(conn)
        conn.shutdown(socket.SHUT_RD)

    def data(self, index: int = 0) -> bytes:
        """What connection ``index`` has received so far (nothing before it exists)."""
        return bytes(self.received[index]) if len(self.received) > index else b""

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


async def started(port: int) -> FaultProxy:
    proxy = FaultProxy(reactor, "127.0.0.1", port)
    await proxy.start()
    return proxy


@pytest_twisted.async_yield_fixture
async def echo_proxy() -> AsyncIterator[FaultProxy]:
    target = TargetServer(echo)
    proxy = await started(target.port)
    yield proxy
    await proxy.stop()
    target.close()


@pytest_twisted.async_yield_fixture
async def sink_proxy(sink: Sink) -> AsyncIterator[FaultProxy]:
    proxy = await started(sink.port)
    yield proxy
    await proxy.stop()


def client(proxy: FaultProxy, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def silent(sock: socket.socket, seconds: float = 0.5) -> bool:
    """Nothing arrives, not even a FIN, for ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(65536)
    except TimeoutError:
        return True
    return False


def recv_error(sock: socket.socket) -> str:
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    return "eof" if data == b"" else f"data {data!r}"


def connect_and_recv(proxy: FaultProxy) -> str:
    """Connect and read once: a reset may come before connect() even returns."""
    try:
        sock = client(proxy)
    except ConnectionResetError:
        return "reset"
    with sock:
        return recv_error(sock)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# -- pass ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pass_carries_data_and_half_close_both_ways(echo_proxy: FaultProxy) -> None:
    payload = random.randbytes(3 * MiB + 17)
    back = await in_thread(exchange, echo_proxy.port, payload)
    # exchange() half-closes after sending and reads to EOF: the echo target saw our FIN
    # and its own FIN came back.
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    assert echo_proxy.bytes_from_clients == echo_proxy.bytes_from_server == len(payload)
    assert echo_proxy.mode == "pass" and echo_proxy.accepted_connections == 1
    await echo_proxy.wait_for_connections(0)


@pytest_twisted.ensureDeferred
async def test_target_reset_passes_as_reset(sink: Sink, sink_proxy: FaultProxy) -> None:
    c = await in_thread(client, sink_proxy)
    c.sendall(b"RST!")
    assert await in_thread(recv_error, c) == "reset"
    assert sink.ended == ["we reset"]
    c.close()


@pytest_twisted.ensureDeferred
async def test_target_down_resets_the_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    proxy = await started(dead)
    try:
        assert await in_thread(connect_and_recv, proxy) == "reset"
        await proxy.wait_for_connections(0)
    finally:
        await proxy.stop()


# -- blackhole -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_blackhole_discards_both_ways_and_sends_no_fin(
    sink: Sink, sink_proxy: FaultProxy
) -> None:
    c = await in_thread(client, sink_proxy)
    c.sendall(b"before")
    await eventually(lambda: sink.data(0) == b"before")
    sink_proxy.blackhole()
    assert sink_proxy.mode == "blackhole"
    c.sendall(b"into the void")
    sink.conns[0].sendall(b"also into the void")
    await eventually(lambda: sink_proxy.bytes_from_server == len(b"also into the void"))
    await eventually(lambda: sink_proxy.bytes_from_clients == len(b"beforeinto the void"))
    # The target closes: the client hears nothing, not even the FIN.
    sink.conns[0].shutdown(socket.SHUT_WR)
    assert await in_thread(silent, c)
    assert sink.data(0) == b"before"
    # Our FIN does not reach the target either: its connection stays open.
    c.shutdown(socket.SHUT_WR)
    await sleep(0.3)
    assert sink.ended == [] and sink_proxy.connections == 1
    c.close()


@pytest_twisted.ensureDeferred
async def test_blackhole_downstream_only(sink: Sink, sink_proxy: FaultProxy) -> None:
    c = await in_thread(client, sink_proxy)
    await eventually(lambda: len(sink.conns) == 1)
    sink_proxy.blackhole("downstream")
    c.sendall(b"still goes up")
    sink.conns[0].sendall(b"never comes down")
    await eventually(lambda: sink.data(0) == b"still goes up")
    assert await in_thread(silent, c)
    assert sink_proxy.bytes_from_server == len(b"never comes down")
    c.close()
    # Our close still passes upstream.
    await eventually(lambda: sink.ended == ["eof"])


@pytest_twisted.ensureDeferred
async def test_back_to_pass_carries_on_and_ends_what_ended_meanwhile(
    sink: Sink, sink_proxy: FaultProxy
) -> None:
    clients = [await in_thread(client, sink_proxy) for _ in range(3)]
    for n, c in enumerate(clients):
        c.sendall(b"%d" % n)
    await eventually(lambda: sorted(sink.received) == [b"0", b"1", b"2"])
    index = {bytes(data): i for i, data in enumerate(sink.received)}
    sink_proxy.blackhole()
    clients[0].sendall(b"lost")
    await eventually(lambda: sink_proxy.bytes_from_clients == 7)
    # During the partition one target resets, one half-closes: nobody hears of it.
    sink.reset(index[b"1"])
    sink.conns[index[b"2"]].shutdown(socket.SHUT_WR)
    await eventually(lambda: "we reset" in sink.ended)
    assert await in_thread(silent, clients[1], 0.3)
    assert await in_thread(silent, clients[2], 0.01)
    sink_proxy.pass_through()
    clients[0].sendall(b"found")
    await eventually(lambda: sink.data(index[b"0"]) == b"0found")
    # Now they learn what happened meanwhile, each as it happened.
    assert await in_thread(recv_error, clients[1]) == "reset"
    assert await in_thread(recv_error, clients[2]) == "eof"
    for c in clients:
        c.close()


# -- stall -----------------------------------------------------------------------------


def send_until_blocked(sock: socket.socket, limit: int) -> int:
    """Send until the kernel will take no more (or ``limit`` bytes); return bytes sent."""
    sock.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    idle_rounds = 0
    while sent < limit and idle_rounds < 20:
        try:
            sent += sock.send(chunk)
            idle_rounds = 0
        except BlockingIOError:
            idle_rounds += 1
            threading.Event().wait(0.02)
    sock.setblocking(True)
    return sent


@pytest_twisted.ensureDeferred
async def test_stall_stops_reading_until_pass(sink: Sink, sink_proxy: FaultProxy) -> None:
    c = await in_thread(client, sink_proxy)
    await eventually(lambda: len(sink.conns) == 1)
    sink_proxy.stall()
    assert sink_proxy.mode == "stall"
    limit = 256 * MiB
    sent = await in_thread(send_until_blocked, c, limit)
    # The sender blocked once the socket buffers were full; nothing went through.
    assert sent < limit
    assert sink_proxy.bytes_from_clients == 0 and len(sink.received[0]) == 0
    sink_proxy.pass_through()
    await eventually(lambda: len(sink.received[0]) == sent)
    c.close()


@pytest_twisted.ensureDeferred
async def test_stall_downstream_keeps_upstream_flowing(sink: Sink, sink_proxy: FaultProxy) -> None:
    c = await in_thread(client, sink_proxy)
    await eventually(lambda: len(sink.conns) == 1)
    sink_proxy.stall("downstream")
    sink.conns[0].sendall(b"held")
    c.sendall(b"flows")
    await eventually(lambda: sink.data(0) == b"flows")
    assert await in_thread(silent, c, 0.3)
    sink_proxy.pass_through()
    assert await in_thread(recv_exactly, c, 4) == b"held"
    c.close()


# -- reset -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reset_aborts_both_sides_with_rst(sink: Sink, sink_proxy: FaultProxy) -> None:
    c = await in_thread(client, sink_proxy)
    await eventually(lambda: len(sink.conns) == 1)
    sink_proxy.reset()
    assert await in_thread(recv_error, c) == "reset"
    await eventually(lambda: sink.ended == ["reset"])
    c.close()
    # New connections are accepted and reset at once, never reaching the target.
    assert await in_thread(connect_and_recv, sink_proxy) == "reset"
    assert sink_proxy.accepted_connections == 2 and len(sink.conns) == 1
    await sink_proxy.wait_for_connections(0)


# -- bit flip --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_flip_bit_flips_exactly_one_bit_then_passes(
    sink: Sink, sink_proxy: FaultProxy
) -> None:
    payload = random.randbytes(300_000)
    sink_proxy.flip_bit(after=123_456, bit=5)
    assert sink_proxy.mode == "flip"
    c = await in_thread(client, sink_proxy)
    await eventually(lambda: len(sink.conns) == 1)
    sink.conns[0].sendall(payload)
    got = await in_thread(recv_exactly, c, len(payload))
    assert len(got) == len(payload)
    diff = [i for i, (a, b) in enumerate(zip(got, payload, strict=True)) if a != b]
    assert diff == [123_456] and got[123_456] ^ payload[123_456] == 1 << 5
    assert sink_proxy.flips == 1 and sink_proxy.mode == "pass"
    # Once only: the next bytes pass untouched.
    sink.conns[0].sendall(payload)
    assert await in_thread(recv_exactly, c, len(payload)) == payload
    assert not sink.received[0]  # nothing went up
    c.close()


def test_flip_bit_arguments() -> None:
    proxy = FaultProxy(reactor, "127.0.0.1", 1)
    with pytest.raises(ValueError):
        proxy.flip_bit(-1)
    with pytest.raises(ValueError):
        proxy.flip_bit(0, bit=8)
    with pytest.raises(ValueError):
        proxy.blackhole("sideways")  # type: ignore[arg-type]


# -- set-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "host"),
    [("10.1.2.3", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("example.com", "127.0.0.1")],
)
def test_loopback_only(target: str, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(reactor, target, 22, host=host)


def test_ipv6_loopback_is_accepted() -> None:
    assert FaultProxy(reactor, "::1", 22, host="::1").target_host == "::1"


@pytest_twisted.ensureDeferred
async def test_stop_closes_everything(sink: Sink) -> None:
    proxy = await started(sink.port)
    port = proxy.port
    proxy.blackhole()
    c = await in_thread(client, proxy)
    await eventually(lambda: len(sink.conns) == 1)
    await proxy.stop()
    assert proxy.connections == 0
    assert await in_thread(recv_error, c) in ("reset", "eof")
    await eventually(lambda: len(sink.ended) == 1)
    c.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(RuntimeError, match="start"):
        _ = proxy.port
