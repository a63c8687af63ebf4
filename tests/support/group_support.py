"""Tunnel groups over real sshds (tests/interop/test_groups.py): servers and options."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rtunnel import PrivateKeyFile, ReconnectPolicy, TunnelOptions
from rtunnel.group import GroupObserver, GroupServer, GroupServerStatus
from rtunnel.testing import OpenSSHServer

#: Quick retries: a server that comes back is logged on again within about half a second.
FAST = ReconnectPolicy(initial_delay=0.2, max_delay=0.5, jitter=0.0)


@contextmanager
def sshds(directory: Path, sshd: str, key: Path, count: int) -> Iterator[list[OpenSSHServer]]:
    """``count`` real sshds on 127.0.0.1, each authorizing ``key``; stopped at the end."""
    public = key.with_name(key.name + ".pub").read_text().strip()
    servers = [
        OpenSSHServer(directory / f"sshd{n}", authorized_keys=[public], sshd_path=sshd)
        for n in range(count)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def group_server(
    server: OpenSSHServer, key: Path, name: str, alive: int = 0, count: int = 2
) -> GroupServer:
    """A group's entry for ``server``; ``alive``: ServerAliveInterval in seconds (0: none)."""
    options = TunnelOptions.create(
        user=server.user,
        auth=[PrivateKeyFile(key)],
        known_hosts=server.known_hosts_path,
        reconnect=FAST,
        keepalive_interval=alive,
        keepalive_count_max=count,
    )
    return GroupServer(server.host, server.port, options, name)


class GroupRecorder(GroupObserver):
    """Every event of a group, in order."""

    def __init__(self) -> None:
        self.moves: list[tuple[str | None, str | None]] = []
        self.roles: list[tuple[str, str]] = []
        self.readiness: list[bool] = []

    def server_changed(self, server: GroupServerStatus) -> None:
        self.roles.append((server.name, server.role))

    def serving_changed(self, previous: str | None, serving: str | None) -> None:
        self.moves.append((previous, serving))

    def ready_changed(self, ready: bool) -> None:
        self.readiness.append(ready)
