"""
The command's ssh_config reading, in process (issue #14): the files' lines go through the
keyword table's rows after the command line (which wins), a bad value is named by its
file and line, keywords rtunnel does not use are noted at -v and never refused; and the
command's own wording (the dynamic -R note, the host key option, a line per forwarded
connection).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from rtunnel._model import ChannelInfo
from rtunnel.cli import (
    CommandLineExit,
    _ChannelReporter,
    _Console,
    _describe,
    parse_command_line,
    read_config,
)
from rtunnel.errors import ConnectError, HostKeyError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forwards import RemoteForwardSpec


def configured(tmp_path: Path, text: str, *argv: str) -> tuple[object, list[tuple[str, str]]]:
    path = tmp_path / "config"
    path.write_text(text)
    path.chmod(0o600)
    invocation = parse_command_line(["-F", str(path), *argv])
    read_config(invocation, home=str(tmp_path), environ={"HOME": str(tmp_path)})
    return invocation, invocation.notices


def test_a_host_block_sets_host_port_user_keys_and_forwards(tmp_path: Path) -> None:
    invocation, _ = configured(
        tmp_path,
        "Host gw\n  HostName 10.0.0.7\n  Port 2200\n  User tun\n  IdentityFile ~/k_%h\n"
        "  UserKnownHostsFile ~/kh\n  RemoteForward 8080 localhost:80\n"
        "  ExitOnForwardFailure yes\n  ServerAliveInterval 15\n",
        "gw",
    )
    options = invocation.options  # type: ignore[attr-defined]
    assert invocation.host == "10.0.0.7"  # type: ignore[attr-defined]
    assert (options.user, options.port) == ("tun", 2200)
    assert options.identity_files == [f"{tmp_path}/k_10.0.0.7"]
    assert options.tunnel["known_hosts"] == (f"{tmp_path}/kh",)
    assert options.remote_forwards == [RemoteForwardSpec("localhost", 8080, "localhost", 80)]
    assert options.exit_on_forward_failure is True
    assert options.tunnel["keepalive_interval"] == 15


def test_the_command_line_wins_and_forwards_accumulate(tmp_path: Path) -> None:
    invocation, _ = configured(
        tmp_path,
        "Port 3\nUser file\nCompression no\nRemoteForward 7000 localhost:7\n",
        *["-p", "5", "-l", "cli", "-C", "-R", "0:localhost:22", "gw"],
    )
    options = invocation.options  # type: ignore[attr-defined]
    assert (options.user, options.port, options.tunnel["compression"]) == ("cli", 5, True)
    assert [f.port for f in options.remote_forwards] == [0, 7000]


def test_a_bad_value_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(CommandLineExit) as caught:
        configured(tmp_path, "Host gw\n  Ciphers nope-cipher\n", "-R", "0:h:1", "gw")
    assert caught.value.status == 255
    assert caught.value.text.startswith(f"{tmp_path}/config line 2: Bad SSH2 cipher spec")


def test_keywords_rtunnel_does_not_use_are_noted_not_refused(tmp_path: Path) -> None:
    _, notices = configured(
        tmp_path, "ForwardAgent yes\nLocalForward 1 h:2\nProtocol 2\n", "-R", "0:h:1", "gw"
    )
    assert notices == [
        ("DEBUG1", f"Reading configuration data {tmp_path}/config"),
        ("DEBUG1", f'{tmp_path}/config line 3: Ignored option "protocol"'),
        (
            "DEBUG1",
            f'{tmp_path}/config line 1: Ignored option "forwardagent": rtunnel does not use it',
        ),
        (
            "DEBUG1",
            f'{tmp_path}/config line 2: Ignored option "localforward": rtunnel does not use it',
        ),
    ]


def test_no_forward_anywhere_names_the_files_read(tmp_path: Path) -> None:
    with pytest.raises(CommandLineExit, match=r"RemoteForward in ssh_config; read: .*config"):
        configured(tmp_path, "Port 2\n", "gw")


@pytest.mark.parametrize(
    ("spec", "noted"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("8000", False),
        ("*:8000", False),
        ("8000:127.0.0.1:8000", False),
    ],
)
def test_a_dynamic_looking_r_gets_a_note(spec: str, noted: bool) -> None:
    invocation = parse_command_line(["-R", spec, "gw"])
    notes = [text for level, text in invocation.notices if level == "INFO"]
    if noted:
        assert notes == [
            f"rtunnel: -R {spec} is a dynamic (SOCKS) forward on the server's "
            f"{spec.split(':')[0]} port 8000; to forward the server's port 8000 to "
            f"{spec.split(':')[0]}:8000 here, write -R 8000:{spec}."
        ]
    else:
        assert notes == []


def test_a_line_per_forwarded_connection_at_v_escaped() -> None:
    stream = io.StringIO()
    console = _Console(ClientOptions(log_level="DEBUG1"), stream)
    reporter = _ChannelReporter(console.say)
    reporter.channel_opened(ChannelInfo(3, "forwarded-tcpip", "localhost", 8080, "10.1.2.3", 5555))
    reporter.channel_opened(ChannelInfo(4, "forwarded-tcpip", "evil\x1b[2J", 1, "x", 2))
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "debug1: client_request_forwarded_tcpip: listen localhost port 8080, "
        "originator 10.1.2.3 port 5555"
    )
    assert "\x1b" not in lines[1] and len(lines) == 2
    quiet = io.StringIO()
    _ChannelReporter(_Console(ClientOptions(), quiet).say).channel_opened(
        ChannelInfo(3, "forwarded-tcpip", "localhost", 8080, "10.1.2.3", 5555)
    )
    assert quiet.getvalue() == ""


def test_the_unknown_host_key_message_names_the_option_to_give() -> None:
    # The library's words (rtunnel/client/hostkeys/verify.py); the command's name the flag.
    library = (
        "No ssh-ed25519 host key is known for gw (fingerprint SHA256:x) in /kh. If you "
        "trust this key, add it there or allow new keys (policy accept-new). Host key "
        "verification failed."
    )
    invocation = parse_command_line(["-R", "0:h:1", "gw"])
    message = _describe(HostKeyError(library), invocation, "u")
    assert "allow new keys (-o StrictHostKeyChecking=accept-new)." in message
    assert "policy" not in message


def test_an_unresolved_name_hints_at_the_config_f_kept_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".ssh").mkdir()
    user_file = tmp_path / ".ssh" / "config"
    user_file.write_text("Host gw\n  HostName gw.real.example\n")
    user_file.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    error = ConnectError("ssh: connect to host gw port 22: Could not resolve hostname")
    invocation = parse_command_line(["-F", "none", "-R", "0:h:1", "gw"])
    read_config(invocation)
    assert _describe(error, invocation, "u").splitlines() == [
        "rtunnel: connect to host gw port 22: Could not resolve hostname",
        f"rtunnel: hint: without -F none, the ssh_config files ({user_file}, "
        "/etc/ssh/ssh_config) would connect to gw.real.example for gw.",
    ]
    # Without -F, ssh's one line (-v names the files read).
    invocation = parse_command_line(["-R", "0:h:1", "other"])
    read_config(invocation)
    assert _describe(error, invocation, "u") == (
        "rtunnel: connect to host gw port 22: Could not resolve hostname"
    )


def test_gssapi_from_a_file_is_ignored_without_python_gssapi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's /etc/ssh/ssh_config turns GSSAPI on for every host: without the optional
    python-gssapi that must not fail every logon (an explicit -K still asks for it)."""
    monkeypatch.setitem(sys.modules, "gssapi", None)  # as if not installed
    invocation, notices = configured(tmp_path, "GSSAPIAuthentication yes\n", "-R", "0:h:1", "gw")
    assert invocation.options.gssapi_authentication is None  # type: ignore[attr-defined]
    assert notices[-1] == (
        "DEBUG1",
        f"{tmp_path}/config line 1: Ignored option 'GSSAPIAuthentication': python-gssapi "
        "is not installed (pip install 'rtunnel[gssapi]')",
    )
    invocation, _ = configured(tmp_path, "GSSAPIAuthentication yes\n", "-K", "-R", "0:h:1", "gw")
    assert invocation.options.gssapi_authentication is True  # type: ignore[attr-defined]


def test_twistd_takes_o_hostname_with_its_token() -> None:
    """-o HostName is in the table, so twistd rtunnel takes it too: never ignored."""
    from twisted.python.usage import UsageError

    from rtunnel.service import Options

    options = Options()
    options.parseOptions(["-o", "HostName=%h.example.org", "-R", "0:h:1", "gw"])
    assert options.host == "gw.example.org"
    with pytest.raises(UsageError, match="unknown token %x"):
        Options().parseOptions(["-o", "HostName=%x", "-R", "0:h:1", "gw"])
