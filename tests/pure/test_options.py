"""
The options model (:mod:`rtunnel.options`): each setting in one group, checked once with
the words the tunnel used to say, held as the library type, derived with ``replace``.
Plain functions: no reactor, no network.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key

from rtunnel import (
    AlgorithmOptions,
    AuthOptions,
    ChannelOptions,
    HostKeyOptions,
    JumpHost,
    Password,
    Proxy,
    ReachOptions,
    ReconnectPolicy,
    SpecError,
    StayingUpOptions,
    TunnelOptions,
    TunnelSettings,
)
from rtunnel.client.hostkeys.verify import DEFAULT_GLOBAL_KNOWN_HOSTS
from rtunnel.client.transport import _algorithms
from rtunnel.client.transport._sockopts import TCPOptions
from rtunnel.options import MAX_MAX_PACKET

GROUPS = {
    "authentication": AuthOptions,
    "host_keys": HostKeyOptions,
    "algorithms": AlgorithmOptions,
    "reach": ReachOptions,
    "channels": ChannelOptions,
    "staying_up": StayingUpOptions,
}

ED25519 = Key(ed25519.Ed25519PrivateKey.generate()).public()


def test_the_groups_are_the_ones_tunnel_options_holds() -> None:
    hints = typing.get_type_hints(TunnelOptions)
    assert {f.name: hints[f.name] for f in dataclasses.fields(TunnelOptions)} == {
        **GROUPS,
        "log_level": int,
    }


def test_every_setting_is_one_field_of_one_group() -> None:
    """TunnelSettings (the flat names create() takes) and the groups' fields agree."""
    owners: dict[str, list[str]] = {}
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(group)
    twice = {name: where for name, where in owners.items() if len(where) > 1}
    assert twice == {}
    assert set(TunnelSettings.__annotations__) == {*owners, "log_level"}
    # No group has more than about ten fields (issue #16), and neither has the tunnel.
    assert all(len(dataclasses.fields(cls)) <= 13 for cls in GROUPS.values())


def test_defaults_are_the_tunnels_old_defaults() -> None:
    options = TunnelOptions()
    assert options.authentication.user is None
    assert options.authentication.preferred_authentications == (
        "gssapi-with-mic",
        "publickey",
        "keyboard-interactive",
        "password",
    )
    assert options.authentication.auth_timeout == 120.0
    assert options.host_keys.known_hosts == (Path("~/.ssh/known_hosts").expanduser(),)
    assert options.host_keys.global_known_hosts == DEFAULT_GLOBAL_KNOWN_HOSTS
    assert options.host_keys.host_key_policy == "strict"
    assert options.algorithms.ciphers == _algorithms.DEFAULT_CIPHERS
    assert options.algorithms.order_host_key_algorithms is True
    assert options.algorithms.server_version_pattern == ("*SSH-1.99-*", "*SSH-2.0-*")
    assert options.reach.connect_timeout == 30.0
    assert options.reach.tcp_options == TCPOptions()
    assert (options.channels.window_size, options.channels.max_packet) == (2 << 20, 32 << 10)
    assert options.channels.permit_remote_open is None
    assert options.staying_up.reconnect == ReconnectPolicy()
    assert (options.staying_up.keepalive_interval, options.staying_up.keepalive_count_max) == (
        30.0,
        5,
    )
    assert options.log_level == 1


def test_create_puts_each_setting_in_its_group_in_the_library_type(tmp_path: Path) -> None:
    options = TunnelOptions.create(
        user="alice",
        auth=[Password("pw")],
        known_hosts=str(tmp_path / "kh"),
        accepted_host_keys=[ED25519],
        ciphers="+aes128-cbc",
        host_key_algorithms="ssh-ed25519",
        proxy="socks5://user:pw@proxy:1081",
        proxy_exceptions="localhost; *.internal",
        permit_remote_open="localhost:80 [::1]:*",
        max_transfer_rate=1000,
        keepalive_interval=5,
        log_level=2,
    )
    assert options.authentication.user == "alice"
    assert options.authentication.auth == (Password("pw"),)
    assert options.host_keys.known_hosts == (tmp_path / "kh",)
    assert options.host_keys.accepted_host_keys == (ED25519.blob(),)
    assert options.algorithms.ciphers == (*_algorithms.DEFAULT_CIPHERS, "aes128-cbc")
    assert options.algorithms.host_key_algorithms == ("ssh-ed25519",)
    # Given outright: used as given, not reordered after known_hosts.
    assert options.algorithms.order_host_key_algorithms is False
    assert options.reach.proxy == Proxy("socks5", "proxy", 1081, "user", "pw")
    assert options.reach.proxy_exceptions == ("localhost", "*.internal")
    assert options.channels.permit_remote_open == (("localhost", "80"), ("::1", "*"))
    assert options.channels.max_transfer_rate == 1000
    assert options.staying_up.keepalive_interval == 5
    assert options.log_level == 2
    # What was not given keeps its default.
    assert options.reach.connect_timeout == 30.0
    assert options.channels.window_size == 2 << 20


