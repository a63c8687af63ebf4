"""
Tests for :mod:`rtunnel.openssh`: OpenSSH's command-line syntax, as pure functions.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtunnel._core.syntax import Destination, parse_destination
from rtunnel.errors import SpecError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forwards import RemoteForwardSpec, parse_remote_forward
from rtunnel.openssh.messages import (
    format_allocated,
    format_forward_failure,
    format_permission_denied,
)
from rtunnel.openssh.options import LOG_LEVELS, SUPPORTED_OPTIONS, parse_option, split_arguments
from rtunnel.openssh.values import parse_port, parse_time
from rtunnel.service import tunnel_options

# --------------------------------------------------------------------------------------
# -R


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # No bind address: loopback only, sent as "localhost" (channels.c).
        ("8080:localhost:80", RemoteForwardSpec("localhost", 8080, "localhost", 80)),
        # ssh -R [bind_address:]port alone: a remote dynamic (SOCKS) forward, OpenSSH 7.6.
        ("0", RemoteForwardSpec.socks("localhost", 0)),
        ("*:1080", RemoteForwardSpec.socks("", 1080)),
        ("[::1]:1080", RemoteForwardSpec.socks("::1", 1080)),
        # A local Unix-domain socket as the target: a "/" marks the path (readconf.c).
        ("0:/run/app.sock", RemoteForwardSpec.unix_target("localhost", 0, "/run/app.sock")),
        ("*:8080:/tmp/a\\:b.sock", RemoteForwardSpec.unix_target("", 8080, "/tmp/a:b.sock")),
        # A socket on the server's side (streamlocal-forward@openssh.com).
        (
            "/run/r.sock:localhost:80",
            RemoteForwardSpec.unix_listener("/run/r.sock", "localhost", 80),
        ),
        (
            "/run/r.sock:/run/l.sock",
            RemoteForwardSpec.unix_listener("/run/r.sock", target_path="/run/l.sock"),
        ),
        ("0:127.0.0.1:22", RemoteForwardSpec("localhost", 0, "127.0.0.1", 22)),
        # "*" and an empty bind address mean all interfaces, sent as "".
        ("*:8080:localhost:80", RemoteForwardSpec("", 8080, "localhost", 80)),
        (":8080:localhost:80", RemoteForwardSpec("", 8080, "localhost", 80)),
        ("[]:8080:localhost:80", RemoteForwardSpec("", 8080, "localhost", 80)),
        ("[*]:8080:localhost:80", RemoteForwardSpec("", 8080, "localhost", 80)),
        ("127.0.0.1:8080:localhost:80", RemoteForwardSpec("127.0.0.1", 8080, "localhost", 80)),
        ("localhost:0:h:1", RemoteForwardSpec("localhost", 0, "h", 1)),
        # IPv6 in brackets, on either side.
        ("[::1]:8080:[::1]:80", RemoteForwardSpec("::1", 8080, "::1", 80)),
        ("[::]:0:localhost:80", RemoteForwardSpec("::", 0, "localhost", 80)),
        ("0:[fe80::1%eth0]:80", RemoteForwardSpec("localhost", 0, "fe80::1%eth0", 80)),
        # Ports at the edges of their ranges; leading zeros are decimal, as strtonum.
        ("65535:h:65535", RemoteForwardSpec("localhost", 65535, "h", 65535)),
        ("0:h:1", RemoteForwardSpec("localhost", 0, "h", 1)),
        ("0080:h:0022", RemoteForwardSpec("localhost", 80, "h", 22)),
        # Leading whitespace is skipped, a trailing ':' ends the last field (readconf.c).
        ("  \t8080:h:80", RemoteForwardSpec("localhost", 8080, "h", 80)),
        ("8080:h:80:", RemoteForwardSpec("localhost", 8080, "h", 80)),
        # Backslash escapes make ':' and '/' literal.
        ("a\\:b:1:h:2", RemoteForwardSpec("a:b", 1, "h", 2)),
        ("1:a\\/b:2", RemoteForwardSpec("localhost", 1, "a/b", 2)),
    ],
)
def test_parse_remote_forward(spec: str, expected: RemoteForwardSpec) -> None:
    """Valid ``-R`` specs parse to the forward OpenSSH would request."""
    assert parse_remote_forward(spec) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("8080:localhost", "bad listen port 'localhost'"),
        ("x", "bad listen port 'x'"),
        ("/tmp/sock:0", "expected /path/on/server:host:hostport"),
        ("/tmp/r.sock:localhost:0", "bad target port '0'"),
        ("1:/a:/b", "expected [bind_address:]port:host:hostport"),
        ("x:/tmp/a.sock", "bad listen port 'x'"),
        ("", "expected [bind_address:]port:host:hostport"),
        ("1:2:3:4:5", "expected [bind_address:]port:host:hostport"),
        ("[::1:8080:h:80", "expected [bind_address:]port:host:hostport"),
        ("[::1]x:8080:h:80", "expected [bind_address:]port:host:hostport"),
        ("8080:h:80\\", "expected [bind_address:]port:host:hostport"),
        ("x:h:80", "bad listen port 'x'"),
        ("65536:h:80", "bad listen port '65536'"),
        ("-1:h:80", "bad listen port '-1'"),
        ("+1:h:80", "bad listen port '+1'"),
        ("99999999999999999999999:h:80", "bad listen port '99999999999999999999999'"),
        ("8080:h:0", "bad target port '0'"),
        ("8080:h:65536", "bad target port '65536'"),
        ("8080:h:http", "bad target port 'http'"),
        ("8080::80", "missing target host"),
        ("8080:" + "h" * 1025 + ":80", "host name too long"),
        # OpenSSH's old slash syntax: a path to OpenSSH since 6.7.
        ("8080/localhost/80", "expected /path/on/server:host:hostport"),
    ],
)
def test_parse_remote_forward_errors(spec: str, reason: str) -> None:
    """
    A bad spec raises SpecError whose one-line message starts with ssh's own words
    (ssh.c) and names the spec and what is wrong.
    """
    with pytest.raises(SpecError) as caught:
        parse_remote_forward(spec)
    message = str(caught.value)
    assert message.startswith(f"Bad remote forwarding specification '{spec}': ")
    assert reason in message
    assert "\n" not in message
    assert caught.value.code == 10022


def test_remote_forward_spec_validates() -> None:
    """A spec built directly is checked too, and ``*`` is stored as ``""``."""
    assert RemoteForwardSpec("*", 0, "h", 1).bind_address == ""
    with pytest.raises(SpecError):
        RemoteForwardSpec("", 65536, "h", 1)
    with pytest.raises(SpecError):
        RemoteForwardSpec("", 1, "h", 0)
    with pytest.raises(SpecError):
        RemoteForwardSpec("", 1, "", 1)


@pytest.mark.parametrize(
    ("forward", "spec"),
    [
        (RemoteForwardSpec("localhost", 0, "127.0.0.1", 22), "localhost:0:127.0.0.1:22"),
        (RemoteForwardSpec("", 80, "h", 1), "*:80:h:1"),
        (RemoteForwardSpec("::1", 80, "::1", 1), "[::1]:80:[::1]:1"),
        (RemoteForwardSpec("a/b", 80, "h", 1), "a\\/b:80:h:1"),
    ],
)
def test_to_spec(forward: RemoteForwardSpec, spec: str) -> None:
    """``to_spec`` writes the ``-R`` syntax, bracketing IPv6 addresses."""
    assert forward.to_spec() == spec
    assert str(forward) == spec


_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=40,
)


@given(
    bind=st.one_of(st.just(""), st.just("localhost"), _names),
    port=st.integers(0, 65535),
    host=_names,
    host_port=st.integers(1, 65535),
)
def test_to_spec_round_trip(bind: str, port: int, host: str, host_port: int) -> None:
    """Any forward survives ``to_spec`` and ``parse_remote_forward``."""
    forward = RemoteForwardSpec(bind, port, host, host_port)
    assert parse_remote_forward(forward.to_spec()) == forward


@given(st.text(max_size=60))
def test_parse_remote_forward_never_crashes(spec: str) -> None:
    """Arbitrary text gives a forward or a one-line SpecError, nothing else."""
    try:
        forward = parse_remote_forward(spec)
    except SpecError as error:
        assert str(error).startswith("Bad remote forwarding specification ")
    else:
        assert 0 <= forward.port <= 65535
        assert (forward.dynamic and forward.host_port == 0) or 1 <= forward.host_port <= 65535


# --------------------------------------------------------------------------------------
# Ports and times


@pytest.mark.parametrize(("text", "port"), [("22", 22), ("1", 1), ("65535", 65535)])
def test_parse_port(text: str, port: int) -> None:
    """``-p`` takes 1-65535."""
    assert parse_port(text) == port


@pytest.mark.parametrize("text", ["0", "65536", "", "x", "-1", " 22", "2 2", "٣"])
def test_parse_port_errors(text: str) -> None:
    """Anything else is ssh.c's ``Bad port '<text>'``."""
    with pytest.raises(SpecError, match=f"^Bad port '{text}'$"):
        parse_port(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("30", 30),
        ("30s", 30),
        ("1m", 60),
        ("1m30s", 90),
        ("1H", 3600),
        ("2d", 172800),
        ("1w", 604800),
        ("1h1m1s", 3661),
    ],
)
def test_parse_time(text: str, seconds: int) -> None:
    """OpenSSH's ``convtime`` format (misc.c)."""
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "1x", "s", "-1", "1.5", "99999999999", "3000000w"])
def test_parse_time_errors(text: str) -> None:
    """Malformed or overflowing times are refused."""
    with pytest.raises(SpecError):
        parse_time(text)


