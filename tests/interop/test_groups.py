"""
Tunnel groups (issue #15) against two and three real sshds: a session killed, a session
frozen (SIGSTOP: only the keepalive notices), a server stopped outright and started
again. ``failover`` moves the forwards to the next server that is logged on and, when
asked, back after the healthy delay; ``all`` keeps serving on the others. The pure
decisions: tests/pure/test_group_states.py; the command and the configuration file:
tests/interop/test_group_command.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest_twisted
from group_support import GroupRecorder, group_server, sshds
from sockets import TargetServer, echo, eventually, exchange, in_thread
from twisted.internet import reactor

from rtunnel import ForwardState
from rtunnel.group import GroupForward, TunnelGroup

#: Seconds for a logon and a forward on a loaded machine.
UP_WITHIN = 20.0


def ports(group: TunnelGroup) -> list[int | None]:
    """The port the first forward is active on, per server (None: not held or not active)."""
    found: list[int | None] = []
    for server in group.servers():
        forward = server.forwards[0] if server.forwards else None
        active = forward is not None and forward.state is ForwardState.ACTIVE
        found.append(forward.port if active and forward is not None else None)
    return found


async def through(port: int | None, payload: bytes = b"group") -> bool:
    if port is None:
        return False
    try:
        return bool(await in_thread(exchange, port, payload, 5) == payload)
    except OSError:
        return False


@pytest_twisted.ensureDeferred
async def test_failover_moves_on_kill_stop_and_stays_without_failback(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> None:
    target = TargetServer(echo)
    with sshds(tmp_path, openssh_sshd, openssh_client_key, 3) as servers:
        group = TunnelGroup(
            reactor,
            [group_server(s, openssh_client_key, f"s{n}") for n, s in enumerate(servers)],
            [GroupForward("127.0.0.1", 0, "127.0.0.1", target.port)],
        )
        watcher = GroupRecorder()
        group.add_observer(watcher)
        try:
            await group.start().addTimeout(UP_WITHIN, reactor)
            # Every server logged on (hot standby); only the first holds the forward.
            await eventually(lambda: all(t.connected for t in group.tunnels), UP_WITHIN)
            assert group.serving == "s0" and group.ready
            first = ports(group)
            assert first[0] is not None and first[1:] == [None, None]
            assert [len(t.forwards) for t in group.tunnels] == [1, 0, 0]
            assert [s.role for s in group.servers()] == ["serving", "standby", "standby"]
            assert await through(first[0])

            # The serving session is killed: the forward moves to s1 (the next one up).
            servers[0].kill_sessions()
            await eventually(lambda: ports(group)[1] is not None, UP_WITHIN)
            assert group.serving == "s1"
            assert await through(ports(group)[1])
            # s0 comes back as a standby, holding nothing (its reconnect forgot it).
            await eventually(lambda: group.tunnels[0].connected, UP_WITHIN)
            await eventually(lambda: group.servers()[0].role == "standby", 5)
            assert group.tunnels[0].forwards == [] and group.serving == "s1"

            # s1 stopped outright: back to s0, the first one up (not s2).
            await in_thread(servers[1].stop)
            await eventually(lambda: ports(group)[0] is not None, UP_WITHIN)
            assert group.serving == "s0" and ports(group)[2] is None
            assert await through(ports(group)[0])
            assert watcher.moves == [(None, "s0"), ("s0", "s1"), ("s1", "s0")]
            # s1 is down and stays so: shown, not served.
            assert group.servers()[1].role == "down"
            await in_thread(servers[1].start)
            await eventually(lambda: group.servers()[1].role == "standby", UP_WITHIN)
            assert group.serving == "s0" and len(watcher.moves) == 3
        finally:
            await group.stop()
            target.close()
    assert not any(t.connected for t in group.tunnels)


@pytest_twisted.ensureDeferred
async def test_failover_on_keepalive_then_failback_after_the_healthy_delay(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> None:
    target = TargetServer(echo)
    with sshds(tmp_path, openssh_sshd, openssh_client_key, 2) as servers:
        group = TunnelGroup(
            reactor,
            [
                group_server(s, openssh_client_key, f"s{n}", alive=1, count=2)
                for n, s in enumerate(servers)
            ],
            [GroupForward("127.0.0.1", 0, "127.0.0.1", target.port)],
            failback_after=2.0,
        )
        watcher = GroupRecorder()
        group.add_observer(watcher)
        try:
            await group.start().addTimeout(UP_WITHIN, reactor)
            await eventually(lambda: all(t.connected for t in group.tunnels), UP_WITHIN)
            before = ports(group)[0]
            assert await through(before)

            # SIGSTOP: nothing closes; only two unanswered keepalives (about 2-3 s) tell.
            frozen_at = time.monotonic()
            servers[0].freeze_sessions()
            await eventually(lambda: group.serving == "s1", 15)
            detected = time.monotonic() - frozen_at
            assert 1.0 <= detected <= 8.0, detected
            await eventually(lambda: ports(group)[1] is not None, UP_WITHIN)
            assert await through(ports(group)[1])

            # s0's listener still answers: its tunnel logs on again at once (the frozen
            # session keeps its port). After 2 s of health the forward moves back.
            await eventually(lambda: group.tunnels[0].connected, UP_WITHIN)
            back_from = time.monotonic()
            await eventually(lambda: group.serving == "s0", 15)
            waited = time.monotonic() - back_from
            assert 1.5 <= waited <= 6.0, waited
            await eventually(lambda: ports(group)[0] is not None, UP_WITHIN)
            assert await through(ports(group)[0])
            # Make before break: s1 let go of its forward once s0 held it.
            await eventually(lambda: group.tunnels[1].forwards == [], 10)
            assert watcher.moves == [(None, "s0"), ("s0", "s1"), ("s1", "s0")]
        finally:
            servers[0].thaw_sessions()
            await group.stop()
            target.close()


@pytest_twisted.ensureDeferred
async def test_all_keeps_serving_on_the_others_without_a_gap(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> None:
    target = TargetServer(echo)
    with sshds(tmp_path, openssh_sshd, openssh_client_key, 3) as servers:
        group = TunnelGroup(
            reactor,
            [group_server(s, openssh_client_key, f"s{n}") for n, s in enumerate(servers)],
            [
                GroupForward("127.0.0.1", 0, "127.0.0.1", target.port),
                GroupForward("localhost", 0, "127.0.0.1", target.port),
            ],
            mode="all",
        )
        watcher = GroupRecorder()
        group.add_observer(watcher)
        try:
            await group.start().addTimeout(UP_WITHIN, reactor)
            await eventually(lambda: None not in ports(group), UP_WITHIN)
            assert [len(t.forwards) for t in group.tunnels] == [2, 2, 2]
            assert group.serving_servers(0) == ["s0", "s1", "s2"]
            survivors = ports(group)[1:]

            # One stopped, one killed: every connection through the third gets through.
            await in_thread(servers[0].stop)
            servers[1].kill_sessions()
            tried = 0
            for _ in range(20):
                assert await through(survivors[1], b"no gap")
                tried += 1
            assert tried == 20 and group.ready
            assert False not in watcher.readiness  # never unready: s2 served throughout
            # s1 comes back by itself, its forwards again (new ports: 0 was asked).
            await eventually(lambda: ports(group)[1] is not None, UP_WITHIN)
            assert await through(ports(group)[1])
            assert group.servers()[0].role == "down"
            await in_thread(servers[0].start)
            await eventually(lambda: ports(group)[0] is not None, UP_WITHIN)
            assert await through(ports(group)[0])
            assert [s.role for s in group.servers()] == ["serving"] * 3
            assert watcher.moves == []
        finally:
            await group.stop()
            target.close()


@pytest_twisted.ensureDeferred
async def test_twistd_service_with_group_servers(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> None:
    # twistd rtunnel -o GroupServer=... -o GroupMode=failover: the same group, as a service.
    from rtunnel.service import Options, TunnelService

    target = TargetServer(echo)
    with sshds(tmp_path, openssh_sshd, openssh_client_key, 2) as servers:
        first, second = servers
        options = Options()
        options.parseOptions(
            [
                *["-i", str(openssh_client_key), "-p", str(first.port)],
                *["-o", f"UserKnownHostsFile={first.known_hosts_path} {second.known_hosts_path}"],
                *["-o", f"GroupServer={second.user}@{second.host}:{second.port}"],
                *["-o", "RetryInterval=1", "-R", f"0:127.0.0.1:{target.port}"],
                f"{first.user}@{first.host}",
            ]
        )
        failures: list[Exception] = []
        service = TunnelService(
            reactor, options.host, options.client_options, on_failure=failures.append
        )
        service.startService()
        try:
            await eventually(lambda: service._group is not None and service._group.ready, 20)
            group = service._group
            assert group is not None
            assert group.serving == f"{first.host}:{first.port}"
            assert await through(ports(group)[0])
            first.kill_sessions()
            await eventually(lambda: ports(group)[1] is not None, UP_WITHIN)
            assert group.serving == f"{second.host}:{second.port}"
            assert await through(ports(group)[1])
            assert failures == []
        finally:
            await service.stopService()
            target.close()
    assert not any(t.connected for t in group.tunnels)
