"""
:mod:`rtunnel.aio` on the application's own loop, asyncio's and uvloop's, against a real
OpenSSH sshd: both modes, StreamReader/StreamWriter-like channels with backpressure both
ways, errors, timeouts, cancellation, a loop that is never blocked, two tunnels at once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sync_support import (
    Pusher,
    echo_through,
    free_port,
    options_for,
    reactor_threads,
    sha,
    silent_server,
)

from rtunnel import ForwardingError, ForwardState, HostKeyError, TunnelOptions
from rtunnel._bridge import HIGH_WATER, now, runner
from rtunnel.aio import CallTimeoutError, ChannelReader, ChannelWriter, ListenerClosed, Tunnel
from rtunnel.options import DEFAULT_MAX_PACKET, DEFAULT_WINDOW_SIZE
from rtunnel.testing._openssh import OpenSSHServer

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion on a new loop of the parametrized kind."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def run_uvloop(coro: Awaitable[Any]) -> Any:
            result = uvloop.run(coro)  # type: ignore[arg-type]
            assert reactor_threads() == 0
            return result

        return run_uvloop

    def run_asyncio(coro: Awaitable[Any]) -> Any:
        result = asyncio.run(coro)  # type: ignore[arg-type]
        assert reactor_threads() == 0
        return result

    return run_asyncio


def _tunnel(server: OpenSSHServer, key: Path, **kw: Any) -> Tunnel:
    return Tunnel(server.host, server.port, options=options_for(server, key, **kw), timeout=30)


async def _echo(port: int, payload: bytes) -> bytes:
    return await asyncio.to_thread(echo_through, port, payload)


def test_forwarding_mode(
    run: Any, openssh_server: OpenSSHServer, openssh_client_key: Path, threaded_echo_port: int
) -> None:
    async def main() -> None:
        async with _tunnel(openssh_server, openssh_client_key) as tunnel:
            forward = await tunnel.request_forwarding(
                "127.0.0.1", 0, "127.0.0.1", threaded_echo_port
            )
            assert forward.state is ForwardState.ACTIVE
            assert [f.port for f in await tunnel.forwards()] == [forward.port]
            payload = bytes(range(256)) * 4096
            assert sha(await _echo(forward.port, payload)) == sha(payload)
            stats = await tunnel.statistics()
            assert (stats.channels_opened, stats.bytes_sent, stats.bytes_received) == (
                1,
                len(payload),
                len(payload),
            )
            await tunnel.cancel_forwarding("127.0.0.1", forward.port)
            assert await tunnel.forwards() == []
            assert await tunnel.connected()
        assert not await tunnel.connected()

    run(main())


def test_event_mode_handler_streams(
    run: Any, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    handled: list[int] = []

    async def handler(reader: ChannelReader, writer: ChannelWriter) -> None:
        handled.append(writer.channel_id)
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        header = await reader.readexactly(4)
        async for line in reader:
            writer.write(header + line.upper())
            await writer.drain()
        assert reader.at_eof()
        writer.write_eof()

    async def main() -> None:
        async with _tunnel(openssh_server, openssh_client_key) as tunnel:
            listener = await tunnel.listen("127.0.0.1", 0, handler=handler)
            answers = await asyncio.gather(
                *(_echo(listener.forward.port, b"#%02d:one\ntwo\nthree" % i) for i in range(6))
            )
            assert answers == [b"#%02d:ONE\n#%02d:TWO\n#%02d:THREE" % (i, i, i) for i in range(6)]
            assert len(set(handled)) == 6
            assert (await tunnel.statistics()).channels_opened == 6
            await listener.close()
            with pytest.raises(ListenerClosed):
                await listener.accept(timeout=5)

    run(main())


def test_a_reader_that_stops_reading_stops_the_window(
    run: Any, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    total = 64 * 1024 * 1024

    async def main() -> None:
        async with _tunnel(openssh_server, openssh_client_key) as tunnel:
            listener = await tunnel.listen("127.0.0.1", 0)
            pusher = Pusher(listener.forward.port, total)
            try:
                reader, _ = await listener.accept(timeout=20)
                stalled = await asyncio.to_thread(pusher.stalled_at)
                held = runner.submit(now(lambda: reader._stream._buffered)).result(5)
                assert HIGH_WATER <= held <= HIGH_WATER + DEFAULT_WINDOW_SIZE + DEFAULT_MAX_PACKET
                assert held < stalled < 24 * 1024 * 1024, stalled
                received = len(await reader.read())
                assert received == total
            finally:
                await asyncio.to_thread(pusher.close)

    run(main())


def test_drain_waits_while_the_remote_client_does_not_read(
    run: Any, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    """
    The remote client reads nothing: drain() must stop returning after about sshd's channel
    window plus the sockets' buffers, and everything arrives once the client reads.
    """
    chunk = b"y" * (1 << 20)

    async def main() -> None:
        async with _tunnel(openssh_server, openssh_client_key) as tunnel:
            listener = await tunnel.listen("127.0.0.1", 0)
            client = socket.create_connection(("127.0.0.1", listener.forward.port), timeout=30)
            try:
                _, writer = await listener.accept(timeout=20)
                written = 0
                while written < 64 * len(chunk):
                    writer.write(chunk)
                    try:
                        await writer.drain(timeout=1.5)
                    except CallTimeoutError as e:
                        assert "drain()" in str(e)
                        break
                    written += len(chunk)
                # Stopped: more than one window went out, far less than 64 MiB.
                assert DEFAULT_WINDOW_SIZE <= written < 24 * len(chunk), written
                writer.close()
                received = await asyncio.to_thread(_read_all, client)
                assert received == written + len(chunk)
            finally:
                client.close()

    run(main())


def _read_all(sock: socket.socket) -> int:
    n = 0
    while data := sock.recv(1 << 20):
        n += len(data)
    return n


def test_errors_are_the_library_types(
    run: Any,
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    openssh_sshd: str,
    tmp_path: Path,
    threaded_echo_port: int,
) -> None:
    wrong = tmp_path / "known_hosts"
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    wrong.write_text(f"[{openssh_server.host}]:{openssh_server.port} ssh-ed25519 {other}\n")
    allowed = free_port()
    limited = OpenSSHServer(
        tmp_path / "sshd-limited",
        authorized_keys=[openssh_client_key.with_suffix(".pub").read_text().strip()],
        sshd_path=openssh_sshd,
        extra_config=[f"PermitListen 127.0.0.1:{allowed}"],
    )
    limited.start()

    async def main() -> None:
        with pytest.raises(HostKeyError):
            async with _tunnel(openssh_server, openssh_client_key, known_hosts=wrong):
                pass
        async with _tunnel(limited, openssh_client_key) as tunnel:
            with pytest.raises(ForwardingError, match="remote port forwarding failed"):
                await tunnel.request_forwarding(
                    "127.0.0.1", free_port(), "127.0.0.1", threaded_echo_port
                )
            forward = await tunnel.request_forwarding(
                "127.0.0.1", allowed, "127.0.0.1", threaded_echo_port
            )
            assert await _echo(forward.port, b"still up") == b"still up"

    try:
        run(main())
    finally:
        limited.stop()


def test_timeout_names_the_call_and_the_loop_keeps_running(
    run: Any, openssh_client_key: Path
) -> None:
    from rtunnel import PrivateKeyFile

    async def main() -> None:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        with silent_server() as port:
            options = TunnelOptions.create(user="x", auth=[PrivateKeyFile(openssh_client_key)])
            tunnel = Tunnel("127.0.0.1", port, options=options)
            task = asyncio.create_task(ticker())
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(CallTimeoutError, match=r"^logon\(\) did not finish within 1 s\.$"):
                await tunnel.logon(timeout=1)
            elapsed = loop.time() - started
            stop.set()
            await task
            await tunnel.close(timeout=10)
        assert 1.0 <= elapsed < 3.0, elapsed
        # The loop ran all along (10 ms ticks; a loaded machine gets fewer, never none).
        assert 20 <= ticks <= 110, ticks

    run(main())


def test_cancelling_a_waiting_accept(
    run: Any, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    async def main() -> None:
        async with _tunnel(openssh_server, openssh_client_key) as tunnel:
            listener = await tunnel.listen("127.0.0.1", 0)
            waiting = asyncio.create_task(listener.accept())
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # The cancelled accept took nothing: the next connection goes to the next one.
            client = await asyncio.to_thread(
                socket.create_connection, ("127.0.0.1", listener.forward.port), 10
            )
            try:
                reader, writer = await listener.accept(timeout=10)
                client.sendall(b"hi")
                assert await reader.readexactly(2) == b"hi"
                writer.close()
                await writer.wait_closed()
            finally:
                client.close()

    run(main())


def test_two_tunnels_at_once(
    run: Any, openssh_server: OpenSSHServer, openssh_client_key: Path, threaded_echo_port: int
) -> None:
    async def one(name: bytes) -> bytes:
        async with _tunnel(openssh_server, openssh_client_key) as tunnel:
            forward = await tunnel.request_forwarding(
                "127.0.0.1", 0, "127.0.0.1", threaded_echo_port
            )
            assert reactor_threads() == 1
            return await _echo(forward.port, name)

    async def main() -> list[bytes]:
        return list(await asyncio.gather(one(b"first"), one(b"second")))

    assert run(main()) == [b"first", b"second"]