# --------------------------------------------------------------------------------------
# Destinations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", Destination(None, "host", None)),
        ("user@host", Destination("user", "host", None)),
        ("a@b@host", Destination("a@b", "host", None)),
        ("user@127.0.0.1", Destination("user", "127.0.0.1", None)),
        ("user@::1", Destination("user", "::1", None)),
        ("user@[::1]", Destination("user", "::1", None)),
        ("[::1]", Destination(None, "::1", None)),
        ("ssh://host", Destination(None, "host", None)),
        ("ssh://host/", Destination(None, "host", None)),
        ("SSH://user@host:2222", Destination("user", "host", 2222)),
        ("ssh://us%40er;fingerprint=x@host", Destination("us@er", "host", None)),
        ("ssh://user@[::1]:2222", Destination("user", "::1", 2222)),
        ("ssh://[::1]", Destination(None, "::1", None)),
    ],
)
def test_parse_destination(text: str, expected: Destination) -> None:
    """``[user@]host`` and ``ssh://[user@]host[:port]``."""
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@host",
        "user@",
        "ssh://",
        "ssh://user@",
        "ssh://@host",
        "ssh://host:0",
        "ssh://host:x",
        "ssh://host/path",
        "ssh://[::1",
        "ssh://[::1]x",
    ],
)
def test_parse_destination_errors(text: str) -> None:
    """A destination without a host, or a malformed URI, is refused in one line."""
    with pytest.raises(SpecError, match=f"^Bad destination '{re.escape(text)}'"):
        parse_destination(text)


