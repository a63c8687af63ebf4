"""
Real sockets on 127.0.0.1 for the end-to-end tests: local targets and remote clients as
plain threaded, blocking sockets (so nothing on the test side shares rtunnel's reactor or
its flow control), and waiting on the reactor with a deadline that says what it waited
for.
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater


class TargetServer:
    """A threaded TCP server on 127.0.0.1 running ``handler(conn)`` per connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.connections: list[socket.socket] = []
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(60)
            self.handler(conn)
        except BaseException as e:  # recorded for the test to report
            self.errors.append(e)
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(256 * 1024):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def exchange(port: int, payload: bytes, timeout: float = 30) -> bytes:
    """Connect through the server, send ``payload``, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        received: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(c, received))
        reader.start()
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        reader.join(timeout)
        assert not reader.is_alive(), "no EOF came back"
        return b"".join(received)


def _read_all(c: socket.socket, out: list[bytes]) -> None:
    try:
        while data := c.recv(256 * 1024):
            out.append(data)
    except OSError as e:
        out.append(f"<{e}>".encode())


def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run blocking client code in its own thread (not the reactor's pool of 10)."""
    d: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException as e:
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True).start()
    return d


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    """
    Wait until ``check()`` is true, polling on the reactor.

    :raises AssertionError: not true after ``timeout`` seconds; the message quotes the
        condition (its source line).
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:g} s: {describe(check)}")
        await sleep(0.02)


def describe(check: Callable[..., object]) -> str:
    """A condition for a message: the source of a lambda, else the function's name."""
    try:
        source = inspect.getsource(check).strip()
    except (OSError, TypeError):
        return getattr(check, "__qualname__", repr(check))
    if "lambda" in source:
        return source[source.index("lambda") :].rstrip(",)")
    return getattr(check, "__qualname__", source.splitlines()[0])
