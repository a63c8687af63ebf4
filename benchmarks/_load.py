"""
The load side of the benchmark: what a user of the forwarded port does, timed. Blocking
sockets for the sequential measurements (nothing between the clock and the socket), asyncio
for the concurrent one. Every measurement checks that the bytes arrived (counts, or the
echoed bytes themselves), so a broken tunnel cannot look fast.

The target's protocol is in ``_target.py`` (first byte: ``E`` echo, ``S`` sink, ``D``
download).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

__all__ = [
    "BenchmarkError",
    "bulk_download",
    "bulk_upload",
    "concurrent_echo",
    "connection_times",
    "echo_once",
    "round_trip_times",
]

_BUF = 1 << 20


class BenchmarkError(Exception):
    """A measurement saw the wrong bytes, or none."""


def _connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise BenchmarkError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def echo_once(port: int, timeout: float = 5.0) -> None:
    """One short echo through the tunnel (raises when the forward is not up)."""
    with _connect(port, timeout) as sock:
        sock.sendall(b"Eping")
        if _recv_exactly(sock, 4) != b"ping":
            raise BenchmarkError("echo returned other bytes")


def bulk_upload(port: int, nbytes: int, timeout: float = 300.0) -> float:
    """
    Send ``nbytes`` through one connection to the sink; seconds until the sink has counted
    them all.
    """
    block = memoryview(os.urandom(_BUF))
    start = time.perf_counter()
    with _connect(port, timeout) as sock:
        sock.sendall(b"S")
        left = nbytes
        while left > 0:
            n = min(left, _BUF)
            sock.sendall(block[:n])
            left -= n
        sock.shutdown(socket.SHUT_WR)
        (count,) = struct.unpack(">Q", _recv_exactly(sock, 8))
    elapsed = time.perf_counter() - start
    if count != nbytes:
        raise BenchmarkError(f"upload: the sink counted {count} bytes of {nbytes}")
    return elapsed


def bulk_download(port: int, nbytes: int, timeout: float = 300.0) -> float:
    """Receive ``nbytes`` from the source through one connection; seconds taken."""
    buf = bytearray(_BUF)
    view = memoryview(buf)
    got = 0
    start = time.perf_counter()
    with _connect(port, timeout) as sock:
        sock.sendall(b"D" + struct.pack(">Q", nbytes))
        while True:
            n = sock.recv_into(view)
            if n == 0:
                break
            got += n
    elapsed = time.perf_counter() - start
    if got != nbytes:
        raise BenchmarkError(f"download: received {got} bytes of {nbytes}")
    return elapsed


def round_trip_times(port: int, count: int, size: int = 64, timeout: float = 30.0) -> list[float]:
    """
    ``count`` sequential ``size``-byte echoes on one connection (after a few unrecorded
    ones); the seconds each took.
    """
    message = os.urandom(size)
    times: list[float] = []
    with _connect(port, timeout) as sock:
        sock.sendall(b"E")
        for i in range(count + 20):
            start = time.perf_counter()
            sock.sendall(message)
            if _recv_exactly(sock, size) != message:
                raise BenchmarkError("latency: echo returned other bytes")
            if i >= 20:
                times.append(time.perf_counter() - start)
    return times


def connection_times(
    port: int, count: int, timeout: float = 30.0, target_closes: bool = False
) -> list[float]:
    """
    ``count`` times: connect, echo 16 bytes, close; the seconds each took (the close
    included). ``target_closes``: the target closes first, right after its answer.
    """
    message = (b"C" if target_closes else b"E") + bytes(range(16))
    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        with _connect(port, timeout) as sock:
            sock.sendall(message)
            if _recv_exactly(sock, 16) != message[1:]:
                raise BenchmarkError("connection rate: echo returned other bytes")
        times.append(time.perf_counter() - start)
    return times


def concurrent_echo(port: int, connections: int, nbytes: int, timeout: float = 300.0) -> float:
    """
    ``connections`` connections at once, each echoing ``nbytes``; the wall-clock seconds
    until all are back.
    """
    return asyncio.run(asyncio.wait_for(_concurrent(port, connections, nbytes), timeout))


async def _concurrent(port: int, connections: int, nbytes: int) -> float:
    payload = os.urandom(nbytes)

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_BUF)
        try:
            writer.write(b"E")
            view = memoryview(payload)

            async def send() -> None:
                for offset in range(0, nbytes, 64 * 1024):
                    writer.write(view[offset : offset + 64 * 1024])
                    await writer.drain()

            sending = asyncio.ensure_future(send())
            got = await reader.readexactly(nbytes)
            await sending
            if got != payload:
                raise BenchmarkError("concurrent echo: other bytes came back")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return time.perf_counter() - start
