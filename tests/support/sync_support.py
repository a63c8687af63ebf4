"""
What tests/test_blocking.py and tests/test_aio.py share: options for a real sshd, a plain
threaded client, a server that never speaks SSH, and the reactor thread's presence.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rtunnel import PrivateKeyFile, ReconnectPolicy, TunnelOptions
from rtunnel.testing._openssh import OpenSSHServer


def options_for(server: OpenSSHServer, key: Path, **kw: object) -> TunnelOptions:
    """Options that log on to ``server`` with ``key`` and its known_hosts, no reconnect."""
    kw.setdefault("user", server.user)
    kw.setdefault("auth", [PrivateKeyFile(key)])
    kw.setdefault("known_hosts", server.known_hosts_path)
    kw.setdefault("reconnect", ReconnectPolicy.off())
    return TunnelOptions.create(**kw)  # type: ignore[arg-type]


def reactor_threads() -> int:
    """How many rtunnel reactor threads are alive."""
    return sum(t.name == "rtunnel-reactor" and t.is_alive() for t in threading.enumerate())


def echo_through(port: int, payload: bytes, timeout: float = 20) -> bytes:
    """Connect to 127.0.0.1:port, send ``payload``, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        sender.join(timeout)
        return b"".join(chunks)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never sends a byte (no SSH banner)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        for conn in held:
            conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pusher:
    """A client that writes to 127.0.0.1:port as fast as the socket takes it, counting."""

    def __init__(self, port: int, total: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sent = 0
        self.total = total
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        block = b"x" * 65536
        try:
            while self.sent < self.total:
                n = self.sock.send(block[: min(len(block), self.total - self.sent)])
                self.sent += n
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self.done.set()

    def stalled_at(self, quiet: float = 1.0, limit: float = 20.0) -> int:
        """Wait until ``sent`` has not moved for ``quiet`` seconds; return it."""
        import time

        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            now = self.sent
            if now == last:
                return now
            last = now
            time.sleep(quiet)
        raise AssertionError(f"the sender never stalled: {self.sent} bytes sent")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)