_users = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda u: not u.lower().startswith("ssh://")
)
_hosts = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}|[0-9a-f:]{2,20}", fullmatch=True)


@given(user=st.one_of(st.none(), _users), host=_hosts)
def test_destination_round_trip(user: str | None, host: str) -> None:
    """``user@host`` splits back into user and host (at the last ``@``)."""
    text = host if user is None else f"{user}@{host}"
    assert parse_destination(text) == Destination(user, host, None)


@given(user=_users.filter(lambda u: "@" not in u), host=_hosts, port=st.integers(1, 65535))
def test_ssh_uri_round_trip(user: str, host: str, port: int) -> None:
    """An ``ssh://`` URI with a percent-encoded user gives the same parts back."""
    from urllib.parse import quote

    shown = f"[{host}]" if ":" in host else host
    uri = f"ssh://{quote(user, safe='')}@{shown}:{port}"
    assert parse_destination(uri) == Destination(user, host, port)


# --------------------------------------------------------------------------------------
# -o


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("a b", ["a", "b"]),
        ("  a \t b  ", ["a", "b"]),
        ('"a b" c', ["a b", "c"]),
        ("'a b'", ["a b"]),
        ('a" "b', ["a b"]),
        ("a\\ b", ["a b"]),
        ('\\"a', ['"a']),
        ("a\\\\b", ["a\\b"]),
        ("a\\nb", ["a\\nb"]),
        ('"a\\ b"', ["a\\ b"]),
        ("a #comment", ["a"]),
        ("a b#c", ["a", "b#c"]),
        ("", []),
    ],
)
def test_split_arguments(text: str, args: list[str]) -> None:
    """OpenSSH's ``argv_split`` (misc.c)."""
    assert split_arguments(text) == args


