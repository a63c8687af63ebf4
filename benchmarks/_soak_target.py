"""
The soak harness's local target: the benchmark's (``_target.py``: ``E`` echo, ``S`` sink,
``D`` download, ``C`` echo-then-close) plus two modes that let every transfer be checked
by sha256 (RELIABILITY.md: "integrity" means the sha256 of what was sent equals the
sha256 of what arrived):

- ``H``: hash sink: read until EOF, then answer the byte count (8 bytes, big-endian) and
  the sha256 of the bytes (32 bytes), and close;
- ``R`` + 8-byte length + 8-byte seed: send that many pseudo-random bytes, then their
  sha256 (32 bytes), and close. The bytes come from a random pool whose length is no
  multiple of any SSH or socket buffer size, read cyclically from an offset the seed
  picks, so a lost, repeated or reordered packet changes the digest.

Run as its own process (``python3 benchmarks/_soak_target.py``): prints its port, serves
until stdin closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import sys

from typing_extensions import override

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _target import _CHUNK, _Target

#: The random pool the ``R`` mode sends from: 1 MiB plus a prime, so that its period
#: lines up with no packet or buffer size.
_POOL_SIZE = (1 << 20) + 4099
_POOL = os.urandom(_POOL_SIZE)
_POOL2 = _POOL + _POOL[:_CHUNK]  # so that any offset has a whole chunk after it


class _SoakTarget(_Target):
    def __init__(self) -> None:
        super().__init__()
        self._hash = hashlib.sha256()
        self._offset = 0

    @override
    def buffer_updated(self, nbytes: int) -> None:
        if self._mode == 0 and nbytes:
            mode = self._view[0]
            if mode == ord("H"):
                self._mode = mode
                data = self._view[1:nbytes]
                self._count += len(data)
                self._hash.update(data)
                return
            if mode == ord("R"):
                self._mode = mode
                self._header += bytes(self._view[1:nbytes])
                self._maybe_start_random()
                return
        if self._mode == ord("H"):
            data = self._view[:nbytes]
            self._count += nbytes
            self._hash.update(data)
            return
        if self._mode == ord("R"):
            if not self._started:
                self._header += bytes(self._view[:nbytes])
                self._maybe_start_random()
            return
        super().buffer_updated(nbytes)

    def _maybe_start_random(self) -> None:
        if self._started or len(self._header) < 16:
            return
        self._started = True
        self._left, seed = struct.unpack(">QQ", self._header[:16])
        self._offset = seed % _POOL_SIZE
        self._send_random()

    def _send_random(self) -> None:
        transport = self._transport
        assert transport is not None
        while self._left > 0 and not self._write_paused:
            n = min(self._left, _CHUNK)
            chunk = _POOL2[self._offset : self._offset + n]
            self._offset = (self._offset + n) % _POOL_SIZE
            self._hash.update(chunk)
            transport.write(chunk)
            self._left -= n
        if self._left == 0:
            transport.write(self._hash.digest())
            # Not from resume_writing directly (see _Target._send_more).
            asyncio.get_running_loop().call_soon(transport.close)
            self._left = -1

    @override
    def resume_writing(self) -> None:
        super().resume_writing()
        if self._mode == ord("R") and self._left > 0:
            self._send_random()

    @override
    def eof_received(self) -> bool:
        if self._mode == ord("H") and self._transport is not None:
            self._transport.write(struct.pack(">Q", self._count) + self._hash.digest())
            return False
        if self._mode == ord("R"):
            return True  # keep sending
        return super().eof_received()


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SoakTarget, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    done = loop.create_future()

    def stdin_readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    await done
    server.close()


if __name__ == "__main__":
    asyncio.run(_serve())
