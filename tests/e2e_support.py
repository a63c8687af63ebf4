"""
The server under test in the end-to-end files: the bundled server or a real sshd, behind
one interface (the ``server`` fixture in conftest.py builds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from rtunnel import PrivateKeyFile, ReverseTunnel
from rtunnel._policy import ReconnectPolicy


@dataclass
class Server:
    kind: str
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    #: Drop every SSH connection at the server; call it on the reactor thread and await it.
    drop: Callable[[], Deferred[Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    def tunnel(self, **kw: Any) -> ReverseTunnel:
        kw.setdefault("auth", [PrivateKeyFile(self.key)])
        kw.setdefault("known_hosts", self.known_hosts)
        kw.setdefault("user", self.user)
        kw.setdefault("reconnect", ReconnectPolicy.off())  # test_reconnect.py covers it
        return ReverseTunnel(reactor, self.host, self.port, **kw)
