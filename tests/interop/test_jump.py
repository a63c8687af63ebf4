"""
The native ProxyJump (``proxy_jump=``, ``-J``): rtunnel logs on to a real jump sshd itself,
opens a ``direct-tcpip`` channel to the server under test (the bundled server and a real
sshd) and runs that SSH connection over it; no ``ssh`` binary is run. Then the ways it
fails: jump host unreachable, its host key unknown, its authentication refused, and a jump
host that does not forward.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from command_support import ALLOCATED, STOP_WITHIN, RTunnelProcess, _clean_env, exchange
from e2e_support import Server, _echo_once
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from rtunnel import (
    AuthenticationError,
    ConnectError,
    HostKeyError,
    ReverseTunnel,
    SpecError,
    TunnelObserver,
    TunnelOptions,
)
from rtunnel.client.reach.jump import JumpHost, jump_hosts
from rtunnel.testing._openssh import OpenSSHServer


def _public_key(key: Path) -> str:
    return key.with_name(key.name + ".pub").read_text().strip()


def _jump(tmp_path: Path, name: str, sshd: str, keys: list[str], *config: str) -> OpenSSHServer:
    jump = OpenSSHServer(
        tmp_path / name, authorized_keys=keys, sshd_path=sshd, extra_config=list(config)
    )
    jump.start()
    return jump


def _known_hosts(tmp_path: Path, server: Server, *jumps: OpenSSHServer) -> Path:
    """One known_hosts file for the server and the jump hosts, as ``ssh -J`` reads one."""
    path = tmp_path / "known_hosts_all"
    lines = [server.known_hosts.read_text()]
    lines += [jump.known_hosts_path.read_text() for jump in jumps]
    path.write_text("".join(lines))
    return path


async def _sessions_gone(jump: OpenSSHServer, within: float = 10.0) -> bool:
    """Whether the jump sshd's sessions have all ended (polled: it reaps them itself)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not jump.sshd_session_pids():
            return True
        await deferLater(reactor, 0.1, lambda: None)
    return False


def _direct_tcpip_logged(jump: OpenSSHServer, port: int) -> bool:
    # sshd's words for the direct-tcpip open it served (serverloop.c).
    return f"to 127.0.0.1 port {port}" in jump.log_text()


def test_jump_hosts_take_a_hop_a_spec_or_a_list() -> None:
    hop = JumpHost("j", 2)
    assert jump_hosts(None) == jump_hosts("none") == ()
    assert jump_hosts(hop) == (hop,)
    assert jump_hosts("alice@a:2200,ssh://bob@[::1]:23,c") == (
        JumpHost("a", 2200, "alice"),
        JumpHost("::1", 23, "bob"),
        JumpHost("c", 22, None),
    )
    assert jump_hosts([hop, "x"]) == (hop, JumpHost("x"))
    with pytest.raises(SpecError, match="ProxyJump"):
        jump_hosts("a,,b")
    with pytest.raises(SpecError, match="port"):
        JumpHost("j", 0)