@pytest.mark.parametrize("text", ['"a', "'a", 'a "b'])
def test_split_arguments_unclosed(text: str) -> None:
    """An unclosed quote is readconf.c's ``invalid quotes``."""
    with pytest.raises(SpecError, match=r"^command-line line 0: invalid quotes$"):
        split_arguments(text)


HOME = os.path.expanduser("~")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Port=2222", ("Port", 2222)),
        ("port 2222", ("Port", 2222)),
        ("PORT = 2222", ("Port", 2222)),
        ("  Port\t2222", ("Port", 2222)),
        ("User=alice", ("User", "alice")),
        ("User alice", ("User", "alice")),
        ("IdentityFile=~/.ssh/id_ed25519", ("IdentityFile", f"{HOME}/.ssh/id_ed25519")),
        ("IdentityFile '/a b/key'", ("IdentityFile", "/a b/key")),
        ("UserKnownHostsFile=/dev/null", ("UserKnownHostsFile", ("/dev/null",))),
        (
            "UserKnownHostsFile ~/k1 /k2",
            ("UserKnownHostsFile", (f"{HOME}/k1", "/k2")),
        ),
        ("UserKnownHostsFile=none", ("UserKnownHostsFile", ())),
        ("StrictHostKeyChecking=yes", ("StrictHostKeyChecking", "yes")),
        ("StrictHostKeyChecking=true", ("StrictHostKeyChecking", "yes")),
        ("StrictHostKeyChecking=no", ("StrictHostKeyChecking", "no")),
        ("StrictHostKeyChecking=off", ("StrictHostKeyChecking", "no")),
        ("StrictHostKeyChecking=false", ("StrictHostKeyChecking", "no")),
        ("StrictHostKeyChecking=ask", ("StrictHostKeyChecking", "ask")),
        ("StrictHostKeyChecking=Accept-New", ("StrictHostKeyChecking", "accept-new")),
        ("ExitOnForwardFailure=yes", ("ExitOnForwardFailure", True)),
        ("exitonforwardfailure no", ("ExitOnForwardFailure", False)),
        ("BatchMode=YES", ("BatchMode", True)),
        ("BatchMode=false", ("BatchMode", False)),
        ("ConnectTimeout=10", ("ConnectTimeout", 10)),
        ("ConnectTimeout=1m", ("ConnectTimeout", 60)),
        ("ConnectTimeout=none", ("ConnectTimeout", None)),
        ("LogLevel=debug", ("LogLevel", "DEBUG1")),
        ("LogLevel=DEBUG3", ("LogLevel", "DEBUG3")),
        ("LogLevel quiet", ("LogLevel", "QUIET")),
        (
            "RemoteForward 8080 localhost:80",
            ("RemoteForward", RemoteForwardSpec("localhost", 8080, "localhost", 80)),
        ),
        (
            "RemoteForward=[::1]:0 [::1]:80",
            ("RemoteForward", RemoteForwardSpec("::1", 0, "::1", 80)),
        ),
        (
            "RemoteForward *:0 h:1",
            ("RemoteForward", RemoteForwardSpec("", 0, "h", 1)),
        ),
    ],
)
def test_parse_option(text: str, expected: tuple[str, object]) -> None:
    """Supported options, case-insensitive, ``=`` or whitespace separated."""
    assert parse_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # readconf.c, parse_token: the one message with "command-line:" and a colon.
        ("Foo=bar", "command-line: line 0: Bad configuration option: foo"),
        ("NoSuchOption yes", "command-line: line 0: Bad configuration option: nosuchoption"),
        # Real OpenSSH options rtunnel does not implement.
        ("ProxyUseFdpass=yes", 'command-line line 0: Unsupported option "proxyusefdpass"'),
        ("MaxTransferRate=fast", "command-line line 0: Bad MaxTransferRate 'fast'"),
        ("ProxyJump=bastion:0", "command-line line 0: Bad ProxyJump"),
        ("ProxyCommand=nc %h %Z", "command-line line 0: ProxyCommand: unknown token %Z"),
        ("CheckHostIP=yes", 'command-line line 0: Unsupported option "checkhostip"'),
        ("AutoReconnect=sometimes", 'command-line line 0: unsupported AutoReconnect "sometimes"'),
        ("MaxRetryCount=-1", "command-line line 0: Bad number '-1' (0 means no limit)."),
        ("RetryInterval=0", "command-line line 0: RetryInterval must be at least 1 second."),
        ("ChannelTimeout=30", 'command-line line 0: invalid channel timeout "30"'),
        ("ChannelTimeout=*=soon", 'command-line line 0: invalid channel timeout interval "soon"'),
        # readconf.c checks for an argument before it looks the keyword up.
        ("Foo", 'command-line line 0: no argument after keyword "foo"'),
        ("Port=", 'command-line line 0: no argument after keyword "port"'),
        ("Port", 'command-line line 0: no argument after keyword "port"'),
        # strdelim: a leading '=' ends an empty token, so "22" is the keyword.
        ("=22", 'command-line line 0: no argument after keyword "22"'),
        ("Port=0", "command-line line 0: Bad port '0'."),
        ("Port=65536", "command-line line 0: Bad port '65536'."),
        ("Port 22 23", "command-line line 0: keyword port extra arguments at end of line"),
        ('Port=""', "command-line line 0: Missing argument."),
        ("Port '22", "command-line line 0: invalid quotes"),
        ("BatchMode=maybe", 'command-line line 0: unsupported option "maybe".'),
        ("StrictHostKeyChecking=sometimes", 'command-line line 0: unsupported option "sometimes".'),
        ("ConnectTimeout=soon", "command-line line 0: invalid time value."),
        ("LogLevel=LOUD", "command-line line 0: unsupported log level 'LOUD'"),
        (
            "UserKnownHostsFile none /k",
            'command-line line 0: keyword userknownhostsfile "none" argument must appear alone.',
        ),
        (
            "UserKnownHostsFile /k ''",
            "command-line line 0: keyword userknownhostsfile empty argument",
        ),
        (
            "RemoteForward x",
            "command-line line 0: Bad forwarding specification 'x': bad listen port 'x'",
        ),
        (
            "RemoteForward 8080 localhost:http",
            "command-line line 0: Bad forwarding specification '8080 localhost:http': "
            "bad target port 'http'",
        ),
        (
            "RemoteForward 1 h:2 3",
            "command-line line 0: keyword remoteforward extra arguments at end of line",
        ),
    ],
)
def test_parse_option_errors(text: str, message: str) -> None:
    """Each mistake gets OpenSSH's one-line wording (readconf.c)."""
    with pytest.raises(SpecError) as caught:
        parse_option(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@given(
    bind=st.sampled_from(["", "*", "localhost", "127.0.0.1", "[::1]"]),
    port=st.integers(0, 65535),
    host=st.sampled_from(["localhost", "127.0.0.1", "[::1]", "example.com"]),
    host_port=st.integers(1, 65535),
)
def test_remote_forward_option_matches_dash_r(
    bind: str, port: int, host: str, host_port: int
) -> None:
    """``-o RemoteForward "listen target"`` is ``-R listen:target``."""
    listen = f"{bind}:{port}" if bind else str(port)
    assert parse_option(f"RemoteForward {listen} {host}:{host_port}") == (
        "RemoteForward",
        parse_remote_forward(f"{listen}:{host}:{host_port}"),
    )


def test_supported_options() -> None:
    """The table holds exactly the options the command implements."""
    assert sorted(SUPPORTED_OPTIONS.values()) == [
        "AutoReconnect",
        "BatchMode",
        "BindAddress",
        "CertificateFile",
        "ChannelTimeout",
        "Ciphers",
        "Compression",
        "ConnectTimeout",
        "ControlSocket",
        "ExitOnForwardFailure",
        "FailbackAfter",
        "FingerprintHash",
        "ForwardPolicy",
        "ForwardingLocalHost",
        "GSSAPIAuthentication",
        "GSSAPIDelegateCredentials",
        "GlobalKnownHostsFile",
        "GroupMode",
        "GroupServer",
        "HashKnownHosts",
        "HostKeyAlgorithms",
        "HostName",
        "HttpListen",
        "IdentitiesOnly",
        "IdentityAgent",
        "IdentityFile",
        "KbdInteractiveAuthentication",
        "KexAlgorithms",
        "LogFormat",
        "LogLevel",
        "MACs",
        "MaxRetryCount",
        "MaxTransferRate",
        "NumberOfPasswordPrompts",
        "PasswordAuthentication",
        "PermitRemoteOpen",
        "Port",
        "PreferredAuthentications",
        "Proxy",
        "ProxyCommand",
        "ProxyExceptionsList",
        "ProxyJump",
        "PubkeyAcceptedAlgorithms",
        "PubkeyAuthentication",
        "RekeyLimit",
        "RemoteForward",
        "RetryInterval",
        "ServerAliveCountMax",
        "ServerAliveInterval",
        "StrictHostKeyChecking",
        "TCPKeepAlive",
        "User",
        "UserKnownHostsFile",
    ]


@given(
    name=st.sampled_from(sorted(SUPPORTED_OPTIONS.values())),
    separator=st.sampled_from(["=", " ", " = ", "\t", "= "]),
    swap_case=st.booleans(),
)
def test_option_spelling(name: str, separator: str, swap_case: bool) -> None:
    """Every spelling of a key and separator parses the same."""
    values = {
        "BatchMode": "yes",
        "ConnectTimeout": "5",
        "ServerAliveInterval": "15",
        "ServerAliveCountMax": "2",
        "ExitOnForwardFailure": "no",
        "IdentityFile": "/k",
        "HostName": "gw.example.com",
        "LogLevel": "INFO",
        "LogFormat": "json",
        "ControlSocket": "none",
        "HttpListen": "9180",
        "Port": "22",
        "RemoteForward": "0 h:1",
        "StrictHostKeyChecking": "accept-new",
        "User": "u",
        "UserKnownHostsFile": "/kh",
        "FingerprintHash": "md5",
        "GlobalKnownHostsFile": "/gkh",
        "HashKnownHosts": "yes",
        "KbdInteractiveAuthentication": "no",
        "NumberOfPasswordPrompts": "2",
        "PasswordAuthentication": "yes",
        "PreferredAuthentications": "password,publickey",
        "PubkeyAuthentication": "no",
        "CertificateFile": "/c-cert.pub",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "/agent.sock",
        "Ciphers": "+aes128-cbc",
        "Compression": "yes",
        "MACs": "-hmac-sha2-512",
        "KexAlgorithms": "^curve25519-sha256",
        "HostKeyAlgorithms": "ssh-ed25519",
        "RekeyLimit": "1G 1h",
        "AutoReconnect": "always",
        "MaxRetryCount": "5",
        "RetryInterval": "1m",
        "ChannelTimeout": "session=1m forwarded-tcpip=30s",
        "BindAddress": "127.0.0.2",
        "ForwardingLocalHost": "127.0.0.3",
        "Proxy": "auto",
        "ProxyExceptionsList": "localhost;*.internal",
        "ProxyCommand": "ssh -W %h:%p jump",
        "ProxyJump": "alice@jump:2222",
        "MaxTransferRate": "512K",
        "ForwardPolicy": "8080 max_channels=3",
        "PermitRemoteOpen": "localhost:80 [::1]:*",
        "TCPKeepAlive": "no",
        "PubkeyAcceptedAlgorithms": "+ssh-rsa",
        "GSSAPIAuthentication": "yes",
        "GSSAPIDelegateCredentials": "no",
        "GroupServer": "alice@gw2:2222",
        "GroupMode": "all",
        "FailbackAfter": "30s",
    }
    key = name.swapcase() if swap_case else name
    assert parse_option(f"{key}{separator}{values[name]}") == parse_option(f"{name}={values[name]}")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("ChannelTimeout=forwarded-tcpip=1m", 60),
        ("ChannelTimeout session=5 *=10", 10),
        ("ChannelTimeout=session=5", 0),  # no forwarded-tcpip type: nothing to apply
        ("ChannelTimeout=none", 0),
        ("ChannelTimeout forwarded-*=7 *=9", 7),  # the first match wins
    ],
)
def test_channel_timeout(text: str, value: int) -> None:
    """OpenSSH 9.2's ChannelTimeout syntax; only forwarded-tcpip applies to -R."""
    assert parse_option(text) == ("ChannelTimeout", value)


