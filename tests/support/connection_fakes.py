"""
Stand-ins for the connection service's tests (tests/memory): the SSH transport under it,
recording packets, and an application protocol recording what reaches it.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

__all__ = ["FakeSSHTransport", "Recorder"]


class FakeSSHTransport:
    """Stands in for the SSH transport: records packets and disconnects."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.disconnects: list[tuple[int, bytes]] = []
        self.unimplemented = 0
        self.transport = None

    def sendPacket(self, message: int, payload: bytes) -> None:  # noqa: N802
        self.packets.append((message, bytes(payload)))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:  # noqa: N802
        self.disconnects.append((reason, desc))

    def sendUnimplemented(self) -> None:  # noqa: N802
        self.unimplemented += 1

    def of(self, message: int) -> list[bytes]:
        return [p for m, p in self.packets if m == message]


class Recorder(Protocol):
    instances: list[Recorder] = []

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: list[Failure] = []
        Recorder.instances.append(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.lost.append(reason)