def test_proxy_jump_excludes_the_other_ways_of_connecting() -> None:
    for kw in (
        {"proxy": "socks5://p"},
        {"proxy_command": "nc %h %p"},
        {"local_host": "127.0.0.2"},
        {"local_port": 2000},
    ):
        with pytest.raises(SpecError, match="proxy_jump"):
            ReverseTunnel(reactor, "h", options=TunnelOptions.create(proxy_jump="j", **kw))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="ProxyJump"):
        ReverseTunnel(reactor, "h", options=TunnelOptions.create(proxy_jump="@j"))
    assert (
        ReverseTunnel(
            reactor, "h", options=TunnelOptions.create(proxy_jump="none")
        ).options.reach.proxy_jump
        == ()
    )


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_the_tunnel_runs_through_a_native_jump_host(
    server: Server,
    tmp_path: Path,
    openssh_sshd: str,
    threaded_echo_port: int,
) -> None:
    jump = _jump(tmp_path, "jump", openssh_sshd, [_public_key(server.key)])
    try:
        tunnel = server.tunnel(
            known_hosts=_known_hosts(tmp_path, server, jump),
            proxy_jump=f"{jump.user}@127.0.0.1:{jump.port}",
        )
        statuses: list[str] = []

        class Progress(TunnelObserver):
            def ssh_status(self, message: str) -> None:
                statuses.append(message)

        tunnel.add_observer(Progress())
        await tunnel.logon()
        try:
            assert tunnel.local_address is None  # the jump host's socket, not ours
            # The jump host's progress reaches this tunnel's observers, named as its.
            where = f"jump host 127.0.0.1 port {jump.port}"
            assert f"{where}: Connecting to 127.0.0.1 port {jump.port}." in statuses
            assert any(s.startswith(f"{where}: Authenticated to") for s in statuses), statuses
            assert f"Connecting to {server.host} port {server.port} through {where}." in statuses
            forward = await tunnel.request_forwarding(
                "127.0.0.1", 0, "127.0.0.1", threaded_echo_port
            )
            # Several windows' worth both ways: flow control on both channels.
            payload = bytes(range(256)) * 24 * 1024
            assert await deferToThread(_echo_once, forward.port, payload) == payload
        finally:
            await tunnel.logoff()
        assert _direct_tcpip_logged(jump, server.port), jump.log_tail()
        # Logging off the server logged off the jump host too.
        assert await _sessions_gone(jump), jump.sshd_session_pids()
    finally:
        jump.stop()