def test_old_option_names_are_aliases() -> None:
    assert parse_option("PubkeyAcceptedKeyTypes=+ssh-rsa") == parse_option(
        "PubkeyAcceptedAlgorithms=+ssh-rsa"
    )


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("AutoReconnect=no", "off"),
        ("AutoReconnect=yes", "on-loss"),
        ("autoreconnect always", "always"),
    ],
)
def test_auto_reconnect(text: str, mode: str) -> None:
    assert parse_option(text) == ("AutoReconnect", mode)


@given(st.text(max_size=40))
def test_parse_option_never_crashes(text: str) -> None:
    """Arbitrary text gives an option or a one-line SpecError."""
    try:
        parsed = parse_option(text)
    except SpecError as error:
        assert str(error).startswith("command-line")
    else:
        assert parsed is None or parsed[0] in SUPPORTED_OPTIONS.values()


@pytest.mark.parametrize(
    "text", ["", "   ", "# a comment", "  #Port=1", "=", "Protocol=2", "UseRoaming no", "cipher x"]
)
def test_parse_option_ignored(text: str) -> None:
    """Blank lines, comments and deprecated options are ignored, as by OpenSSH."""
    assert parse_option(text) is None


# --------------------------------------------------------------------------------------
# ClientOptions


def test_first_value_wins() -> None:
    """OpenSSH keeps the first value given for an option."""
    options = ClientOptions()
    for text in [
        "Port=1",
        "Port=2",
        "User=a",
        "User=b",
        "StrictHostKeyChecking=no",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/a",
        "UserKnownHostsFile=/b",
        "ExitOnForwardFailure=yes",
        "ExitOnForwardFailure=no",
        "BatchMode=yes",
        "BatchMode=no",
        "ConnectTimeout=none",
        "ConnectTimeout=5",
        "LogLevel=ERROR",
        "LogLevel=DEBUG",
    ]:
        options.apply_option(text)
    options.set_default_user("c")
    options.set_default_port(3)
    assert (options.port, options.user) == (1, "a")
    assert options.tunnel["host_key_policy"] == "accept-new"  # StrictHostKeyChecking=no
    assert options.tunnel["known_hosts"] == ("/a",)
    assert options.exit_on_forward_failure is True
    assert options.batch_mode is True
    assert (options.tunnel["connect_timeout"], "ConnectTimeout" in options.given) == (None, True)
    assert options.log_level == "ERROR"


