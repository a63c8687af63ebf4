"""
The one OpenSSH keyword table (:mod:`rtunnel.openssh.keywords`): every row is shown by
both help texts, sets a setting that exists, carries its value to the tunnel unchanged,
and no keyword is spelled anywhere else in the package.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rtunnel import ForwardPolicy, JumpHost, Proxy, TunnelOptions, TunnelSettings
from rtunnel._core.syntax import Destination
from rtunnel.cli import HELP
from rtunnel.client.auth._pubkey import DEFAULT_PUBKEY_ALGORITHMS
from rtunnel.client.transport._sockopts import TCPOptions
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forward_policy import PolicyFor
from rtunnel.openssh.keywords import KEYWORDS, TOPICS, Keyword, keyword_named
from rtunnel.openssh.options import SUPPORTED_OPTIONS, parse_keyword
from rtunnel.service import Options, tunnel_options

ROOT = Path(__file__).resolve().parents[2]
TWISTD_HELP = str(Options())

#: A value for each keyword, as a user would write it after ``Keyword=``.
EXAMPLES = {
    "HostName": "gw.example.com",
    "Port": "2222",
    "User": "alice",
    "BindAddress": "127.0.0.2",
    "ConnectTimeout": "1m",
    "ProxyCommand": "ssh -W %h:%p jump",
    "ProxyJump": "alice@jump:2222,hop",
    "Proxy": "socks5://bob:secret@proxy:1081",
    "ProxyExceptionsList": "localhost;*.internal",
    "TCPKeepAlive": "no",
    "RemoteForward": "8080 localhost:80",
    "ExitOnForwardFailure": "yes",
    "PermitRemoteOpen": "localhost:80 [::1]:*",
    "ChannelTimeout": "session=1m forwarded-tcpip=30s",
    "ForwardingLocalHost": "127.0.0.3",
    "MaxTransferRate": "512K",
    "ForwardPolicy": "8080 allow=10.0.0.0/8,::1 rate=5",
    "StrictHostKeyChecking": "accept-new",
    "UserKnownHostsFile": "/kh1 /kh2",
    "GlobalKnownHostsFile": "none",
    "FingerprintHash": "md5",
    "HashKnownHosts": "yes",
    "IdentityFile": "/id_test",
    "CertificateFile": "/id_test-cert.pub",
    "IdentityAgent": "/agent.sock",
    "IdentitiesOnly": "yes",
    "PreferredAuthentications": "password,publickey",
    "PubkeyAuthentication": "no",
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "NumberOfPasswordPrompts": "5",
    "PubkeyAcceptedAlgorithms": "+ssh-rsa",
    "GSSAPIAuthentication": "yes",
    "GSSAPIDelegateCredentials": "yes",
    "BatchMode": "yes",
    "Ciphers": "^aes256-gcm@openssh.com",
    "MACs": "-hmac-sha2-512*",
    "KexAlgorithms": "curve25519-sha256",
    "HostKeyAlgorithms": "+ssh-rsa",
    "RekeyLimit": "64M 10m",
    "Compression": "yes",
    "ServerAliveInterval": "15",
    "ServerAliveCountMax": "2",
    "AutoReconnect": "always",
    "MaxRetryCount": "7",
    "RetryInterval": "5",
    "LogLevel": "VERBOSE",
    "LogFormat": "JSON",
    "ControlSocket": "auto",
    "HttpListen": "9180",
    "GroupServer": "alice@gw2.example.com:2222",
    "GroupMode": "ALL",
    "FailbackAfter": "2m",
}

#: What each example must give the tunnel (or the command), typed.
EXPECTED: dict[str, dict[str, Any]] = {
    "BindAddress": {"local_host": "127.0.0.2"},
    "ConnectTimeout": {"connect_timeout": 60},
    "ProxyCommand": {"proxy_command": "ssh -W %h:%p jump"},
    "ProxyJump": {"proxy_jump": (JumpHost("jump", 2222, "alice"), JumpHost("hop"))},
    "Proxy": {"proxy": Proxy("socks5", "proxy", 1081, "bob", "secret")},
    "ProxyExceptionsList": {"proxy_exceptions": ("localhost", "*.internal")},
    "TCPKeepAlive": {"tcp_options": TCPOptions(keepalive=False)},
    "ExitOnForwardFailure": {"exit_on_forward_failure": True},
    "PermitRemoteOpen": {"permit_remote_open": (("localhost", "80"), ("::1", "*"))},
    "ChannelTimeout": {"channel_idle_timeout": 30.0},
    "ForwardingLocalHost": {"forwarding_local_host": "127.0.0.3"},
    "MaxTransferRate": {"max_transfer_rate": 512 * 1024},
    "StrictHostKeyChecking": {"host_key_policy": "accept-new"},
    "UserKnownHostsFile": {"known_hosts": (Path("/kh1"), Path("/kh2"))},
    "GlobalKnownHostsFile": {"global_known_hosts": ()},
    "FingerprintHash": {"fingerprint_hash": "md5"},
    "HashKnownHosts": {"hash_known_hosts": True},
    "NumberOfPasswordPrompts": {"number_of_password_prompts": 5},
    "PubkeyAcceptedAlgorithms": {
        "pubkey_accepted_algorithms": (*DEFAULT_PUBKEY_ALGORITHMS, "ssh-rsa")
    },
    "Ciphers": {"ciphers": ("aes256-gcm@openssh.com",)},  # checked by prefix below
    "MACs": {"macs": None},  # checked below: the default less hmac-sha2-512*
    "KexAlgorithms": {"kex_algorithms": ("curve25519-sha256",)},
    "HostKeyAlgorithms": {"order_host_key_algorithms": True},
    "RekeyLimit": {"rekey_bytes": 64 << 20, "rekey_seconds": 600.0},
    "Compression": {"compression": True},
    "ServerAliveInterval": {"keepalive_interval": 15},
    "ServerAliveCountMax": {"keepalive_count_max": 2},
    # The command's own settings:
    "HostName": {"host_name": "gw.example.com"},
    "Port": {"port": 2222},
    "User": {"user": "alice"},
    "RemoteForward": {"remote_forwards": 1},
    "ForwardPolicy": {
        "forward_policies": [
            PolicyFor("8080", None, 8080, None, ForwardPolicy(allow=("10.0.0.0/8", "::1"), rate=5))
        ]
    },
    "IdentityFile": {"identity_files": ["/id_test"]},
    "CertificateFile": {"certificate_files": ["/id_test-cert.pub"]},
    "IdentityAgent": {"identity_agent": "/agent.sock"},
    "IdentitiesOnly": {"identities_only": True},
    "PreferredAuthentications": {"preferred_authentications": ("password", "publickey")},
    "PubkeyAuthentication": {"pubkey_authentication": False},
    "PasswordAuthentication": {"password_authentication": False},
    "KbdInteractiveAuthentication": {"kbd_interactive_authentication": False},
    "GSSAPIAuthentication": {"gssapi_authentication": True},
    "GSSAPIDelegateCredentials": {"gssapi_delegate_credentials": True},
    "BatchMode": {"batch_mode": True},
    "AutoReconnect": {"auto_reconnect": "always"},
    "MaxRetryCount": {"max_retry_count": 7},
    "RetryInterval": {"retry_interval": 5},
    "LogLevel": {"log_level": "VERBOSE"},
    "LogFormat": {"log_format": "json"},
    "ControlSocket": {"control_socket": "auto"},
    "HttpListen": {"http_listen": "127.0.0.1:9180"},
    "GroupServer": {"group_servers": [Destination("alice", "gw2.example.com", 2222)]},
    "GroupMode": {"group_mode": "all"},
    "FailbackAfter": {"failback_after": 120},
}

NAMES = [row.name for row in KEYWORDS]


def test_the_examples_cover_the_table() -> None:
    """A new row needs an example here, which the tests below then run."""
    assert sorted(EXAMPLES) == sorted(NAMES)
    assert sorted(EXPECTED) == sorted(NAMES)


def test_each_row_is_well_formed() -> None:
    settings = set(TunnelSettings.__annotations__)
    attributes = {f.name for f in dataclasses.fields(ClientOptions)}
    spellings = [s.lower() for row in KEYWORDS for s in (row.name, *row.aliases)]
    assert len(spellings) == len(set(spellings))
    for row in KEYWORDS:
        assert row.topic in TOPICS, row.name
        assert row.help and row.value, row.name
        # Exactly one target: the library's settings, or one of the command's own.
        assert bool(row.sets) != bool(row.command), row.name
        assert set(row.sets) <= settings, row.name
        assert not row.command or row.command in attributes, row.name
        assert row.collect == "first" or row.command, row.name
        assert keyword_named(row.name.upper()) is row
    assert sorted(SUPPORTED_OPTIONS.values()) == sorted(NAMES)


@pytest.mark.parametrize("where", ["rtunnel --help", "twistd rtunnel --help"])
@pytest.mark.parametrize("row", KEYWORDS, ids=NAMES)
def test_every_row_is_in_both_help_texts(row: Keyword[Any], where: str) -> None:
    text = HELP if where == "rtunnel --help" else TWISTD_HELP
    # twistd wraps its text at spaces and after hyphens.
    assert "".join(f"{row.name}={row.value}".split()) in "".join(text.split())
    if where == "rtunnel --help":
        assert row.help.split()[-1] in text


@pytest.mark.parametrize("row", KEYWORDS, ids=NAMES)
def test_every_row_round_trips(row: Keyword[Any]) -> None:
    """``-o Keyword=example`` -> the row's value -> ClientOptions -> TunnelOptions (or the
    command's attribute): the value arrives as the table says, in the library's type."""
    parsed = parse_keyword(f"{row.name}={EXAMPLES[row.name]}")
    assert parsed is not None and parsed[0] is row
    client = ClientOptions()
    client.apply(row, parsed[1])
    expected = EXPECTED[row.name]
    if row.command:
        value = getattr(client, row.command)
        if row.name == "RemoteForward":
            assert len(value) == expected["remote_forwards"]
        else:
            assert {row.command: value} == expected
        assert client.tunnel == {}
        return
    assert set(client.tunnel) <= set(row.sets)
    options = tunnel_options(client, report=lambda *a: None).settings()
    if row.name == "Ciphers":
        assert options["ciphers"][0] == "aes256-gcm@openssh.com"
        assert sorted(options["ciphers"]) == sorted(TunnelOptions().algorithms.ciphers)
    elif row.name == "MACs":
        default = TunnelOptions().algorithms.macs
        assert options["macs"] == tuple(m for m in default if not m.startswith("hmac-sha2-512"))
        assert 0 < len(options["macs"]) < len(default)
    else:
        assert {name: options[name] for name in expected} == expected  # type: ignore[literal-required]
    # The row's value is what the tunnel holds, not text read a second time.
    if row.to_settings is None and not isinstance(parsed[1], str):
        assert options[row.sets[0]] == parsed[1]  # type: ignore[literal-required]


def test_ssh_defaults_apply_only_when_not_given() -> None:
    """ServerAliveInterval and ServerAliveCountMax default to ssh's 0 and 3, not the
    library's 30 and 5; given, they win."""
    quiet = tunnel_options(ClientOptions(), report=lambda *a: None)
    assert (quiet.staying_up.keepalive_interval, quiet.staying_up.keepalive_count_max) == (0, 3)
    client = ClientOptions()
    client.apply_option("ServerAliveInterval=9")
    given = tunnel_options(client, report=lambda *a: None)
    assert (given.staying_up.keepalive_interval, given.staying_up.keepalive_count_max) == (9, 3)


