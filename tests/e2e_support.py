"""
The server under test in the end-to-end files: the bundled server or a real sshd, behind
one interface (the ``server`` fixture in conftest.py builds it).
"""

from __future__ import annotations

import subprocess
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


class Agent:
    """A running ``ssh-agent`` (the ``ssh_agent`` fixture): its socket and environment."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def add(self, key: Path) -> None:
        subprocess.run(["ssh-add", str(key)], env=self.env, check=True, capture_output=True)


@dataclass
class LocalUser:
    """A throwaway local account (the ``local_user`` fixture) and a directory for its keys."""

    name: str
    password: str
    keys_dir: Path
