"""
The server under test in the end-to-end files: the bundled server or a real sshd, behind
one interface (the ``server`` fixture in conftest.py builds it); an observer that records
what a tunnel went through; an ``ssh -W`` ProxyCommand through a jump sshd.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from rtunnel import (
    Forward,
    ForwardState,
    PrivateKeyFile,
    ReconnectAttempt,
    ReverseTunnel,
    TunnelObserver,
    TunnelOptions,
)
from rtunnel._core.policy import ReconnectPolicy
from rtunnel.testing import OpenSSHServer

#: For a test on the ``server`` fixture whose bundled-server variant runs in memory
#: elsewhere: only the real sshd's variant, marked as the fixture marks it.
openssh_only = pytest.mark.parametrize(
    "server", [pytest.param("openssh", marks=pytest.mark.openssh)], indirect=True
)


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
        return ReverseTunnel(reactor, self.host, self.port, options=TunnelOptions.create(**kw))


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


def command_argv(server: Server, *args: str) -> list[str]:
    """``ssh``'s options for ``server`` (its key and known_hosts, never asking), then
    ``args`` and the destination: what both ``ssh -F none`` and ``rtunnel`` take."""
    return [
        "-N",
        *["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}"],
        *["-i", str(server.key), "-p", str(server.port)],
        *args,
        f"{server.user}@{server.host}",
    ]


def first_lines_side_by_side(
    server: Server, ssh: str, args: Sequence[str], cwd: Path, check: Callable[[int], None]
) -> list[str]:
    """
    Run OpenSSH's ``ssh -F none`` and then ``rtunnel`` with the same ``args`` against
    ``server``; from each, the first stderr line (the ``Allocated port N ...`` one) with
    its port number removed, after ``check(port)`` has used the forward.
    """
    lines = []
    for argv in (
        [ssh, "-F", "none", *command_argv(server, *args)],
        [sys.executable, "-m", "rtunnel.cli", *command_argv(server, *args)],
    ):
        child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=cwd)
        try:
            assert child.stderr is not None
            line = child.stderr.readline().strip()
            words = line.split()
            assert words[:2] == ["Allocated", "port"], (argv[0], line)
            check(int(words[2]))
            lines.append(" ".join(words[:2] + words[3:]))
        finally:
            child.terminate()
            child.wait(10)
    return lines


class Recorder(TunnelObserver):
    def __init__(self) -> None:
        self.attempts: list[ReconnectAttempt] = []
        self.states: list[tuple[int, ForwardState, int]] = []
        self.connects = 0
        self.losses: list[Exception | None] = []
        self.cancel_after: int | None = None

    def connected(self) -> None:
        self.connects += 1

    def disconnected(self, reason: Exception | None) -> None:
        self.losses.append(reason)

    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self.attempts.append(attempt)
        if self.cancel_after is not None and len(self.attempts) > self.cancel_after:
            attempt.cancel()

    def forward_state_changed(self, forward: Forward) -> None:
        self.states.append((forward.requested_port, forward.state, forward.port))


def _jump_command(jump: OpenSSHServer, key: Path) -> str:
    """``ssh -W`` through ``jump``, with its own key and known_hosts, never prompting."""
    return shlex.join(
        [
            "ssh",
            "-F",
            "none",
            "-i",
            str(key),
            "-o",
            f"UserKnownHostsFile={jump.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
            str(jump.port),
            "-l",
            jump.user,
            "-W",
            "[HOST]:PORT",
            jump.host,
        ]
    ).replace("[HOST]:PORT", "[%h]:%p")


def _echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        return data