@pytest.mark.openssh
@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_two_hops_nest_and_a_hop_can_have_its_own_known_hosts(
    server: Server,
    tmp_path: Path,
    openssh_sshd: str,
    threaded_echo_port: int,
) -> None:
    first = _jump(tmp_path, "first", openssh_sshd, [_public_key(server.key)])
    second = _jump(tmp_path, "second", openssh_sshd, [_public_key(server.key)])
    try:
        tunnel = server.tunnel(
            proxy_jump=[
                JumpHost("127.0.0.1", first.port, first.user, known_hosts=first.known_hosts_path),
                JumpHost(
                    "127.0.0.1", second.port, second.user, known_hosts=second.known_hosts_path
                ),
            ]
        )
        await tunnel.logon()
        try:
            forward = await tunnel.request_forwarding(
                "127.0.0.1", 0, "127.0.0.1", threaded_echo_port
            )
            payload = b"two hops " * 100_000
            assert await deferToThread(_echo_once, forward.port, payload) == payload
        finally:
            await tunnel.logoff()
        # The first hop connected to the second, the second to the server.
        assert _direct_tcpip_logged(first, second.port), first.log_tail()
        assert _direct_tcpip_logged(second, server.port), second.log_tail()
        assert await _sessions_gone(second)
        assert await _sessions_gone(first)
    finally:
        second.stop()
        first.stop()


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_an_unreachable_jump_host_is_a_connect_error_naming_it(server: Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused_tcp_port = s.getsockname()[1]
    tunnel = server.tunnel(proxy_jump=JumpHost("127.0.0.1", unused_tcp_port))
    with pytest.raises(ConnectError) as info:
        await tunnel.logon()
    assert str(info.value) == (
        f"jump host 127.0.0.1 port {unused_tcp_port}: connect to host 127.0.0.1 port "
        f"{unused_tcp_port}: Connection refused"
    )
    assert not tunnel.connected


@pytest.mark.openssh
@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_jump_hosts_refusals_are_typed_errors_naming_it(
    server: Server, tmp_path: Path, openssh_sshd: str, openssh_rsa_key: Path
) -> None:
    # Only another key is authorized at the jump host: authentication is refused.
    jump = _jump(tmp_path, "jump", openssh_sshd, [_public_key(openssh_rsa_key)])
    where = f"jump host 127.0.0.1 port {jump.port}"
    try:
        tunnel = server.tunnel(
            known_hosts=_known_hosts(tmp_path, server, jump),
            proxy_jump=JumpHost("127.0.0.1", jump.port, jump.user),
        )
        with pytest.raises(AuthenticationError) as refused:
            await tunnel.logon()
        assert str(refused.value).startswith(f"{where}: "), refused.value
        # The jump host's key is not in the tunnel's known_hosts (only the server's is).
        tunnel = server.tunnel(proxy_jump=JumpHost("127.0.0.1", jump.port, jump.user))
        with pytest.raises(HostKeyError) as unknown:
            await tunnel.logon()
        assert str(unknown.value).startswith(f"{where}: "), unknown.value
        assert f"[127.0.0.1]:{jump.port}" in str(unknown.value)
    finally:
        jump.stop()


@pytest.mark.openssh
@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_jump_host_that_does_not_forward_is_a_connect_error_quoting_it(
    server: Server, tmp_path: Path, openssh_sshd: str
) -> None:
    jump = _jump(tmp_path, "jump", openssh_sshd, [_public_key(server.key)], "AllowTcpForwarding no")
    try:
        tunnel = server.tunnel(
            known_hosts=_known_hosts(tmp_path, server, jump),
            proxy_jump=JumpHost("127.0.0.1", jump.port, jump.user),
        )
        with pytest.raises(ConnectError) as info:
            await tunnel.logon()
        assert str(info.value) == (
            f"jump host 127.0.0.1 port {jump.port}: cannot reach {server.host} port "
            f"{server.port} through it: open failed: administratively prohibited: open failed"
        )
        assert not tunnel.connected
        # The jump host was logged off.
        assert await _sessions_gone(jump), jump.sshd_session_pids()
    finally:
        jump.stop()


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_the_command_line_j_goes_through_the_jump_host_natively(
    server: Server, tmp_path: Path, openssh_sshd: str, threaded_echo_port: int
) -> None:
    """``rtunnel -J user@127.0.0.1:PORT``: the same -i key and known_hosts for the jump,
    as ssh; the PATH has no ssh in it."""
    jump = _jump(tmp_path, "jump", openssh_sshd, [_public_key(server.key)])
    child = RTunnelProcess()
    try:
        env = _clean_env(tmp_path)
        env["PATH"] = str(tmp_path / "no-ssh-here")
        argv = [
            *[sys.executable, "-m", "rtunnel.cli", "-N", "-o", "BatchMode=yes"],
            *["-o", f"UserKnownHostsFile={_known_hosts(tmp_path, server, jump)}"],
            *["-i", str(server.key), "-p", str(server.port)],
            *["-J", f"{jump.user}@127.0.0.1:{jump.port}"],
            *["-R", f"0:127.0.0.1:{threaded_echo_port}"],
            f"{server.user}@{server.host}",
        ]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            child, argv[0], argv, env=env, path=str(tmp_path)
        )
        port = int((await child.wait_for(ALLOCATED.format(threaded_echo_port))).group(1))
        assert await exchange(port, b"via the native jump") == b"via the native jump"
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None), child.stderr
        assert _direct_tcpip_logged(jump, server.port), jump.log_tail()
    finally:
        if child.running:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await child.ended
        jump.stop()


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_logoff_during_the_jump_logon_abandons_it_and_closes_the_jump_connection(
    server: Server,
) -> None:
    # A "jump host" that accepts and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        tunnel = server.tunnel(proxy_jump=JumpHost("127.0.0.1", silent.getsockname()[1]))
        logon = tunnel.logon()
        accepted, _ = await deferToThread(silent.accept)
        with accepted:
            await tunnel.logoff()
            with pytest.raises(ConnectError, match="abandoned") as info:
                await logon
            assert f"Logon to {server.host} port {server.port} abandoned" in str(info.value)
            accepted.settimeout(10)
            # The jump connection was dropped (reset or closed), not left open: no
            # TimeoutError here.
            with contextlib.suppress(ConnectionResetError):
                while await deferToThread(accepted.recv, 4096):
                    pass
        assert not tunnel.connected
