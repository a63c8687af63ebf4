"""
MaxTransferRate (``max_transfer_rate=``, ``-o MaxTransferRate``): channel data sent to the
server is paced, against the bundled server and a real sshd. The arithmetic is tested in
test_policy.py, the channel's holding and turn-taking in test_connection.py.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest_twisted
from e2e_support import Server
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock

from rtunnel.openssh.client_options import ClientOptions
from rtunnel.service import build_tunnel


def test_the_option_reaches_the_tunnel() -> None:
    options = ClientOptions(user="u", port=22)
    options.apply_option("MaxTransferRate=512K")
    tunnel = build_tunnel(MemoryReactorClock(), "h", options, report=lambda *a: None)
    assert tunnel.options.channels.max_transfer_rate == 512 * 1024
    tunnel = build_tunnel(
        MemoryReactorClock(), "h", ClientOptions(user="u", port=22), report=lambda *a: None
    )
    assert tunnel.options.channels.max_transfer_rate == 0


def _download(port: int, nbytes: int) -> tuple[int, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        start = time.monotonic()
        got = 0
        while chunk := c.recv(1 << 20):
            got += len(chunk)
        return got, time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_max_transfer_rate_paces_what_goes_to_the_server(server: Server) -> None:
    """MaxTransferRate: 1.5 MiB from a target at 1 MiB/s takes about 1.4 s (less the burst);
    unlimited, the same takes a few milliseconds."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    size = 1536 * 1024
    source = socket.socket()
    source.bind(("127.0.0.1", 0))
    source.listen(4)

    def serve() -> None:
        for _ in range(2):
            conn, _ = source.accept()
            with conn:
                conn.sendall(b"x" * size)

    threading.Thread(target=serve, daemon=True).start()
    rate = 1 << 20
    tunnel = server.tunnel(max_transfer_rate=rate)
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding(
            "127.0.0.1", 0, "127.0.0.1", source.getsockname()[1]
        )
        got, elapsed = await deferToThread(_download, forward.port, size)
    finally:
        await tunnel.logoff()
        await deferLater(reactor, 0, lambda: None)
    assert got == size
    burst = rate / 10
    assert elapsed >= (size - burst) / rate * 0.95
    assert elapsed < 30  # slack for a loaded machine; the point is the lower bound
    # Without a limit the same download is far quicker (the limit is what made it slow).
    tunnel = server.tunnel()
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding(
            "127.0.0.1", 0, "127.0.0.1", source.getsockname()[1]
        )
        got, unlimited = await deferToThread(_download, forward.port, size)
    finally:
        await tunnel.logoff()
        source.close()
    assert got == size and unlimited < elapsed / 2