def test_jump_hosts_and_proxy_words() -> None:
    options = TunnelOptions.create(proxy_jump="bob@j1:2222,j2")
    assert options.reach.proxy_jump == (JumpHost("j1", 2222, "bob"), JumpHost("j2"))
    assert TunnelOptions.create(proxy_jump="none").reach.proxy_jump == ()
    assert TunnelOptions.create(proxy="auto").reach.proxy == "auto"
    assert TunnelOptions.create(proxy_command="none").reach.proxy_command is None
    assert TunnelOptions.create(permit_remote_open="none").channels.permit_remote_open == ()
    assert TunnelOptions.create(permit_remote_open="any").channels.permit_remote_open is None


def test_settings_round_trip_and_replace_keeps_the_resolved_values() -> None:
    """What the groups hold goes back through create() and replace() unchanged: a
    resolved value is not read differently the second time."""
    options = TunnelOptions.create(
        ciphers="-chacha20-poly1305@openssh.com",
        host_key_algorithms="+ssh-rsa",
        pubkey_accepted_algorithms="^rsa-sha2-256",
        accepted_fingerprints=["SHA256:x", " "],
        proxy_jump=["a", JumpHost("b", 2)],
        permit_remote_open=["h:1"],
        server_version_pattern="*OpenSSH*, *dropbear*",
        global_known_hosts=[],
    )
    assert TunnelOptions.create(**options.settings()) == options
    for group in GROUPS:
        value = getattr(options, group)
        assert dataclasses.replace(value) == value
    assert options.algorithms.order_host_key_algorithms is True
    assert options.host_keys.accepted_fingerprints == ("SHA256:x",)
    assert options.algorithms.server_version_pattern == ("*OpenSSH*", "*dropbear*")
    assert options.host_keys.global_known_hosts == ()


def test_create_from_a_base_changes_only_what_is_given() -> None:
    base = TunnelOptions.create(user="alice", host_key_algorithms="ssh-ed25519")
    derived = TunnelOptions.create(base=base, keepalive_interval=7, ciphers=["aes128-ctr"])
    assert derived.authentication == base.authentication
    assert derived.staying_up.keepalive_interval == 7
    assert derived.algorithms.ciphers == ("aes128-ctr",)
    assert derived.algorithms.host_key_algorithms == ("ssh-ed25519",)
    assert derived.algorithms.order_host_key_algorithms is False
    # A new list is judged by the form it is given in, not by the base's.
    again = TunnelOptions.create(base=base, host_key_algorithms="+ssh-rsa")
    assert again.algorithms.order_host_key_algorithms is True


