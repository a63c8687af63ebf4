"""
The local target every tunnel under test forwards to: one TCP port, and the first byte of
each connection says what to do.

- ``E``: echo everything until EOF, then close;
- ``S``: sink: read until EOF, then answer with the byte count (8 bytes, big-endian) and
  close, so the sender knows everything arrived;
- ``D`` + 8-byte big-endian length: send that many bytes, then close;
- ``C``: echo the first bytes that arrive, then close (the target ends the connection
  first, as an HTTP/1.0 server does).

Run as its own process (``python3 benchmarks/_target.py``): it prints its port on one line,
then serves until stdin closes. asyncio with protocols (not streams), large reads and
preallocated buffers, so that it costs little next to the tunnels it measures.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

from typing_extensions import override

#: Bytes of zeros sent per write in download mode.
_CHUNK = 256 * 1024
_ZEROS = bytes(_CHUNK)


class _Target(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)
        self._mode = 0
        self._count = 0
        self._header = b""
        self._started = False
        self._left = 0
        self._write_paused = False
        self._transport: asyncio.Transport | None = None

    @override
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @override
    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    @override
    def buffer_updated(self, nbytes: int) -> None:
        data = self._view[:nbytes]
        if self._mode == 0:
            self._mode = data[0]
            data = data[1:]
        if self._mode == ord("E"):
            if data:
                assert self._transport is not None
                self._transport.write(bytes(data))
        elif self._mode == ord("S"):
            self._count += len(data)
        elif self._mode == ord("C"):
            assert self._transport is not None
            if data:
                self._transport.write(bytes(data))
                self._transport.close()
        elif self._mode == ord("D"):
            if not self._started:
                self._header += bytes(data)
                if len(self._header) >= 8:
                    self._started = True
                    (self._left,) = struct.unpack(">Q", self._header[:8])
                    self._send_more()
        else:
            assert self._transport is not None
            self._transport.abort()

    def _send_more(self) -> None:
        transport = self._transport
        assert transport is not None
        while self._left > 0 and not self._write_paused:
            n = min(self._left, _CHUNK)
            transport.write(_ZEROS if n == _CHUNK else _ZEROS[:n])
            self._left -= n
        if self._left == 0:
            # Not directly: called from resume_writing, a close() there makes asyncio
            # (3.11) call connection_lost twice.
            asyncio.get_running_loop().call_soon(transport.close)

    @override
    def pause_writing(self) -> None:
        self._write_paused = True
        # Echo: stop reading while the other side does not keep up (bounded memory).
        if self._transport is not None and self._mode == ord("E"):
            self._transport.pause_reading()

    @override
    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and self._mode == ord("E"):
            self._transport.resume_reading()
        if self._mode == ord("D") and self._left > 0:
            self._send_more()

    @override
    def eof_received(self) -> bool:
        # Download mode keeps sending; the others answer (sink) and close once written.
        if self._mode == ord("S") and self._transport is not None:
            self._transport.write(struct.pack(">Q", self._count))
        return self._mode == ord("D")


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Target, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    # Serve until the parent closes our stdin (or dies).
    done = loop.create_future()

    def stdin_readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    await done
    server.close()


if __name__ == "__main__":
    asyncio.run(_serve())
