"""
The soak harness's load: transfers through a forwarded port, each checked by sha256 and
counted, byte for byte, in a :class:`Tally` (what the load wrote into the port and read
back out of it), so that a tunnel's own counters can be held against it.

Blocking sockets (one thread per activity) as the benchmark's ``_load.py``, whose helpers
are reused; asyncio for the concurrent batches. The target's modes are in
``_target.py`` and ``_soak_target.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from _load import BenchmarkError, _recv_exactly
from _load import _connect as _bench_connect

__all__ = [
    "BenchmarkError",
    "Corrupted",
    "SelfConnected",
    "Tally",
    "concurrent_echoes",
    "download",
    "echo",
    "short_connections",
    "upload",
]


class Corrupted(BenchmarkError):
    """All the bytes arrived, but not the ones sent (another sha256)."""


class SelfConnected(BenchmarkError):
    """
    The connection went to itself: nothing listened on the port (a tunnel between
    sessions) and Linux picked the port itself as the source port, a TCP simultaneous
    open. Its "echo" is what was sent, shifted by the mode byte; a failed connect, not
    corruption.
    """


def _connect(port: int, timeout: float) -> socket.socket:
    sock = _bench_connect(port, timeout)
    if sock.getsockname() == sock.getpeername():
        sock.close()
        raise SelfConnected(f"connected to itself on port {port}: nothing listens there")
    return sock


_BLOCK = 1 << 20
#: The upload source: random bytes, read cyclically from a random offset per transfer
#: (the period, 1 MiB plus a prime, lines up with no buffer size).
_POOL_SIZE = _BLOCK + 4099
_POOL = os.urandom(_POOL_SIZE)
_POOL2 = _POOL + _POOL[:_BLOCK]


@dataclass
class Tally:
    """
    Bytes the load wrote into one forwarded port and read back from it, and the
    transfers it made (thread-safe).
    """

    written: int = 0
    read: int = 0
    transfers: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, written: int, read: int) -> None:
        with self._lock:
            self.written += written
            self.read += read
            self.transfers += 1


def _differ(sent: bytes, got: bytes) -> str:
    """Where two byte strings first differ, for the report."""
    pairs = enumerate(zip(sent, got, strict=False))
    at = next((i for i, (a, b) in pairs if a != b), min(len(sent), len(got)))
    return (
        f"{len(got)} bytes for {len(sent)}, first difference at {at}: sent "
        f"{sent[at : at + 8].hex()}, got {got[at : at + 8].hex()}"
    )


def upload(port: int, nbytes: int, tally: Tally | None = None, timeout: float = 60.0) -> None:
    """
    Send ``nbytes`` to the hash sink; raise :class:`BenchmarkError` unless it counted
    exactly those bytes with the same sha256.
    """
    digest = hashlib.sha256()
    offset = random.randrange(_POOL_SIZE)
    with _connect(port, timeout) as sock:
        sock.sendall(b"H")
        left = nbytes
        while left > 0:
            n = min(left, _BLOCK)
            chunk = memoryview(_POOL2)[offset : offset + n]
            digest.update(chunk)
            sock.sendall(chunk)
            offset = (offset + n) % _POOL_SIZE
            left -= n
        sock.shutdown(socket.SHUT_WR)
        answer = _recv_exactly(sock, 40)
        trailing = sock.recv(1)
    (count,) = struct.unpack(">Q", answer[:8])
    if tally is not None:
        tally.add(1 + nbytes, 40 + len(trailing))
    if count != nbytes:
        raise BenchmarkError(f"upload: the target got {count} bytes of {nbytes}")
    if answer[8:] != digest.digest():
        raise Corrupted(f"upload: {nbytes} bytes arrived with another sha256")
    if trailing:
        raise BenchmarkError("upload: the target sent more than its answer")


def download(port: int, nbytes: int, tally: Tally | None = None, timeout: float = 60.0) -> None:
    """
    Receive ``nbytes`` pseudo-random bytes and their sha256 from the target; raise
    :class:`BenchmarkError` unless exactly those bytes arrived with that digest.
    """
    digest = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    got = bytearray()  # the tail: the last 32 bytes are the digest
    total = 0
    with _connect(port, timeout) as sock:
        sock.sendall(b"R" + struct.pack(">QQ", nbytes, random.getrandbits(63)))
        while True:
            n = sock.recv_into(view)
            if n == 0:
                break
            total += n
            # Hash everything but the last 32 bytes seen so far.
            got += view[:n]
            if len(got) > 32:
                digest.update(memoryview(got)[:-32])
                del got[:-32]
    if tally is not None:
        tally.add(17, total)
    if total != nbytes + 32:
        raise BenchmarkError(f"download: received {max(0, total - 32)} bytes of {nbytes}")
    if bytes(got) != digest.digest():
        raise Corrupted(f"download: {nbytes} bytes arrived with another sha256")


def echo(port: int, nbytes: int, tally: Tally | None = None, timeout: float = 30.0) -> None:
    """One connection: echo ``nbytes`` random bytes, check them, close."""
    payload = os.urandom(nbytes)
    with _connect(port, timeout) as sock:
        sock.sendall(b"E" + payload)
        back = _recv_exactly(sock, nbytes)
    if tally is not None:
        tally.add(1 + nbytes, nbytes)
    if hashlib.sha256(back).digest() != hashlib.sha256(payload).digest():
        raise Corrupted(f"echo: other bytes came back: {_differ(payload, back)}")


def short_connections(
    port: int,
    count: int,
    nbytes: int = 32,
    tally: Tally | None = None,
    stop: threading.Event | None = None,
) -> int:
    """``count`` sequential short connections (connect, echo, close); returns how many ran."""
    done = 0
    for _ in range(count):
        if stop is not None and stop.is_set():
            break
        echo(port, nbytes, tally)
        done += 1
    return done


def concurrent_echoes(
    port: int, connections: int, nbytes: int, tally: Tally | None = None, timeout: float = 120.0
) -> float:
    """
    ``connections`` connections at once, each echoing ``nbytes`` random bytes (checked by
    sha256); the wall-clock seconds until all are back.
    """
    return asyncio.run(asyncio.wait_for(_concurrent(port, connections, nbytes, tally), timeout))


async def _concurrent(port: int, connections: int, nbytes: int, tally: Tally | None) -> float:
    async def one() -> None:
        payload = os.urandom(nbytes)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_BLOCK)
        if writer.get_extra_info("sockname") == writer.get_extra_info("peername"):
            writer.close()
            raise SelfConnected(f"connected to itself on port {port}: nothing listens there")
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
        finally:
            writer.close()
        if tally is not None:
            tally.add(1 + nbytes, nbytes)
        if hashlib.sha256(got).digest() != hashlib.sha256(payload).digest():
            raise Corrupted(f"concurrent echo: other bytes came back: {_differ(payload, got)}")

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return time.perf_counter() - start
