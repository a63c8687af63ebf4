"""
OpenSSH's ``ProxyCommand`` and ``ProxyJump`` (``-J``): token expansion and the jump
command as plain functions, then the SSH connection running over a real ``ssh -W``
through a real sshd (the jump host) to the server under test, and the failures a command
can have.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import Server, _echo_once, _jump_command
from twisted.internet.threads import deferToThread

from rtunnel import ConnectionLostError, JumpHost, ReverseTunnel, SpecError, TunnelOptions
from rtunnel._core.syntax import Destination, parse_proxy_jump
from rtunnel.cli import CommandLineExit, parse_command_line
from rtunnel.client.reach._proxycommand import expand_proxy_command
from rtunnel.openssh.options import parse_option
from rtunnel.testing._openssh import OpenSSHServer


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("nc %h %p", "nc gw.example 2222"),
        ("ssh -W [%h]:%p -l %r jump", "ssh -W [gw.example]:2222 -l alice jump"),
        ("echo %n 100%%", "echo gw 100%"),
        ("plain", "plain"),
    ],
)
def test_tokens_are_expanded_as_openssh_does(template: str, expected: str) -> None:
    assert (
        expand_proxy_command(
            template, host="gw.example", port=2222, user="alice", original_host="gw"
        )
        == expected
    )


@pytest.mark.parametrize(("template", "named"), [("nc %x %p", "%x"), ("nc %h 1%", "lone %")])
def test_unknown_tokens_are_refused(template: str, named: str) -> None:
    with pytest.raises(SpecError, match=named):
        expand_proxy_command(template, host="h", port=22, user="u")


@pytest.mark.parametrize(
    ("spec", "hops"),
    [
        ("jump", [Destination(None, "jump", None)]),
        ("alice@jump:2222", [Destination("alice", "jump", 2222)]),
        ("a,bob@b:23", [Destination(None, "a", None), Destination("bob", "b", 23)]),
        ("ssh://carol@[::1]:2200", [Destination("carol", "::1", 2200)]),
        ("[::1]", [Destination(None, "::1", None)]),
        ("us$er@jump", [Destination("us$er", "jump", None)]),
    ],
)
def test_proxy_jump_is_a_list_of_hops_first_hop_first(spec: str, hops: list[Destination]) -> None:
    assert parse_proxy_jump(spec) == hops


@pytest.mark.parametrize("spec", ["", "a,,b", "@jump", "jump:0", "jump:x", "[::1", "a,:22"])
def test_bad_jump_specs_are_refused(spec: str) -> None:
    with pytest.raises(SpecError, match="ProxyJump"):
        parse_proxy_jump(spec)
    with pytest.raises(CommandLineExit, match=r"(?i)proxyjump"):
        parse_command_line(["-J", spec, "-R", "0:127.0.0.1:80", "dest"])


def test_the_command_line_takes_j_and_proxycommand_first_one_wins() -> None:
    forward = ["-R", "0:127.0.0.1:80"]
    options = parse_command_line(["-J", "u@j:2", *forward, "dest"]).options.tunnel
    assert (options.get("proxy_jump"), options.get("proxy_command")) == (
        (JumpHost("j", 2, "u"),),
        None,
    )
    # ssh 9.2 refuses -J after -o ProxyCommand (ssh.c, case 'J'); the same test against
    # the real ssh: test_command_ssh_config.py.
    with pytest.raises(CommandLineExit, match="Cannot specify -J with ProxyCommand"):
        parse_command_line(["-o", "ProxyCommand=nc %h %p", "-J", "j", *forward, "dest"])
    options = parse_command_line(
        ["-J", "j", "-o", "ProxyCommand=nc %h %p", *forward, "dest"]
    ).options.tunnel
    assert (options.get("proxy_jump"), options.get("proxy_command")) == ((JumpHost("j"),), None)
    assert parse_option("ProxyCommand none") == ("ProxyCommand", "none")
    with pytest.raises(CommandLineExit, match="Only a single -J"):
        parse_command_line(["-J", "a", "-J", "b", *forward, "dest"])
    with pytest.raises(CommandLineExit, match="unknown token %q"):
        parse_command_line(["-o", "ProxyCommand=nc %q", *forward, "dest"])


def test_proxy_command_excludes_the_other_ways_of_connecting() -> None:
    from twisted.internet import reactor

    with pytest.raises(SpecError, match="not both"):
        ReverseTunnel(
            reactor, "h", options=TunnelOptions.create(proxy="socks5://p", proxy_command="nc %h %p")
        )
    with pytest.raises(SpecError, match="local_host"):
        ReverseTunnel(
            reactor,
            "h",
            options=TunnelOptions.create(local_host="127.0.0.2", proxy_command="nc %h %p"),
        )
    with pytest.raises(SpecError, match="unknown token"):
        ReverseTunnel(reactor, "h", options=TunnelOptions.create(proxy_command="nc %z"))


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_the_connection_runs_over_ssh_w_through_a_real_jump_host(
    server: Server,
    tmp_path: Path,
    openssh_sshd: str,
    openssh_client_key: Path,
    threaded_echo_port: int,
) -> None:
    pub = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text().strip()
    jump = OpenSSHServer(tmp_path / "jump", authorized_keys=[pub], sshd_path=openssh_sshd)
    jump.start()
    try:
        tunnel = server.tunnel(proxy_command=_jump_command(jump, openssh_client_key))
        await tunnel.logon()
        try:
            assert tunnel.local_address is None  # no socket of ours
            forward = await tunnel.request_forwarding(
                "127.0.0.1", 0, "127.0.0.1", threaded_echo_port
            )
            payload = b"through the jump host " * 5000
            assert await deferToThread(_echo_once, forward.port, payload) == payload
        finally:
            await tunnel.logoff()
        # The jump host opened a direct-tcpip channel to the server under test.
        assert f"to {server.host} port {server.port}" in jump.log_text()
    finally:
        jump.stop()


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_command_that_fails_is_a_clear_error(server: Server) -> None:
    # Run as "exec COMMAND", as ssh runs it: the shell becomes the command.
    tunnel = server.tunnel(proxy_command="sh -c 'echo no route to %h >&2; exit 3'")
    with pytest.raises(ConnectionLostError, match="exited with status 3") as info:
        await tunnel.logon()
    assert f"sh -c 'echo no route to {server.host} >&2; exit 3'" in str(info.value)
    tunnel = server.tunnel(proxy_command="/nonexistent/proxy-helper %h %p")
    with pytest.raises(ConnectionLostError, match="exited with status 127"):
        await tunnel.logon()
    # A command that ends cleanly before the handshake: the server's side closed.
    tunnel = server.tunnel(proxy_command="true")
    with pytest.raises(ConnectionLostError, match="closed by remote host"):
        await tunnel.logon()