def test_defaults_apply_when_unset() -> None:
    """The destination's user and port fill in what the options left unset."""
    options = ClientOptions()
    options.set_default_user("c")
    options.set_default_port(3)
    options.set_default_user(None)
    assert (options.user, options.port) == ("c", 3)
    assert options.effective_log_level == "INFO"
    assert "connect_timeout" not in options.tunnel


def test_accumulating_options() -> None:
    """Identity files and forwards accumulate; an identical forward is kept once."""
    options = ClientOptions()
    options.apply_option("IdentityFile=/k1")
    options.apply_option("IdentityFile=/k2")
    options.apply_option("RemoteForward 0 h:1")
    options.add_remote_forward(parse_remote_forward("0:h:2"))
    options.add_remote_forward(parse_remote_forward("localhost:0:h:1"))
    assert options.identity_files == ["/k1", "/k2"]
    assert [f.to_spec() for f in options.remote_forwards] == [
        "localhost:0:h:1",
        "localhost:0:h:2",
    ]


@pytest.mark.parametrize("text", ["", "   ", "# a comment", "  #Port=1", "Protocol 2"])
def test_blank_options_ignored(text: str) -> None:
    """Blank ``-o`` arguments, comments and deprecated options do nothing."""
    options = ClientOptions()
    options.apply_option(text)
    assert options == ClientOptions()


