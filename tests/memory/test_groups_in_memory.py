"""
Tunnel groups (issue #15) in memory, on a clock: two bundled servers on one
:class:`~rtunnel.testing.MemoryPair` network (127.0.0.1 and 127.0.0.2), so that the
failback delay and the order of events are exact. Real sshds:
tests/interop/test_groups.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from group_support import GroupRecorder
from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo

from rtunnel import AlreadyConnectedError, PrivateKeyFile, ReconnectPolicy, TunnelOptions
from rtunnel.group import GroupForward, GroupServer, TunnelGroup
from rtunnel.testing import MemoryPair
from rtunnel.testing._keys import client_key
from rtunnel.testing.server import SSHTestServer

FAST = ReconnectPolicy(initial_delay=1.0, max_delay=1.0, jitter=0.0)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[MemoryPair, SSHTestServer, list[GroupServer]]]:
    pair = MemoryPair(tmp_path)
    second = SSHTestServer(pair.reactor, "127.0.0.2", 22)
    second.add_user(pair.user, authorized_keys=[client_key("ed25519").public()])
    pair.run(second.start())
    known = [pair.known_hosts, second.write_known_hosts(tmp_path / "known_hosts2")]
    servers = [
        GroupServer(
            host,
            22,
            TunnelOptions.create(
                user=pair.user,
                auth=[PrivateKeyFile(pair.client_key)],
                known_hosts=kh,
                reconnect=FAST,
            ),
            name,
        )
        for host, kh, name in (("127.0.0.1", known[0], "a"), ("127.0.0.2", known[1], "b"))
    ]
    try:
        yield pair, second, servers
    finally:
        pair.run(second.stop())
        pair.close()


def echo_through(pair: MemoryPair, host: str, port: int) -> bytes:
    connection = pair.connect(port, host)
    connection.write(b"ping")
    pair.flush()
    received = connection.received
    connection.close()
    pair.flush()
    return received


def forwarded_port(group: TunnelGroup, index: int) -> int | None:
    forward = group.servers()[index].forwards[0]
    return forward.port if forward is not None and group.servers()[index].active[0] else None


def test_failover_then_failback_exactly_after_the_healthy_delay(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
) -> None:
    pair, _second, servers = network
    group = TunnelGroup(
        pair.reactor,
        servers,
        [GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo))],
        failback_after=30.0,
    )
    watcher = GroupRecorder()
    group.add_observer(watcher)
    pair.run(group.start())
    assert group.serving == "a" and watcher.readiness == [True]
    assert [len(t.forwards) for t in group.tunnels] == [1, 0]
    port = forwarded_port(group, 0)
    assert port is not None and echo_through(pair, "127.0.0.1", port) == b"ping"

    pair.kill()  # a's session dies: b holds the forward within the same flush
    assert group.serving == "b"
    moved = forwarded_port(group, 1)
    assert moved is not None and echo_through(pair, "127.0.0.1", moved) == b"ping"
    assert group.tunnels[0].forwards == []  # forgotten, not asked for again

    pair.advance(1.0)  # a's reconnect (1 s) logs on: a standby, the forward stays on b
    assert group.tunnels[0].connected and group.role(0) == "standby"
    back_at = pair.reactor.seconds() + 30.0
    pair.advance(29.9)
    assert group.serving == "b"
    pair.advance(back_at - pair.reactor.seconds() + 0.01)
    assert group.serving == "a"
    # Make before break: a holds it, then b lets go.
    assert [len(t.forwards) for t in group.tunnels] == [1, 0]
    again = forwarded_port(group, 0)
    assert again is not None and echo_through(pair, "127.0.0.1", again) == b"ping"
    assert watcher.moves == [(None, "a"), ("a", "b"), ("b", "a")]
    # Unready only between the loss and b's forward; the failback keeps a serving.
    assert watcher.readiness == [True, False, True]
    pair.run(group.stop())
    assert group._failback is None
    assert not any(t.connected for t in group.tunnels)


def test_failback_off_stays_and_at_start_the_first_server_is_waited_for(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
) -> None:
    pair, _second, servers = network
    # a refuses connections at first: b serves only once a's first logon has failed.
    pair.refuse_connections()
    group = TunnelGroup(
        pair.reactor,
        servers,
        [GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo))],
    )
    watcher = GroupRecorder()
    group.add_observer(watcher)
    pair.run(group.start())
    assert group.serving == "b"
    pair.refuse_connections(False)
    pair.advance(5.0)
    assert group.tunnels[0].connected and group.serving == "b"  # no failback asked
    pair.advance(600.0)
    assert watcher.moves == [(None, "b")]
    assert [s.role for s in group.servers()] == ["standby", "serving"]
    pair.run(group.stop())


def test_all_holds_every_forward_everywhere_and_stays_ready(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
) -> None:
    pair, second, servers = network
    group = TunnelGroup(
        pair.reactor,
        servers,
        [
            GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo)),
            GroupForward("127.0.0.2", 0, factory=Factory.forProtocol(Echo)),
        ],
        mode="all",
    )
    watcher = GroupRecorder()
    group.add_observer(watcher)
    pair.run(group.start())
    pair.flush()
    with pytest.raises(AlreadyConnectedError):
        pair.run(group.start())
    assert [len(t.forwards) for t in group.tunnels] == [2, 2]
    assert [s.active for s in group.servers()] == [(True, True), (True, True)]
    pair.run(second.drop_connections("going away"))
    # b is down; a serves both forwards: still ready, never unready.
    assert group.ready and watcher.readiness == [True]
    assert group.role(1) == "down" and group.serving_servers(0) == ["a"]
    pair.advance(1.0)  # b reconnects by itself and asks for both again
    assert [s.active for s in group.servers()] == [(True, True), (True, True)]
    assert watcher.moves == [] and watcher.readiness == [True]
    pair.run(group.stop())


def test_start_fails_once_every_server_refuses_for_good(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
    tmp_path: Path,
) -> None:
    from rtunnel import AuthenticationError
    from rtunnel.testing import generate_client_key

    pair, _second, servers = network
    stranger = generate_client_key("ecdsa", tmp_path / "stranger")
    refused = [
        GroupServer(
            s.host,
            s.port,
            TunnelOptions.create(base=s.options, auth=[PrivateKeyFile(stranger)]),
            s.name,
        )
        for s in servers
    ]
    group = TunnelGroup(
        pair.reactor, refused, [GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo))]
    )
    with pytest.raises(AuthenticationError):
        pair.run(group.start())
    assert [s.role for s in group.servers()] == ["failed", "failed"]
    assert group.serving is None and not group.ready
    pair.run(group.stop())


def test_a_cancelled_start_then_stop(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
) -> None:
    pair, _second, servers = network
    pair.refuse_connections()
    group = TunnelGroup(
        pair.reactor,
        servers[:1],
        [GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo))],
    )
    starting = group.start()
    pair.advance(0.5)
    starting.cancel()
    starting.addErrback(lambda f: f.trap(Exception))
    pair.run(group.stop())
    assert not group.tunnels[0].connected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"servers": []}, "A tunnel group needs at least one server."),
        ({"mode": "round-robin"}, "Bad group mode: unknown group mode 'round-robin'"),
        ({"failback_after": -1.0}, "Bad failback delay -1.0: give 0 or more seconds."),
        ({"same": True}, "Two servers of the group have the same name: a, a."),
    ],
)
def test_bad_arguments_are_one_line(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
    kwargs: dict[str, object],
    message: str,
) -> None:
    from rtunnel import SpecError

    pair, _second, servers = network
    chosen = kwargs.pop("servers", servers)
    if kwargs.pop("same", False):
        chosen = [servers[0], servers[0]]
    with pytest.raises(SpecError) as caught:
        TunnelGroup(pair.reactor, chosen, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_without_retrying_the_first_logon_a_group_nobody_answers_stops(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
) -> None:
    from rtunnel import ConnectError

    pair, _second, servers = network
    pair.refuse_connections()
    pair.reactor.refusing.add(("127.0.0.2", 22))
    group = TunnelGroup(
        pair.reactor,
        servers,
        [GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo))],
        retry_first_logon=False,
    )
    with pytest.raises(ConnectError):
        pair.run(group.start())
    attempts = pair.connection_attempts
    pair.advance(60.0)
    # Stopped: nothing is retried any more.
    assert pair.connection_attempts == attempts == 1
    assert not any(t.connected for t in group.tunnels)


def test_without_retrying_the_first_logon_one_server_up_is_enough(
    network: tuple[MemoryPair, SSHTestServer, list[GroupServer]],
) -> None:
    pair, _second, servers = network
    pair.refuse_connections()  # a is down at start: b serves, a is retried
    group = TunnelGroup(
        pair.reactor,
        servers,
        [GroupForward("127.0.0.1", 0, factory=Factory.forProtocol(Echo))],
        retry_first_logon=False,
    )
    pair.run(group.start())
    assert group.serving == "b"
    pair.refuse_connections(False)
    pair.advance(3.0)
    assert group.tunnels[0].connected and group.role(0) == "standby"
    pair.run(group.stop())