def keyword_strings(path: Path) -> list[str]:
    """
    The string constants in a module that are a keyword or start ``Keyword=``, less the
    names listed in ``__all__`` (``Proxy`` is also a class) and in ``rtunnel/__init__.py``'s
    ``_WHERE`` (the same public names, each with the module it is imported from).
    """
    spellings = {s for row in KEYWORDS for s in (row.name, *row.aliases)}
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in ("__all__", "_WHERE") for t in targets):
                skipped.update(id(c) for c in ast.walk(node))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skipped
        ):
            text = node.value
            # "Keyword=value" is a setting; with words after it, a message quoting one.
            setting = text.split("=", 1)[0] in spellings and " " not in text
            if text in spellings or setting:
                found.append((node.lineno, f"{node.lineno}: {node.value!r}"))
    return [where for _, where in sorted(found)]


def test_no_keyword_is_declared_outside_the_table() -> None:
    """
    No string in the package is a keyword, or starts ``Keyword=``, except in the table:
    a second list of keywords (a parser branch, a help text's list, a mapping) would
    drift from it again. (Prose that names a keyword, "as -o BindAddress", is fine.)
    """
    table = ROOT / "rtunnel" / "openssh" / "keywords.py"
    # rtunnel.testing drives a real OpenSSH ssh and sshd, whose options it must spell.
    harness = ROOT / "rtunnel" / "testing"
    found = [
        f"{path.relative_to(ROOT)}:{where}"
        for path in sorted([*(ROOT / "rtunnel").rglob("*.py"), *(ROOT / "twisted").rglob("*.py")])
        if path != table and harness not in path.parents
        for where in keyword_strings(path)
    ]
    assert found == []
    assert len(keyword_strings(table)) >= len(KEYWORDS)


def test_the_check_above_finds_a_keyword(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '__all__ = ["Proxy"]\n'
        'A = {"MaxTransferRate": 1}\n'
        'B = "MaxTransferRate=5"\n'
        'C = "as -o MaxTransferRate"\n'
        'D = "Proxy"\n'
        'E = "port"\n'
    )
    assert keyword_strings(module) == [
        "2: 'MaxTransferRate'",
        "3: 'MaxTransferRate=5'",
        "5: 'Proxy'",
    ]