@pytest.mark.parametrize(
    ("setting", "policy"),
    [
        (None, "strict"),
        ("yes", "strict"),
        ("ask", "strict"),
        ("accept-new", "accept-new"),
        ("no", "accept-new"),
    ],
)
def test_host_key_policy(setting: str | None, policy: str) -> None:
    """StrictHostKeyChecking maps to the tunnel's host key policy."""
    options = ClientOptions()
    if setting is not None:
        options.apply_option(f"StrictHostKeyChecking={setting}")
    assert tunnel_options(options, report=lambda *a: None).host_keys.host_key_policy == policy


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        ("", "INFO"),
        ("v", "DEBUG1"),
        ("vv", "DEBUG2"),
        ("vvv", "DEBUG3"),
        ("vvvv", "DEBUG3"),
        ("q", "QUIET"),
        ("vq", "QUIET"),
        ("qv", "DEBUG1"),
        # ssh.c: after the first -v, each -v only raises the level by one.
        ("vqv", "FATAL"),
    ],
)
def test_verbosity(flags: str, level: str) -> None:
    """``-v`` and ``-q`` move the log level as in ssh.c."""
    options = ClientOptions()
    for flag in flags:
        if flag == "v":
            options.more_verbose()
        else:
            options.quiet()
    assert options.effective_log_level == level