def test_an_unknown_setting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown settings: colour, flavour"):
        TunnelOptions.create(colour="red", flavour=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"host_key_policy": "trust-me"}, "Unknown host key policy 'trust-me'"),
        ({"max_packet": 512}, "Need 1024 <= max_packet <= window_size < 2^32."),
        ({"window_size": 1 << 32}, "Need 1024 <= max_packet <= window_size < 2^32."),
        (
            {"max_packet": 256 * 1024, "window_size": 1 << 20},
            f"max_packet 262144 is too large: at most {MAX_MAX_PACKET}.",
        ),
        ({"connect_timeout": 0}, "connect_timeout must be a positive number of seconds"),
        ({"auth_timeout": -1}, "auth_timeout must be a positive number of seconds"),
        ({"channel_idle_timeout": -1}, "channel_idle_timeout and logoff_timeout must not be"),
        ({"logoff_timeout": -1}, "channel_idle_timeout and logoff_timeout must not be"),
        ({"kex_timeout": 0}, "kex_timeout must be a positive number of seconds, or None."),
        ({"log_level": 7}, "Bad log_level 7: give 0, 1, 2 or 3."),
        ({"local_port": 70000}, "Bad local_port 70000: give 0-65535 (0: any)."),
        ({"proxy": "ftp://p"}, "ftp"),
        (
            {"proxy": "socks5://p", "proxy_command": "nc %h %p"},
            "Give proxy or proxy_command, not both.",
        ),
        (
            {"local_host": "127.0.0.2", "proxy_command": "nc %h %p"},
            "local_host and local_port do not apply with proxy_command",
        ),
        ({"proxy_command": "nc %z"}, "ProxyCommand: unknown token %z"),
        ({"proxy_jump": "@j"}, ""),
        (
            {"proxy_jump": "j", "proxy": "socks5://p"},
            "Give proxy_jump, proxy or proxy_command, not several.",
        ),
        (
            {"proxy_jump": "j", "local_port": 5},
            "local_host and local_port do not apply with proxy_jump",
        ),
        ({"max_transfer_rate": -1}, "Bad max_transfer_rate -1: give bytes per second"),
        ({"permit_remote_open": "h"}, "Bad PermitRemoteOpen entry 'h'"),
        ({"ciphers": "nope"}, "Unsupported cipher algorithm 'nope'"),
        ({"macs": ""}, "Empty mac algorithm list."),
        ({"rekey_bytes": -1}, "rekey_bytes must be >= 0 and rekey_seconds > 0 (or None)."),
        ({"preferred_dh_group_bits": 512}, "Preferred DH group size 512 bits"),
        ({"client_version": "SSH-1.5-x"}, "Client version string 'SSH-1.5-x' must start"),
        ({"server_version_pattern": " , "}, "Empty server version pattern"),
        ({"keepalive_interval": -1}, "Keepalive interval and count must not be negative."),
        ({"preferred_authentications": ["hostbased"]}, "Unknown authentication method(s)"),
        ({"number_of_password_prompts": -1}, "number_of_password_prompts must be 0 or more."),
        ({"pubkey_accepted_algorithms": "rsa-sha2-1024"}, "rsa-sha2-1024"),
        ({"fingerprint_hash": "sha512"}, "Unknown fingerprint hash 'sha512'"),
        ({"accepted_host_keys": ["not a key"]}, "Not a public key"),
    ],
)
def test_each_value_is_checked_where_its_group_is_made(
    settings: TunnelSettings, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        TunnelOptions.create(**settings)
    assert message in caught.value.message


def test_a_jump_hosts_options_come_from_the_tunnels() -> None:
    """What ssh -J carries over to the jump host (credentials, known_hosts, algorithms,
    timeouts) does; what belongs to this server or its channels does not."""
    options = TunnelOptions.create(
        user="alice",
        auth=[Password("pw")],
        known_hosts="/kh",
        accepted_fingerprints=["SHA256:pinned"],
        accepted_host_keys=[ED25519],
        accepted_ca_keys=[ED25519],
        ciphers=["aes128-ctr"],
        connect_timeout=9,
        reconnect=ReconnectPolicy(mode="always"),
        channel_idle_timeout=60,
        absolute_timeout=True,
        max_transfer_rate=100,
        keepalive_interval=3,
        proxy_jump="j1,j2,j3",
        log_level=2,
    )
    *before, hop = options.reach.proxy_jump
    jump = options.for_jump_host(hop, before)
    assert jump.authentication.user is None  # ssh -J host: the local user
    assert jump.authentication.auth == (Password("pw"),)
    assert jump.host_keys.known_hosts == (Path("/kh"),)
    assert jump.host_keys.accepted_fingerprints == ()
    assert jump.host_keys.accepted_host_keys == ()
    assert jump.host_keys.accepted_ca_keys == ()
    assert jump.algorithms == options.algorithms
    assert jump.reach.connect_timeout == 9
    assert jump.reach.proxy_jump == (JumpHost("j1"), JumpHost("j2"))
    assert jump.staying_up.reconnect == ReconnectPolicy.off()
    assert jump.staying_up.keepalive_interval == 3
    assert (jump.channels.channel_idle_timeout, jump.channels.absolute_timeout) == (0.0, False)
    assert jump.channels.max_transfer_rate == 0
    assert jump.log_level == 2

    own = JumpHost(
        "j", 22, "bob", auth=[Password("other")], known_hosts="~/j", host_key_policy="accept-new"
    )
    jump = options.for_jump_host(own)
    assert jump.authentication.user == "bob"
    assert jump.authentication.auth == (Password("other"),)
    assert jump.host_keys.known_hosts == (Path("~/j").expanduser(),)
    assert jump.host_keys.host_key_policy == "accept-new"
    assert jump.reach.proxy_jump == ()