def test_verbose_overrides_log_level_option() -> None:
    """``-v`` wins over an earlier ``-o LogLevel``; a later LogLevel is ignored."""
    options = ClientOptions()
    options.apply_option("LogLevel=ERROR")
    options.more_verbose()
    options.apply_option("LogLevel=QUIET")
    assert options.effective_log_level == "DEBUG1"


@pytest.mark.parametrize(
    ("current", "shown", "hidden"),
    [
        ("QUIET", [], ["FATAL", "INFO"]),
        ("ERROR", ["FATAL", "ERROR"], ["INFO"]),
        ("INFO", ["FATAL", "ERROR", "INFO"], ["VERBOSE", "DEBUG1"]),
        ("DEBUG2", ["INFO", "DEBUG1", "DEBUG2"], ["DEBUG3"]),
    ],
)
def test_logs(current: str, shown: list[str], hidden: list[str]) -> None:
    """A message shows when its level is at or below the current one (log.c)."""
    options = ClientOptions(log_level=current)
    assert all(options.logs(level) for level in shown)
    assert not any(options.logs(level) for level in hidden)
    assert set(shown + hidden) <= set(LOG_LEVELS)


# --------------------------------------------------------------------------------------
# Messages


def test_format_allocated() -> None:
    """ssh.c's line for a server-allocated port, host printed as given."""
    assert (
        format_allocated(40123, "127.0.0.1", 8080)
        == "Allocated port 40123 for remote forward to 127.0.0.1:8080"
    )
    assert format_allocated(1, "::1", 80) == "Allocated port 1 for remote forward to ::1:80"


def test_format_forward_failure() -> None:
    """ssh.c's lines for a refused forward, as a warning and as a fatal error."""
    assert (
        format_forward_failure(8080, fatal=False)
        == "Warning: remote port forwarding failed for listen port 8080"
    )
    assert (
        format_forward_failure(0, fatal=True)
        == "Error: remote port forwarding failed for listen port 0"
    )


def test_format_permission_denied() -> None:
    """sshconnect2.c's line when every method failed."""
    assert (
        format_permission_denied("alice", "example.com", ["publickey", "password"])
        == "alice@example.com: Permission denied (publickey,password)."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ServerAliveInterval=15", ("ServerAliveInterval", 15)),
        ("serveraliveinterval 1m", ("ServerAliveInterval", 60)),
        ("ServerAliveCountMax=0", ("ServerAliveCountMax", 0)),
    ],
)
def test_server_alive_options(text: str, expected: tuple[str, int]) -> None:
    assert parse_option(text) == expected


@pytest.mark.parametrize("text", ["ServerAliveInterval=soon", "ServerAliveCountMax=-1"])
def test_bad_server_alive_values(text: str) -> None:
    with pytest.raises(SpecError, match="invalid"):
        parse_option(text)


@pytest.mark.parametrize(
    ("given", "interval"),
    [
        ([], 0.0),
        (["BatchMode=no"], 0.0),
        # readconf.c, fill_default_options: "in batch mode, default is 5mins".
        (["BatchMode=yes"], 300.0),
        (["BatchMode=yes", "ServerAliveInterval=0"], 0.0),
        (["ServerAliveInterval=15", "BatchMode=yes"], 15.0),
    ],
)
def test_batch_mode_keeps_the_connection_alive_every_five_minutes_as_ssh(
    given: list[str], interval: float
) -> None:
    options = ClientOptions()
    for option in given:
        options.apply_option(option)
    tunnel = tunnel_options(options, report=lambda *a: None)
    assert tunnel.staying_up.keepalive_interval == interval
