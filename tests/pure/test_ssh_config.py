"""
The ssh_config reader (:mod:`rtunnel.openssh.ssh_config`): pure, table-driven tests of
how it reads and resolves, then the same files given to the real ``ssh -G`` (OpenSSH
9.2p1, Debian 12's, the version the module follows) and the answers compared keyword by
keyword, for a table of configurations and for generated ones.

``ssh -G -F FILE host`` only reads and resolves: it opens no connection.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtunnel.errors import SpecError
from rtunnel.openssh.ssh_config import (
    KEYWORDS,
    ConfigEntry,
    Forward,
    ResolvedConfig,
    SSHConfigError,
    format_like_ssh_G,
    resolve,
    run_in_shell,
)

#: The ssh whose behaviour the module follows and these tests compare against.
SSH_VERSION = "OpenSSH_9.2p1"


def config(tmp_path: Path, text: str, name: str = "config") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def read(tmp_path: Path, text: str, destination: str = "gw", **options: object) -> ResolvedConfig:
    path = config(tmp_path, text)
    options.setdefault("home", str(tmp_path))
    options.setdefault("local_user", "alice")
    options.setdefault("uid", 1000)
    options.setdefault("local_hostname", "box.example.org")
    options.setdefault("environ", {"HOME": str(tmp_path)})
    return resolve(destination, config_file=str(path), **options)  # type: ignore[arg-type]


def refusal(tmp_path: Path, text: str, destination: str = "gw", **options: object) -> str:
    with pytest.raises(SSHConfigError) as caught:
        read(tmp_path, text, destination, **options)
    return str(caught.value)


# --------------------------------------------------------------------------------------
# Reading one line


@pytest.mark.parametrize(
    ("line", "keyword", "values"),
    [
        ("Port 2222", "port", ("2222",)),
        ("port=2222", "port", ("2222",)),
        ("PORT = 2222", "port", ("2222",)),
        ("  \tPort\t2222  \t", "port", ("2222",)),
        ('"Port" 2222', "port", ("2222",)),
        ("User bob # a comment", "user", ("bob",)),
        ("User bob#not-a-comment", "user", ("bob#not-a-comment",)),
        ('IdentityFile "~/my keys/id"', "identityfile", ("~/my keys/id",)),
        ("IdentityFile '~/my keys/id'", "identityfile", ("~/my keys/id",)),
        (r"IdentityFile ~/my\ keys/id", "identityfile", ("~/my keys/id",)),
        (r"IdentityFile C:\keys\id", "identityfile", (r"C:\keys\id",)),
        # The rest of the line as written, quotes and comments included.
        (
            'ProxyCommand ssh -W "%h:%p" gw # via gw',
            "proxycommand",
            ('ssh -W "%h:%p" gw # via gw',),
        ),
        ("ProxyCommand=nc %h %p", "proxycommand", ("nc %h %p",)),
        ("RemoteForward 8080 localhost:80", "remoteforward", ("8080:localhost:80",)),
        ("SendEnv LANG LC_*", "sendenv", ("LANG", "LC_*")),
        ("ChallengeResponseAuthentication no", "kbdinteractiveauthentication", ("no",)),
        ("PubkeyAcceptedKeyTypes +ssh-rsa", "pubkeyacceptedalgorithms", ("+ssh-rsa",)),
        ("UserKnownHostsFile ~/a /b", "userknownhostsfile", ("~/a", "/b")),
    ],
)
def test_a_line_is_split_as_ssh_splits_it(
    tmp_path: Path, line: str, keyword: str, values: tuple[str, ...]
) -> None:
    resolved = read(tmp_path, line + "\n")
    assert resolved.values(keyword) == values
    (entry,) = resolved.get_all(keyword)
    assert (entry.file, entry.line, entry.written) == (
        str(tmp_path / "config"),
        1,
        line.strip().split()[0].split("=")[0].strip('"'),
    )


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# only a comment\n", "   # indented comment\n", "\t\n", "\r\n"],
)
def test_blank_lines_and_comments_set_nothing(tmp_path: Path, text: str) -> None:
    resolved = read(tmp_path, text)
    assert resolved.entries == ()
    assert (resolved.host, resolved.user, resolved.port) == ("gw", "alice", 22)


# --------------------------------------------------------------------------------------
# First value wins, or values accumulate


@pytest.mark.parametrize(
    ("text", "keyword", "values"),
    [
        ("Port 1\nPort 2\n", "port", ("1",)),
        ("Host *\n User a\nHost gw\n User b\n", "user", ("a",)),
        ("Host gw\n User b\nHost *\n User a\n", "user", ("b",)),
        ("UserKnownHostsFile /a /b\nUserKnownHostsFile /c\n", "userknownhostsfile", ("/a", "/b")),
        ("IdentityFile /a\nIdentityFile /b\nIdentityFile /a\n", "identityfile", ("/a", "/b")),
        ("CertificateFile /c1\nCertificateFile /c2\n", "certificatefile", ("/c1", "/c2")),
        (
            "RemoteForward 1 h:1\nRemoteForward 2 h:2\nRemoteForward 1 h:1\n",
            "remoteforward",
            ("1:h:1", "2:h:2"),
        ),
        # LocalForward and DynamicForward share ssh's list of local forwards.
        ("LocalForward 5 h:5\nDynamicForward 6\n", "dynamicforward", ("6",)),
        ("SendEnv A B C\nSendEnv -B\nSendEnv D\n", "sendenv", ("A", "C", "D")),
        ("SendEnv A_1 A_2 B\nSendEnv -A_*\n", "sendenv", ("B",)),
        # SetEnv: the first line wins whole; a name repeated in it is dropped.
        ("SetEnv A=1 B=2 A=3\nSetEnv C=4\n", "setenv", ("A=1", "B=2")),
        # A time of "none" is ssh's "unset": a later line still sets it.
        ("ConnectTimeout none\nConnectTimeout 7\n", "connecttimeout", ("7",)),
        # Of ProxyCommand and ProxyJump, the first one written wins.
        ("ProxyJump j1\nProxyCommand nc %h %p\n", "proxyjump", ("j1",)),
        ("ProxyCommand nc %h %p\nProxyJump j1\n", "proxycommand", ("nc %h %p",)),
        ("ProxyCommand nc %h %p\nProxyJump j1\n", "proxyjump", ()),
        # ...but "ProxyJump none" does not hold a later ProxyCommand off (ssh 9.2's -G).
        ("ProxyJump none\nProxyCommand nc %h %p\n", "proxycommand", ("nc %h %p",)),
        ("ProxyJump none\nProxyJump j1\n", "proxyjump", ("none",)),
        # ssh quirks kept: SyslogFacility ignores Host blocks; StreamLocalBindMask's last wins.
        (
            "Host other\n SyslogFacility LOCAL3\nHost *\n SyslogFacility USER\n",
            "syslogfacility",
            ("LOCAL3",),
        ),
        ("StreamLocalBindMask 0111\nStreamLocalBindMask 0222\n", "streamlocalbindmask", ("0222",)),
    ],
)
def test_first_value_wins_or_values_accumulate(
    tmp_path: Path, text: str, keyword: str, values: tuple[str, ...]
) -> None:
    assert read(tmp_path, text).values(keyword) == values


def test_an_identity_file_from_the_system_file_is_no_duplicate_of_the_users(
    tmp_path: Path,
) -> None:
    # readconf.c add_identity_file compares the path and whether a user file gave it.
    user = config(tmp_path, "IdentityFile ~/.ssh/k\n", "user")
    system = config(tmp_path, "IdentityFile ~/.ssh/k\nIdentityFile ~/.ssh/k\n", "system")
    resolved = resolve(
        "gw", user_file=str(user), system_file=str(system), home=str(tmp_path), environ={}
    )
    assert [(e.file, e.line) for e in resolved.get_all("identityfile")] == [
        (str(user), 1),
        (str(system), 1),
    ]


def test_rekeylimit_takes_its_interval_from_the_first_line_that_gives_one(
    tmp_path: Path,
) -> None:
    resolved = read(tmp_path, "RekeyLimit 1G\nRekeyLimit 2G 1h\nRekeyLimit 3G 2h\n")
    assert [(e.values, e.line) for e in resolved.get_all("rekeylimit")] == [
        (("1G",), 1),
        (("2G", "1h"), 2),
    ]
    assert "rekeylimit 1073741824 3600" in format_like_ssh_G(resolved)


# --------------------------------------------------------------------------------------
# Host and Match


@pytest.mark.parametrize(
    ("patterns", "host", "applies"),
    [
        ("gw", "gw", True),
        ("gw", "GW", False),  # Host patterns are case-sensitive in the first pass
        ("g?", "gw", True),
        ("g?", "gww", False),
        ("*", "anything", True),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("a b gw", "gw", True),
        ("* !gw", "gw", False),
        ("!gw *", "gw", False),
        ("* !gw", "other", True),
        ("!gw", "other", False),  # a negation alone matches nothing
        ("*.com !*.example.com", "x.example.com", False),
        ("*.com !*.example.com", "x.other.com", True),
    ],
)
def test_host_patterns(tmp_path: Path, patterns: str, host: str, applies: bool) -> None:
    resolved = read(tmp_path, f"Host {patterns}\n  Port 2222\n", host)
    assert (resolved.port == 2222) is applies


@dataclass
class Runner:
    """A ``Match exec`` runner that records the commands and answers from a table."""

    answers: Mapping[str, int] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def __call__(self, command: str) -> int:
        self.commands.append(command)
        return self.answers.get(command, 1)


@pytest.mark.parametrize(
    ("match", "destination", "applies"),
    [
        ("all", "gw", True),
        ("!all", "gw", False),
        ("host gw", "gw", True),
        ("host GW", "gw", True),  # Match host is case-insensitive
        ("host gw", "GW", True),
        ("host a,gw", "gw", True),
        ("host *,!gw", "gw", False),
        ("!host gw", "gw", False),
        ("originalhost gw", "gw", True),
        ("user alice", "gw", True),
        ("user bob", "bob@gw", True),
        ("user al*", "gw", True),
        ("localuser alice", "bob@gw", True),
        ("localuser bob", "bob@gw", False),
        ("host gw user alice", "gw", True),
        ("host gw user bob", "gw", False),
        ("host=gw", "gw", True),
        ('host "gw"', "gw", True),
        ("canonical", "gw", False),  # the first pass is not canonical
        ("!canonical", "gw", True),
        ("final", "gw", True),  # ...but "final" asks for a second pass, which is
        ("host gw # comment", "gw", True),
    ],
)
def test_match_criteria(tmp_path: Path, match: str, destination: str, applies: bool) -> None:
    resolved = read(tmp_path, f"Match {match}\n  Port 2222\n", destination)
    assert (resolved.port == 2222) is applies


def test_match_host_sees_the_hostname_and_originalhost_the_name_given(tmp_path: Path) -> None:
    text = (
        "Host gw\n  HostName Real.Example.COM\n"
        "Match host real.example.com\n  User byhost\n"
        "Match originalhost gw\n  Port 2200\n"
        "Match host gw\n  IdentityFile /never\n"
    )
    resolved = read(tmp_path, text)
    assert (resolved.host, resolved.user, resolved.port) == ("real.example.com", "byhost", 2200)
    assert resolved.values("identityfile") == ()


@pytest.mark.parametrize(
    "line",
    ["CanonicalizeHostname yes", "CanonicalizeMaxDots 3", "CanonicalizeFallbackLocal no"],
)
def test_the_second_pass_cannot_set_what_canonicalisation_fixed(tmp_path: Path, line: str) -> None:
    # ssh.c fills these three in between the passes (found by the generated comparison).
    resolved = read(tmp_path, f"Match final\n  {line}\n  Port 2\n")
    assert resolved.final_pass
    assert resolved.port == 2
    assert resolved.get(line.split()[0]) is None
    assert read(tmp_path, f"{line}\n").get(line.split()[0]) is not None


def test_match_final_reads_the_files_again_with_the_hostname(tmp_path: Path) -> None:
    text = (
        "Host gw\n  HostName %h.example.com\n  SendEnv A\n"
        "Host gw.example.com\n  User second\n  HostName ignored.example.com\n"
        "Match final host gw.example.com\n  Port 2022\n"
        "Match !final\n  IdentityFile /first-pass-only\n"
        "Host *\n  SendEnv B\n"
    )
    resolved = read(tmp_path, text)
    assert resolved.final_pass
    assert (resolved.host, resolved.user, resolved.port) == ("gw.example.com", "second", 2022)
    assert resolved.values("identityfile") == ("/first-pass-only",)
    # Host gw does not match in the second pass; Host * adds B again, as ssh does.
    assert resolved.values("sendenv") == ("A", "B", "B")
    assert len(resolved.files) == 2


@pytest.mark.parametrize(
    ("match", "answers", "applies", "ran"),
    [
        ("exec true", {"true": 0}, True, ["true"]),
        ("exec false", {}, False, ["false"]),
        ("!exec false", {}, True, ["false"]),
        ('exec "test %h = gw"', {"test gw = gw": 0}, True, ["test gw = gw"]),
        (
            "exec %%%n:%p:%r:%u:%d:%i:%L:%l",
            {},
            False,
            ["%gw:22:alice:alice:HOME:1000:box:box.example.org"],
        ),
        # A criterion that already failed skips the command, as ssh does.
        ("host other exec true", {"true": 0}, False, []),
        ("exec true host other", {"true": 0}, False, ["true"]),
    ],
)
def test_match_exec_runs_through_the_runner_given(
    tmp_path: Path, match: str, answers: dict[str, int], applies: bool, ran: list[str]
) -> None:
    runner = Runner(answers)
    resolved = read(tmp_path, f"Match {match}\n  Port 2222\n", run=runner)
    assert (resolved.port == 2222) is applies
    assert [c.replace(str(tmp_path), "HOME") for c in runner.commands] == ran


def test_match_exec_needs_a_runner(tmp_path: Path) -> None:
    message = refusal(tmp_path, "Match exec true\n  Port 2\n")
    assert message == (
        f'{tmp_path}/config line 1: Match exec "true" needs a command runner: '
        "pass run=run_in_shell to run it as ssh would"
    )


def test_run_in_shell_returns_the_exit_status() -> None:
    assert run_in_shell("exit 0") == 0
    assert run_in_shell("exit 3") == 3
    assert run_in_shell("kill -9 $$") == -1


def test_match_exec_with_the_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    text = f'Match exec "test -e {marker}"\n  Port 2222\n'
    assert read(tmp_path, text, run=run_in_shell).port == 22
    marker.touch()
    assert read(tmp_path, text, run=run_in_shell).port == 2222


# --------------------------------------------------------------------------------------
# Include


def test_include_globs_in_order_relative_to_dot_ssh(tmp_path: Path) -> None:
    conf_d = tmp_path / ".ssh" / "conf.d"
    config(conf_d, "IdentityFile /b\nPort 2\n", "b.conf")
    config(conf_d, "IdentityFile /a\nPort 1\n", "a.conf")
    config(conf_d, "IdentityFile /ignored\n", "c.txt")
    resolved = read(tmp_path, "Include conf.d/*.conf\nIdentityFile /after\n")
    assert resolved.values("identityfile") == ("/a", "/b", "/after")
    assert resolved.port == 1
    assert resolved.get("port") is not None
    assert resolved.get("port").file == str(conf_d / "a.conf")  # type: ignore[union-attr]


def test_include_of_nothing_is_no_error(tmp_path: Path) -> None:
    resolved = read(tmp_path, "Include /nonexistent/*.conf ~/missing\nPort 3\n")
    assert resolved.port == 3


def test_an_include_in_a_block_that_does_not_apply_is_read_but_not_applied(
    tmp_path: Path,
) -> None:
    inner = config(tmp_path, "Port 1\nHost *\n  User inner\n", "inner")
    resolved = read(tmp_path, f"Host other\n  Include {inner}\nHost gw\n  Include {inner}\n")
    assert (resolved.port, resolved.user) == (1, "inner")
    assert [e.line for e in resolved.get_all("port")] == [1]
    # Host other: read (a mistake there is still an error) but not applied.
    assert resolved.files.count(str(inner)) == 2
    config(tmp_path, "Port x\n", "inner")
    assert "inner line 1: Bad port 'x'." in refusal(tmp_path, f"Host other\n  Include {inner}\n")


def test_a_match_in_an_included_file_does_not_leak_out(tmp_path: Path) -> None:
    inner = config(tmp_path, "Match host nothing\n", "inner")
    resolved = read(tmp_path, f"Host gw\n  Include {inner}\n  Port 5\n")
    assert resolved.port == 5


def test_includes_nest_sixteen_deep_and_no_deeper(tmp_path: Path) -> None:
    def chain(depth: int) -> str:
        for level in range(depth, 0, -1):
            config(tmp_path, f"Include {tmp_path}/level{level + 1}\n", f"level{level}")
        config(tmp_path, "Port 16\n", f"level{depth + 1}")
        return f"Include {tmp_path}/level1\n"

    assert read(tmp_path, chain(15)).port == 16
    assert refusal(tmp_path, chain(16)) == "Too many recursive configuration includes"


def test_an_include_loop_ends_at_the_depth_limit(tmp_path: Path) -> None:
    message = refusal(tmp_path, f"Include {tmp_path}/config\n")
    assert message == "Too many recursive configuration includes"


def test_an_included_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    inner = config(tmp_path, "Port 1\n", "inner")
    inner.chmod(0o666)
    message = refusal(tmp_path, f"Include {inner}\n")
    assert message == f"Bad owner or permissions on {inner}"


def test_the_user_file_writable_by_others_is_refused_but_not_with_dash_f(
    tmp_path: Path,
) -> None:
    path = config(tmp_path, "Port 1\n", "user")
    path.chmod(0o620)
    with pytest.raises(SSHConfigError, match=f"^Bad owner or permissions on {path}$"):
        resolve("gw", user_file=str(path), system_file="/nonexistent", environ={})
    assert resolve("gw", config_file=str(path), environ={}).port == 1


def test_a_system_file_may_not_include_from_home(tmp_path: Path) -> None:
    system = config(tmp_path, "Include ~/x\n", "system")
    with pytest.raises(SSHConfigError) as caught:
        resolve("gw", user_file="/nonexistent", system_file=str(system), environ={})
    assert str(caught.value) == (
        f"{system} line 1: bad include path ~/x.\n"
        f"{system}: terminating, 1 bad configuration options"
    )


def test_a_system_files_relative_include_is_in_the_system_directory(tmp_path: Path) -> None:
    config(tmp_path / "etc", "Port 7\n", "conf.d/x.conf")
    system = config(tmp_path / "etc", "Include conf.d/*.conf\n", "ssh_config")
    resolved = resolve(
        "gw",
        user_file="/nonexistent",
        system_file=str(system),
        system_dir=str(tmp_path / "etc"),
        environ={},
    )
    assert resolved.port == 7


def test_files_are_read_in_ssh_order(tmp_path: Path) -> None:
    user = config(tmp_path, "User fromuser\n", "user")
    system = config(tmp_path, "User fromsystem\nPort 2\n", "system")
    both = resolve(
        "gw",
        command_line=["Port 1", "IdentityFile=/cmd"],
        user_file=str(user),
        system_file=str(system),
        environ={},
    )
    assert (both.user, both.port, both.files) == ("fromuser", 1, (str(user), str(system)))
    assert both.get("port").where == "command-line line 0"  # type: ignore[union-attr]
    # -F replaces both files; -F none reads nothing.
    only = resolve("gw", config_file=str(system), user_file=str(user), environ={})
    assert only.files == (str(system),)
    assert resolve("gw", config_file="none", environ={}).entries == ()
    # The destination's user comes after -o and before the files.
    assert resolve("bob@gw", user_file=str(user), system_file=str(system)).user == "bob"
    assert resolve("bob@gw", command_line=["User carol"], config_file="none").user == "carol"
    uri = resolve("ssh://dave@gw:2022", user_file=str(user), system_file=str(system))
    assert (uri.user, uri.host, uri.port) == ("dave", "gw", 2022)


def test_the_default_user_file_is_in_home(tmp_path: Path) -> None:
    config(tmp_path / ".ssh", "Port 4\n", "config")
    resolved = resolve("gw", home=str(tmp_path), system_file="/nonexistent", environ={})
    assert (resolved.port, resolved.files) == (4, (str(tmp_path / ".ssh" / "config"),))


# --------------------------------------------------------------------------------------
# HostName, tokens, ~ and ${VAR}


@pytest.mark.parametrize(
    ("hostname", "destination", "host"),
    [
        ("%h.example.com", "gw", "gw.example.com"),
        ("Real.Example.COM", "gw", "real.example.com"),
        ("%%h", "gw", "%h"),
        ("10.0.0.1", "gw", "10.0.0.1"),
        ("::1", "gw", "::1"),
        ("0:0::1", "gw", "::1"),  # an address in getnameinfo's form
        (None, "GW", "gw"),
        (None, "[::1]", "[::1]"),
    ],
)
def test_hostname(tmp_path: Path, hostname: str | None, destination: str, host: str) -> None:
    text = f"HostName {hostname}\n" if hostname else ""
    assert read(tmp_path, text, destination).host == host


def test_tokens_are_expanded_where_ssh_expands_them(tmp_path: Path) -> None:
    text = (
        "Host gw\n"
        "  HostName gw.example.com\n  User bob\n  Port 2222\n  HostKeyAlias GwAlias\n"
        "  IdentityFile ~/.ssh/id_%h_%r_%p_%n_%k\n"
        "  IdentityFile ${KEYS}/%u-%i-%%\n"
        "  CertificateFile %d/cert-%L-%l\n"
        "  ControlPath ~/.ssh/cm-%C\n"
        "  UserKnownHostsFile ~/kh-%h /abs\n"
        "  GlobalKnownHostsFile ~/global\n"
        "  ProxyCommand nc %h %p %r %n %k %%\n"
        "  LocalCommand echo %T %h\n"
        "  RemoteCommand echo %u@%l\n"
        "  IdentityAgent ${SOCK}\n"
    )
    resolved = read(tmp_path, text, environ={"KEYS": "/keys", "SOCK": "/run/agent"})
    home = str(tmp_path)
    assert resolved.expanded("identityfile") == (
        f"{home}/.ssh/id_gw.example.com_bob_2222_gw_gwalias",
        "/keys/alice-1000-%",
    )
    assert resolved.expanded("certificatefile") == (f"{home}/cert-box-box.example.org",)
    connection = "box.example.org" + "gw.example.com" + "2222" + "bob"
    import hashlib

    digest = hashlib.sha1(connection.encode()).hexdigest()
    assert resolved.expanded("controlpath") == (f"{home}/.ssh/cm-{digest}",)
    assert resolved.expanded("userknownhostsfile") == (f"{home}/kh-gw.example.com", "/abs")
    assert resolved.expanded("globalknownhostsfile") == (f"{home}/global",)
    assert resolved.expanded("proxycommand") == ("nc gw.example.com 2222 bob gw gwalias %",)
    assert resolved.expanded("localcommand") == ("echo NONE gw.example.com",)
    assert resolved.expanded("localcommand", tun_device="tun0") == ("echo tun0 gw.example.com",)
    assert resolved.expanded("remotecommand") == ("echo alice@box.example.org",)
    assert resolved.expanded("identityagent") == ("/run/agent",)
    # Not expanded: ssh uses the raw value.
    assert resolved.values("identityfile")[0] == "~/.ssh/id_%h_%r_%p_%n_%k"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("IdentityFile ~/%x", "IdentityFile: unknown key %x"),
        ("IdentityFile ~/%", "IdentityFile: invalid format"),
        ("IdentityFile ${NOPE}/k", "IdentityFile: env var ${NOPE} has no value"),
        ("ProxyCommand nc %u", "ProxyCommand: unknown key %u"),
    ],
)
def test_a_bad_token_is_an_error_naming_the_line(tmp_path: Path, line: str, message: str) -> None:
    resolved = read(tmp_path, line + "\n")
    keyword = line.split()[0]
    with pytest.raises(SSHConfigError) as caught:
        resolved.expanded(keyword)
    assert str(caught.value) == f"{tmp_path}/config line 1: {message}"


def test_forwards_as_ssh_parsed_them(tmp_path: Path) -> None:
    text = (
        "RemoteForward 8080 localhost:80\n"
        "RemoteForward [::1]:0 [fe80::1]:22\n"
        "RemoteForward *:9000\n"
        "RemoteForward /srv/%h.sock /run/app.sock\n"
        "LocalForward ${PORT} 127.0.0.1:${PORT}\n"
    )
    resolved = read(tmp_path, text, environ={"PORT": "5432"})
    assert resolved.forwards("remoteforward") == (
        Forward(None, 8080, None, "localhost", 80, None),
        Forward("::1", 0, None, "fe80::1", 22, None),
        Forward("*", 9000, None, "socks", 0, None),
        Forward(None, -2, "/srv/gw.sock", None, -2, "/run/app.sock"),
    )
    assert resolved.forwards("localforward") == (
        Forward(None, 5432, None, "127.0.0.1", 5432, None),
    )


# --------------------------------------------------------------------------------------
# Mistakes, with ssh's words


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        ("Bogus yes\n", ["F: line 1: Bad configuration option: bogus"]),
        ("Port\n", ['F line 1: no argument after keyword "port"']),
        ("Port nope\n", ["F line 1: Bad port 'nope'."]),
        ("Port 0\n", ["F line 1: Bad port '0'."]),
        ("Port 1 2\n", ["F line 1: keyword port extra arguments at end of line"]),
        ("User 'bob\n", ["F line 1: invalid quotes"]),
        ("Compression maybe\n", ['F line 1: unsupported option "maybe".']),
        ("ServerAliveInterval 5x\n", ["F line 1: invalid time value."]),
        ("ServerAliveCountMax -1\n", ["F line 1: integer value too small."]),
        ("ServerAliveCountMax x\n", ["F line 1: integer value invalid."]),
        ("RemoteForward 8080 localhost\n", ["F line 1: Bad forwarding specification."]),
        ("LocalForward 8080\n", ["F line 1: Missing target argument."]),
        ("RekeyLimit 8\n", ["F line 1: RekeyLimit too small"]),
        ("RekeyLimit 1Q\n", ["F line 1: Bad number '1Q': Invalid argument"]),
        ("SendEnv A=1\n", ["F line 1: Invalid environment name."]),
        ("SetEnv A\n", ["F line 1: Invalid SetEnv."]),
        (
            "UserKnownHostsFile none /b\n",
            ['F line 1: keyword userknownhostsfile "none" argument must appear alone.'],
        ),
        ("ProxyJump a@\n", ['F line 1: Invalid ProxyJump "a@"']),
        ("EscapeChar ab\n", ["F line 1: Bad escape character."]),
        ("LogLevel LOUD\n", ["F line 1: unsupported log level 'LOUD'"]),
        ("FingerprintHash crc\n", ['F line 1: Invalid hash algorithm "crc".']),
        ("IdentityAgent ${NOPE}\n", ["F line 1: Invalid environment expansion ${NOPE}."]),
        ("CanonicalDomains -bad\n", ['F line 1: domain name "-bad" starts with invalid character']),
        ("Match\n", ['F line 1: no argument after keyword "match"']),
        ("Match nope x\n", ["F line 1: Bad Match condition: Unsupported Match attribute nope"]),
        ("Match host\n", ["F line 1: Bad Match condition: Missing Match criteria for host"]),
        (
            "Match all host x\n",
            ["F line 1: Bad Match condition: 'all' cannot be combined with other Match attributes"],
        ),
        (
            "Match # nothing\n",
            ["F line 1: Bad Match condition: One or more attributes required for Match"],
        ),
        ('Host ""\n', ["F line 1: keyword host empty argument"]),
        # Every bad line is named, in an inactive block too, then ssh's summary.
        (
            "Host nothing\n  Port x\n  Bogus 1\nPort 2\n  Cipher 3des\n"
            "  KerberosAuthentication yes\n",
            ["F line 2: Bad port 'x'.", "F: line 3: Bad configuration option: bogus"],
        ),
    ],
)
def test_a_mistake_is_named_with_file_and_line(
    tmp_path: Path, text: str, messages: list[str]
) -> None:
    message = refusal(tmp_path, text)
    path = str(tmp_path / "config")
    expected = [m.replace("F", path, 1) for m in messages]
    expected.append(f"{path}: terminating, {len(messages)} bad configuration options")
    assert message.splitlines() == expected
    with pytest.raises(SpecError):  # one family with the command line's errors
        read(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PermitRemoteOpen host\n", "F line 1: bad port number in permitremoteopen"),
        ("PermitRemoteOpen host/1\n", "F line 1: missing host in permitremoteopen"),
        ("PermitRemoteOpen #\n", "F line 1: missing permitremoteopen specification"),
    ],
)
def test_what_ssh_finds_fatal_stops_reading(tmp_path: Path, text: str, message: str) -> None:
    assert refusal(tmp_path, text) == message.replace("F", str(tmp_path / "config"), 1)


@pytest.mark.parametrize(
    ("text", "destination", "message"),
    [
        ("ConnectionAttempts 0\n", "gw", "Invalid number of ConnectionAttempts"),
        ("ProxyJump gw\n", "gw", "jumphost loop via gw"),
        ("ProxyJump alice@gw:22\n", "gw", "jumphost loop via gw"),
        ("Host gw\n  HostName real\nProxyJump real\n", "gw", "jumphost loop via real"),
        (
            "ProxyCommand -\nProxyUseFDPass yes\n",
            "gw",
            "ProxyCommand=- and ProxyUseFDPass are incompatible",
        ),
    ],
)
def test_what_ssh_refuses_of_the_values_together(
    tmp_path: Path, text: str, destination: str, message: str
) -> None:
    assert refusal(tmp_path, text, destination) == message


@pytest.mark.parametrize(
    "text",
    [
        "ConnectionAttempts 1\n",
        "ProxyJump GW\n",  # ssh compares the names as written
        "ProxyJump gw:2222\n",
        "ProxyJump bob@gw\n",
        "ProxyJump none\n",
        "ProxyCommand -\n",
    ],
)
def test_what_ssh_accepts_of_the_values_together(tmp_path: Path, text: str) -> None:
    assert read(tmp_path, text).entries


def test_a_message_shows_bytes_as_ssh_does(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_bytes(b'Port 2\xff\nPort "a\\\\b\x01\x1b\r\x7f\t"\n')
    path.chmod(0o600)
    with pytest.raises(SSHConfigError) as caught:
        resolve("gw", config_file=str(path), environ={})
    assert str(caught.value).splitlines() == [
        f"{path} line 1: Bad port '2\\377'.",
        f"{path} line 2: Bad port 'a\\\\b\\001\\033\\015\\177\t'.",
        f"{path}: terminating, 2 bad configuration options",
    ]


def test_a_directory_reads_as_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    assert resolve("gw", config_file=str(tmp_path / "conf.d"), environ={}).entries == ()
    resolved = read(tmp_path, f"Include {tmp_path}/conf.d\nPort 3\n")
    assert resolved.files == (str(tmp_path / "config"), str(tmp_path / "conf.d"))
    assert resolved.port == 3


def test_an_included_dangling_link_is_skipped_as_ssh_skips_it(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "dangling").symlink_to(tmp_path / "nowhere")
    text = f"Include {tmp_path}/inc/dangling\nInclude {tmp_path}/inc/*\nPort 3\n"
    assert read(tmp_path, text).port == 3


def test_a_missing_dash_f_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SSHConfigError) as caught:
        resolve("gw", config_file=str(tmp_path / "missing"))
    assert str(caught.value) == (
        f"Can't open user config file {tmp_path}/missing: No such file or directory"
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("Bogus=1", "command-line: line 0: Bad configuration option: bogus"),
        ("Port=x", "command-line line 0: Bad port 'x'."),
        ("Host=x", "Host directive not supported as a command-line option"),
        ("Include=x", "Include directive not supported as a command-line option"),
    ],
)
def test_a_bad_command_line_option(option: str, message: str) -> None:
    with pytest.raises(SSHConfigError) as caught:
        resolve("gw", command_line=[option], config_file="none")
    assert str(caught.value) == message


def test_ignored_keywords_are_reported_not_applied(tmp_path: Path) -> None:
    text = (
        "Protocol 2\nCipher blowfish\nUseRoaming no\nKerberosAuthentication yes\n"
        "IgnoreUnknown UseKeychain,Add*\nUseKeychain yes\nAddTrust 1\n"
    )
    resolved = read(tmp_path, text)
    assert [(i.keyword, i.line, i.reason) for i in resolved.ignored] == [
        ("protocol", 1, "Ignored option"),
        ("cipher", 2, "Deprecated option"),
        ("useroaming", 3, "Deprecated option"),
        ("kerberosauthentication", 4, "Unsupported option"),
        ("usekeychain", 6, "Ignored unknown option"),
        ("addtrust", 7, "Ignored unknown option"),
    ]
    assert resolved.ignored[3].message == (
        f'{tmp_path}/config line 4: Unsupported option "kerberosauthentication"'
    )
    assert [e.keyword for e in resolved.entries] == ["ignoreunknown"]
    # IgnoreUnknown must come first: it only covers the lines after it.
    assert "Bad configuration option: usekeychain" in refusal(
        tmp_path, "UseKeychain yes\nIgnoreUnknown UseKeychain\n"
    )


def test_not_in_names_what_a_caller_does_not_implement(tmp_path: Path) -> None:
    resolved = read(tmp_path, "Port 2\nForwardX11 yes\nChallengeResponseAuthentication no\n")
    assert [e.keyword for e in resolved.not_in({"port", "KbdInteractiveAuthentication"})] == [
        "forwardx11"
    ]


def test_the_keyword_table_is_ssh_s(openssh_ssh: str) -> None:
    """Every keyword and alias of the table is one this machine's ssh accepts."""
    names = [name for keyword in KEYWORDS for name in (keyword.name, *keyword.aliases)]
    # readconf.c keywords[] of 9.2p1 has 122 names; Debian's patches add 8.
    assert len(names) == len(set(names)) == 130
    # Each as -o: ssh refuses an unknown one with "Bad configuration option".
    refused = []
    for name in names:
        if name in ("host", "match", "include"):
            continue
        value = {"sendenv": "A", "setenv": "A=1"}.get(name, "x")
        done = subprocess.run(
            [openssh_ssh, "-G", "-F", "/dev/null", "-o", f"{name}={value}", "gw"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if "Bad configuration option" in done.stderr:
            refused.append(name)
    assert refused == []


# --------------------------------------------------------------------------------------
# The same files through the real ssh -G


@pytest.fixture(scope="module")
def ssh_g(openssh_ssh: str) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    version = subprocess.run(
        [openssh_ssh, "-V"], capture_output=True, text=True, check=False
    ).stderr.strip()
    if not version.startswith(SSH_VERSION):
        pytest.skip(f"the comparison is with {SSH_VERSION}, this ssh is {version}")

    def run(
        path: Path, destination: str, home: Path, *options: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssh_ssh, "-G", "-F", str(path), *options, destination],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(home)},
            check=False,
            timeout=30,
        )

    yield run


def by_keyword(lines: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for line in lines:
        keyword, _, value = line.partition(" ")
        grouped.setdefault(keyword.lower(), []).append(value)
    return grouped


def ssh_refusal(stderr: str) -> list[str]:
    """
    ssh's refusal in the reader's form. Left out: the tty notice, and the "Unsupported
    option" lines ssh logs and reads on after (the reader returns those as ignored). ssh
    gives a bad Match line as two lines, the reason (without the line's name for most
    reasons) then "FILE line N: Bad Match condition"; the reader gives one.
    """
    lines: list[str] = []
    for line in stderr.splitlines():
        if "Pseudo-terminal" in line or 'Unsupported option "' in line:
            continue
        if line.endswith(": Bad Match condition") and lines:
            where = line.removesuffix(": Bad Match condition")
            reason = lines.pop().removeprefix(f"{where}: ")
            line = f"{line}: {reason}"
        lines.append(line)
    return lines


# Keywords whose value ssh -G prints merged with its build's lists when the file changes
# it with +, - or ^: format_like_ssh_G leaves them out.
ALGORITHM_LISTS = {
    "ciphers",
    "macs",
    "kexalgorithms",
    "hostkeyalgorithms",
    "pubkeyacceptedalgorithms",
    "hostbasedacceptedalgorithms",
    "casignaturealgorithms",
    "gssapikexalgorithms",
}


def compare_with_ssh(
    ssh_g: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    path: Path,
    destination: str,
    *options: str,
) -> int:
    """
    ``ssh -G`` and :func:`format_like_ssh_G` on the same file agree on every keyword the
    reader prints, and the reader prints every keyword whose ``ssh -G`` line the file
    changed. Returns how many keywords were compared.
    """
    done = ssh_g(path, destination, tmp_path, *options)
    command_line = [options[i + 1] for i in range(0, len(options), 2) if options[i] == "-o"]
    try:
        resolved = resolve(
            destination,
            config_file=str(path),
            command_line=command_line,
            environ={**os.environ, "HOME": str(tmp_path)},
            run=run_in_shell,
        )
    except SSHConfigError as error:
        assert done.returncode == 255, f"rtunnel refused, ssh did not: {error}"
        assert str(error).splitlines() == ssh_refusal(done.stderr)
        return 0
    assert done.returncode == 0, f"ssh refused, rtunnel did not: {done.stderr}"
    ours = by_keyword(format_like_ssh_G(resolved))
    theirs = by_keyword(done.stdout.splitlines())
    differing = {k: (v, theirs.get(k)) for k, v in ours.items() if theirs.get(k) != v}
    assert not differing, f"(ours, ssh's) for {path.read_text()!r}"
    defaults = by_keyword(ssh_g(Path("/dev/null"), destination, tmp_path).stdout.splitlines())
    changed = {k for k, v in theirs.items() if defaults.get(k) != v}
    missing = changed - set(ours) - ALGORITHM_LISTS - DERIVED_DEFAULTS
    assert not missing, f"ssh -G shows these set, the reader does not: {missing}"
    return len(ours)


# Keywords whose default ssh derives from others: UpdateHostKeys is "true" only with the
# default UserKnownHostsFile and VerifyHostKeyDNS off (readconf.c fill_default_options),
# so a file setting those changes its ssh -G line without setting it.
# BatchMode yes makes an unset ServerAliveInterval 300 (fill_default_options).
DERIVED_DEFAULTS = {"updatehostkeys", "serveraliveinterval"}


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    destination: str = "gw"
    includes: Mapping[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()


CASES = [
    Case("empty", ""),
    Case(
        "first wins across blocks",
        "Host gw\n  User first\n  Port 2222\nHost *\n  User second\n  Port 22\n"
        "  IdentitiesOnly yes\n  ServerAliveInterval 1m30s\n  ServerAliveCountMax 5\n",
    ),
    Case(
        "negation",
        "Host * !gw\n  User notgw\nHost !x *.example.com gw\n  Port 2200\n",
    ),
    Case("negation other", "Host * !gw\n  User notgw\n", "other"),
    Case("case of Host", "Host gw\n  Port 1\nHost GW\n  Port 2\n", "GW"),
    Case(
        "hostname tokens",
        "Host gw\n  HostName %h.Example.COM\nMatch host gw.example.com\n  User viahost\n"
        "Match originalhost gw\n  Port 2022\n",
    ),
    Case("hostname address", "Host gw\n  HostName 0:0::1\n"),
    Case("numeric host", "Host *\n  Port 2\n", "127.0.0.1"),
    Case(
        "match final",
        "Host gw\n  HostName gw.example.com\n  SendEnv A\nHost gw.example.com\n  User second\n"
        "Match final host gw.example.com\n  Port 2022\nMatch !final\n  IdentityFile /first\n"
        "Host *\n  SendEnv B\n  IdentityFile /all\n",
    ),
    Case(
        "match canonical",
        "Match canonical\n  User canon\nMatch !canonical\n  Port 2\nMatch final\n  Port 3\n",
    ),
    Case(
        "canonicalisation options in the second pass",
        "Match final\n  CanonicalizeHostname yes\n  CanonicalizeMaxDots 3\n"
        "  CanonicalizeFallbackLocal no\n  User second\n",
    ),
    Case(
        "canonicalize hostname without domains",
        "CanonicalizeHostname yes\nMatch canonical\n  User canon\n",
    ),
    Case(
        "match exec",
        'Match exec "test %h = gw" host gw\n  User execd\nMatch exec false\n  Port 1\n'
        "Match !exec false\n  Port 3\n",
    ),
    Case(
        "match user",
        "Match user bob\n  Port 2\nMatch localuser root\n  IdentityFile /l\n"
        "Match user al*,!alice\n  Port 3\n",
        "bob@gw",
    ),
    Case("match all", "Match all\n  Port 4\nMatch !all\n  User none\n"),
    Case(
        "forwards",
        "RemoteForward 8080 localhost:80\nRemoteForward 0 127.0.0.1:22\n"
        "RemoteForward [::1]:8081 [::1]:81\nRemoteForward *:9000\nRemoteForward 9001\n"
        "RemoteForward /tmp/remote.sock /tmp/local.sock\nRemoteForward 8082 /tmp/%h.sock\n"
        "RemoteForward 8080 localhost:80\nLocalForward 5000 db:5432\nDynamicForward 1080\n"
        "DynamicForward localhost:1081\nLocalForward 5000 db:5432\n",
    ),
    Case("clear all forwardings", "ClearAllForwardings yes\nRemoteForward 8080 localhost:80\n"),
    Case(
        "lists",
        "SendEnv LANG LC_*\nSendEnv FOO\nSendEnv -LC_*\nSetEnv A=1 B=2 A=3\nSetEnv C=3\n"
        "UserKnownHostsFile ~/.ssh/kh_%h /tmp/kh2\nUserKnownHostsFile /never\n"
        "GlobalKnownHostsFile ~/global /etc/g2\nCanonicalDomains Example.COM. b.org\n"
        "LogVerbose kex.c:*:1000\nPermitRemoteOpen localhost:80 *:443\n"
        "IdentityFile ~/.ssh/id_%h\nIdentityFile ~/.ssh/id_%h\nCertificateFile ~/c-%r\n",
    ),
    Case(
        "multistate words",
        "StrictHostKeyChecking accept-new\nPubkeyAuthentication unbound\nRequestTTY no\n"
        "ControlMaster autoask\nAddressFamily inet6\nTunnel point-to-point\n"
        "VerifyHostKeyDNS ask\nUpdateHostKeys no\nCompression yes\nBatchMode true\n"
        "CheckHostIP False\nSessionType none\nCanonicalizeHostname no\nForwardX11 YES\n",
    ),
    Case(
        "strict true",
        "StrictHostKeyChecking yes\nControlMaster yes\nRequestTTY yes\nTunnel yes\n",
    ),
    Case(
        "specials",
        "EscapeChar ^A\nIPQoS af21 cs1\nTunnelDevice 3:any\nControlPersist 10m\n"
        "AddKeysToAgent confirm 5m\nForwardAgent ~/agent-%h\nRekeyLimit 512M 2h\n"
        "StreamLocalBindMask 0077\nSyslogFacility local7\nLogLevel debug\n"
        "FingerprintHash md5\nConnectTimeout 1h\nForwardX11Timeout 2d\n",
    ),
    # With CanonicalizePermittedCNAMEs, a direct ssh looks the host up in the DNS (ssh.c
    # main, "CNAME follow rules"); through a ProxyCommand it does not.
    Case(
        "permitted cnames, proxied",
        "CanonicalizePermittedCNAMEs *.A.example:*.b.example,*.c\nProxyCommand nc %h %p\n",
    ),
    Case(
        "more specials",
        "EscapeChar none\nIPQoS 0x20\nTunnelDevice any\nControlPersist yes\n"
        "AddKeysToAgent 1h\nForwardAgent yes\nRekeyLimit default none\n"
        'EscapeChar " "\nConnectTimeout none\nConnectTimeout 5\nLogLevel DEBUG3\n',
    ),
    Case(
        "strings",
        "BindAddress 127.0.0.1\nBindInterface lo\nHostKeyAlias Gw.Alias\n"
        "IdentityAgent ~/agent.%h\nControlPath ~/.ssh/cm-%C-%r@%h:%p\n"
        "LocalCommand echo %h %T\nRemoteCommand echo %h %n %% %u %r\n"
        "PreferredAuthentications publickey,password\nRevokedHostKeys /etc/revoked\n"
        "XAuthLocation /usr/bin/xauth2\nKnownHostsCommand /bin/kh %H\n"
        "SecurityKeyProvider /lib/sk.so\nKbdInteractiveDevices pam\nIgnoreUnknown Foo*\n",
    ),
    Case("none strings", "ProxyCommand none\nControlPath none\nRemoteCommand none\n"),
    Case(
        "algorithms",
        "Ciphers aes128-ctr,aes256-ctr\nMACs hmac-sha2-256\nKexAlgorithms curve25519-sha256\n"
        "HostKeyAlgorithms ssh-ed25519\nPubkeyAcceptedAlgorithms ssh-ed25519,rsa-sha2-256\n"
        "CASignatureAlgorithms ssh-ed25519\n",
    ),
    Case("proxy command", "ProxyCommand ssh -W %h:%p jump # comment\nProxyJump j\n"),
    Case("proxy jump", "ProxyJump u@j1:2222,ssh://v@j2:2200,10.0.0.1\nProxyCommand nc\n"),
    Case("proxy jump ipv6", "ProxyJump [::1]:2200\n"),
    Case("proxy jump none", "ProxyJump none\nProxyCommand nc %h %p\n"),
    Case(
        "aliases and case",
        "CHALLENGERESPONSEAUTHENTICATION no\nkeepalive no\nIdentityFile2 /i2\n"
        "DSAAuthentication no\nPubkeyAcceptedKeyTypes ssh-ed25519\nProtocolKeepAlives 17\n"
        "GSSAPIAuthentication yes\nGSSAPIKeyExchange yes\nGSSAPITrustDNS yes\n",
    ),
    Case(
        "equals and quotes",
        'Port=2022\nUser = "bob"\nIdentityFile "/a b/c"\nHostName=\'Q.example\'\nSendEnv A\\ B C\n',
    ),
    Case(
        "include relative and glob",
        "Include conf.d/*.conf\nHost *\n  Port 9\n",
        includes={
            ".ssh/conf.d/b.conf": "Port 2\nIdentityFile /b\n",
            ".ssh/conf.d/a.conf": "Host gw\n  IdentityFile /a\n",
            ".ssh/conf.d/c.txt": "Port 3\n",
        },
    ),
    Case(
        "include inside blocks",
        "Host other\n  Include ~/inc/one\nHost gw\n  Include ~/inc/two\n  User after\n"
        "Match all\n  Include ~/inc/one\n",
        includes={"inc/one": "Port 1\nUser one\n", "inc/two": "Match host nothing\nPort 2\n"},
    ),
    Case(
        "include with match final",
        "Include ~/inc/f\n",
        includes={"inc/f": "Match final\n  Port 7\nHost gw\n  HostName real.example\n"},
    ),
    Case("command line first", "Port 3\nUser fromfile\n", options=("-o", "Port=2", "-o", "User x")),
    Case("destination user and port", "User fromfile\nPort 3\n", "ssh://bob@gw:2022"),
    Case("destination user", "User fromfile\n", "bob@gw"),
    Case("quirks", "Host other\n  SyslogFacility LOCAL3\n  StreamLocalBindMask 0111\n"),
    # Refusals: the same message lines as ssh.
    Case(
        "bad keyword", "Bogus yes\nPort x\nHost nothing\n  Port 0\n  KerberosAuthentication yes\n"
    ),
    Case("bad match", "Match nope\n"),
    Case("bad quotes", "User 'bob\n"),
    Case("extra arguments", "Port 1 2\n"),
    Case("bad forward", "RemoteForward 8080 localhost\nLocalForward 0 h:1\n"),
    Case("none alone", "UserKnownHostsFile /a none\n"),
    Case("bad include path", "Include ~/x\n", includes={"x": "Bogus 1\n"}),
    Case("bad jump", "ProxyJump a@\n"),
    Case("bad permitremoteopen", "PermitRemoteOpen host\n"),
    Case("match all combined", "Match all host x\n"),
    Case("bytes in messages", 'Port 2\u00ff\nPort "a\\\\b\x01\x1b\x7f\t"\n'),
    Case("include a directory", "Include ~/inc\nPort 3\n", includes={"inc/.keep": ""}),
    Case("no connection attempts", "ConnectionAttempts 0\n"),
    Case("jump loop", "Host gw\n  HostName Real\nProxyJump real:22\n"),
    Case("jump no loop", "ProxyJump GW\n"),
    Case("proxy command dash", "ProxyCommand -\nProxyUseFDPass yes\n"),
    Case("update host keys ask", "UpdateHostKeys ask\n"),
    Case("fd passing and a jump", "ProxyUseFDPass yes\nProxyJump j\n"),
    Case("ask, control persist", "UpdateHostKeys ask\nControlPersist 0\nControlPath /cm\n"),
    Case("ask, control path none", "UpdateHostKeys ask\nControlPersist 1\nControlPath none\n"),
    Case("ask, no tty", "UpdateHostKeys ask\nRequestTTY false\n"),
    Case("ask, remote command", "UpdateHostKeys ask\nRemoteCommand true\n"),
    Case("ask, quiet", "UpdateHostKeys ask\nLogLevel error\n"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_same_as_ssh_G(  # noqa: N802 - ssh's flag
    ssh_g: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, case: Case
) -> None:
    for name, text in case.includes.items():
        config(tmp_path, text, name)
    path = config(tmp_path, case.text, "config")
    compared = compare_with_ssh(ssh_g, tmp_path, path, case.destination, *case.options)
    set_here = {e.keyword for e in _resolved_or_none(path, case, tmp_path)}
    # Both bounds: every keyword the file sets is compared (less the ones ssh -G never
    # prints), and nothing beyond host, user, hostname, port and those.
    if compared:
        assert 4 <= compared <= 4 + len(set_here)


def _resolved_or_none(path: Path, case: Case, home: Path) -> tuple[ConfigEntry, ...]:
    try:
        resolved = resolve(
            case.destination,
            config_file=str(path),
            environ={**os.environ, "HOME": str(home)},
            run=run_in_shell,
            command_line=[case.options[i + 1] for i in range(0, len(case.options), 2)],
        )
    except SSHConfigError:
        return ()
    return resolved.entries


# One line (or a short block) of each kind, each value form ssh -G prints its own way.
LINES = [
    "AddKeysToAgent yes",
    "AddKeysToAgent confirm",
    "AddKeysToAgent ask 5m",
    "AddKeysToAgent 0",
    "AddressFamily any",
    "BatchMode no",
    "BindAddress ::1",
    "CanonicalDomains a.example",
    "CanonicalDomains none",
    "CanonicalizeFallbackLocal no",
    "CanonicalizeHostname always",
    "CanonicalizeMaxDots 0",
    "CanonicalizePermittedCNAMEs none",
    "CASignatureAlgorithms +ssh-rsa",
    "CertificateFile none",
    "CheckHostIP yes",
    "Ciphers ^aes128-ctr",
    "ClearAllForwardings no",
    "Compression no",
    "ConnectionAttempts 2147483647",
    "ConnectionAttempts 2147483648",
    "ConnectTimeout 0",
    "ConnectTimeout 1w",
    "ControlMaster ask",
    "ControlMaster auto",
    "ControlPath ~/cm-%L-%l-%i-%u-%d",
    "ControlPersist 0",
    "ControlPersist no",
    "ControlPersist 5s",
    "DynamicForward [::1]:1080",
    "DynamicForward /tmp/s.sock",
    "DynamicForward 0",
    "EnableEscapeCommandline yes",
    "EnableSSHKeysign yes",
    "EscapeChar ~",
    "EscapeChar ^?",
    "EscapeChar \\\\",
    "EscapeChar ^@",
    "ExitOnForwardFailure no",
    "FingerprintHash SHA256",
    "ForkAfterAuthentication no",
    "ForwardAgent no",
    "ForwardAgent $SSH_AUTH_SOCK",
    "ForwardAgent ${HOME}/a",
    "ForwardX11Timeout 0",
    "ForwardX11Trusted no",
    "GatewayPorts yes",
    "GlobalKnownHostsFile none",
    "GSSAPIDelegateCredentials yes",
    "GSSAPIClientIdentity me",
    "GSSAPIServerIdentity srv",
    "GSSAPIRenewalForcesRekey yes",
    "GSSAPIKexAlgorithms gss-group14-sha256-",
    "HashKnownHosts no",
    "HostbasedAuthentication yes",
    "HostbasedAcceptedAlgorithms ssh-ed25519",
    "HostKeyAlgorithms -ssh-rsa",
    "HostKeyAlias MiXed",
    "IdentitiesOnly no",
    "IdentityAgent none",
    "IdentityAgent SSH_AUTH_SOCK",
    "IdentityFile none",
    "IgnoreUnknown a,b",
    "IPQoS lowdelay throughput",
    "IPQoS none",
    "IPQoS 255",
    "IPQoS 256",
    "IPQoS 010 0x1f",
    "KbdInteractiveAuthentication yes",
    "KexAlgorithms -diffie*",
    "KnownHostsCommand none",
    "LocalCommand none",
    "LocalForward [127.0.0.1]:5000 [::1]:22",
    "LocalForward 5000 /tmp/x.sock",
    "LocalForward /tmp/a.sock /tmp/b.sock",
    "LocalForward localhost:5000 h:ssh",
    "LogLevel quiet",
    "LogLevel DEBUG1",
    "LogLevel verbose",
    "LogVerbose none",
    "LogVerbose a b\nLogVerbose c",
    "MACs hmac-sha2-512,umac-128@openssh.com",
    "NoHostAuthenticationForLocalhost yes",
    "NumberOfPasswordPrompts 0",
    "PasswordAuthentication no",
    "PermitLocalCommand yes",
    "PermitRemoteOpen none",
    "PermitRemoteOpen any",
    "PermitRemoteOpen h:*",
    "PermitRemoteOpen [::1]:22",
    "PKCS11Provider /lib/p11.so",
    "PKCS11Provider none",
    "Port ssh",
    "Port 65535",
    "Port 65536",
    "PreferredAuthentications password",
    "ProxyCommand exec nc %h %p",
    "ProxyJump ssh://u@h:22",
    "ProxyJump [::1]",
    "ProxyJump a,b,c",
    "ProxyJump u@h:22,ssh://v@[::1]:2200",
    "PubkeyAcceptedAlgorithms -ssh-rsa",
    "PubkeyAuthentication host-bound",
    "RekeyLimit 0",
    "RekeyLimit 1K none",
    "RekeyLimit 16",
    "RekeyLimit 1.5M 30m",
    "RemoteCommand none",
    "RemoteForward 0 localhost:22",
    "RemoteForward localhost:8080 localhost:80",
    "RemoteForward 8080 /tmp/x.sock",
    "RequestTTY force",
    "RequestTTY auto",
    "RequiredRSASize 2048",
    "RevokedHostKeys none",
    "SecurityKeyProvider none",
    "SendEnv -*",
    "SessionType subsystem",
    "SessionType default",
    'SetEnv A="b c"',
    "SetEnv A=",
    "StdinNull yes",
    "StreamLocalBindMask 0",
    "StreamLocalBindMask 0777",
    "StreamLocalBindMask 1000",
    "StreamLocalBindUnlink yes",
    "StrictHostKeyChecking off",
    "StrictHostKeyChecking false",
    "SyslogFacility AUTHPRIV",
    "SyslogFacility nope",
    "TCPKeepAlive no",
    "Tunnel ethernet",
    "Tunnel no",
    "TunnelDevice any:any",
    "TunnelDevice 1:2",
    "TunnelDevice x",
    "UpdateHostKeys yes",
    "User a@b",
    "User %u",
    "UserKnownHostsFile ~/a ~/b ~/c",
    "VerifyHostKeyDNS yes",
    "VisualHostKey yes",
    "XAuthLocation none",
    "Host *\n  User x\nHost gw\n  User y",
    "Match host gw !user root\n  Port 5",
    "Match Host gw\n  Port 5",
    "MATCH ALL\n  Port 5",
    "Match !Host gw\n  Port 5",
    "Match user root,!bob\n Port 5",
    "Match localuser root\n  Port 7",
    'Host "gw"\n Port 6',
    "Host gw # comment\n Port 6",
    "Host gw, \n Port 6",
    "Host g*w\n Port 6",
    "Host=gw\n Port=6",
    "  Port   =   7",
    "Port=7=8",
    'Port "7',
    'User ""',
    'User "" x',
    'IdentityFile ""',
    'SendEnv ""',
    'HostName ""',
    "Port 7 # c",
    "Port 7 #c",
    "Port 7#c",
    "KexAlgorithms",
    "Include",
    'Include ""',
    "AddKeysToAgent confirm 0",
    "AddKeysToAgent 0s",
    "AddKeysToAgent confirm 1h",
    "AddKeysToAgent ASK",
    "LogLevel SILENT",
    "LogLevel Silent",
    # Match, Host, Include, tokens, and values at their limits.
    'Match exec "exit 0"\n  Port 5',
    'Match exec "exit 1" host gw\n  Port 5',
    'Match host gw exec "exit 0"\n  Port 5',
    "Match final\n  Port 5\nHost gw\n  Port 6",
    "Match canonical final\n  Port 5",
    "Match !final !canonical\n  Port 5",
    "Match originalhost g?\n  Port 5",
    'Match host "g w"\n  Port 5',
    "Match host=gw\n  Port 5",
    "Match host gw host other\n  Port 5",
    "Match all all\n  Port 5",
    "Match !all\n  Port 5\nMatch all\n  Port 6",
    'Match exec "%C"\n  Port 5',
    "Match localuser root user root\n  Port 5",
    "Host gw\n  Match all\n  Port 5",
    "Host !gw\n  Port 5",
    "Host gw !gw\n  Port 5",
    "Host *\nHost\n  Port 5",
    "Host * *\n  Port 5",
    'Host ""\n  Port 5',
    "Port 5\nIgnoreUnknown Foo\nFoo 1",
    "IgnoreUnknown foo\nFOO bar",
    "IgnoreUnknown *\nAnything 1\nPort x",
    "Bogus",
    'Bogus "x',
    "Protocol 1",
    "UseRoaming yes",
    "RSAAuthentication yes",
    "CompressionLevel 9",
    "HostName %h.x\nMatch host gw.x\n  Port 5",
    "HostName GW.EXAMPLE\nHost gw.example\n  Port 5",
    "HostName GW.EXAMPLE\nHost GW.EXAMPLE\n  Port 5",
    "HostName 127.000.000.001",
    "HostName ::ffff:1.2.3.4",
    "HostName [::1]",
    "HostName 1.2.3",
    "HostName 10.1",
    "IdentityFile %d/%u",
    "IdentityFile ~root/x",
    "IdentityFile ~nosuchuserhere/x",
    "IdentityFile ${NOPE}",
    "UserKnownHostsFile ${HOME}/kh %%",
    "CertificateFile %C",
    "ControlPath %k",
    "HostKeyAlias A\nControlPath %k",
    "RemoteCommand %k %C %L",
    "ProxyCommand %k",
    "ProxyCommand %u",
    "ProxyJump %h",
    "LocalCommand %T %x",
    'SetEnv "A=1 2" B=3',
    "SendEnv A B\nSendEnv -A\nSendEnv C",
    "ForwardAgent $FOO",
    "ForwardAgent $FOO-BAR",
    "IdentityAgent $SSH_AUTH_SOCK",
    "IdentityAgent $1x",
    "RemoteForward 8080",
    "RemoteForward 0",
    "RemoteForward [::1]:8080",
    "LocalForward 0 h:1",
    "LocalForward 1 h:0",
    "LocalForward 1 h:65536",
    "DynamicForward 1 h:2",
    "RemoteForward 8080 h:80 extra",
    "RemoteForward a:b:c:d:e",
    "RemoteForward [a]b:1 h:1",
    "RemoteForward 1 [h]:1",
    "RemoteForward 1 h\\:x:1",
    "Include /nonexistent",
    "Include ~/nothing*",
    "Include /etc/ssh/ssh_config.d/*.conf",
    "StreamLocalBindMask 8",
    "StreamLocalBindMask -1",
    "StreamLocalBindMask 0x1",
    "EscapeChar ^a",
    "EscapeChar ^",
    "EscapeChar é",
    "ServerAliveInterval 1m1s",
    "ServerAliveInterval 1M",
    "ServerAliveInterval 2147483647",
    "ServerAliveInterval 2147483648",
    "ServerAliveInterval -0",
    "ServerAliveInterval +5",
    "ServerAliveCountMax +5",
    "ServerAliveCountMax 05",
    "ConnectionAttempts 1x",
    "NumberOfPasswordPrompts 2147483648",
    "Port 0x10",
    "Port 010",
    "Port +22",
    'Port " 22"',
    "Port 22 \n",
    "RekeyLimit 1g",
    "RekeyLimit -1",
    "RekeyLimit 1.5",
    "RekeyLimit 1KB",
    "RekeyLimit 1 2",
    "RekeyLimit 9223372036854775807",
    "RekeyLimit 9223372036854775808",
    "RekeyLimit 8E",
    "RekeyLimit default 1h\nRekeyLimit 1G",
    "IPQoS af11 af11 af11",
    "IPQoS",
    "IPQoS -1",
    "TunnelDevice 2147483645",
    "TunnelDevice 2147483646",
    "TunnelDevice :1",
    "ControlPersist 0s",
    "ControlPersist -1",
    "ControlPersist TRUE",
    "CanonicalDomains .a",
    "CanonicalDomains a..b",
    "CanonicalDomains a_b",
    "CanonicalDomains A.B C.D.",
    "CanonicalizePermittedCNAMEs a",
    "CanonicalizePermittedCNAMEs a:",
    "CanonicalizePermittedCNAMEs *.A:*.B none",
    "FingerprintHash sha512",
    "SyslogFacility local8",
    "UserKnownHostsFile none\nUserKnownHostsFile /x",
    "GlobalKnownHostsFile /a /b none",
    "PermitRemoteOpen none any",
    "PermitRemoteOpen h:0",
    "PermitRemoteOpen h:x",
    "PermitRemoteOpen [::1]:*",
    "ProxyJump u@",
    "ProxyJump @h",
    "ProxyJump h:0",
    "ProxyJump h:x",
    "ProxyJump ssh://h/path",
    "ProxyJump ssh://u;fp=x@h",
    "ProxyJump ssh://%41@h",
    "ProxyJump a,,b",
    "ProxyJump none,x",
    "ProxyJump x # comment",
    "User x y",
    "Hostname x y",
    "ProxyCommand",
    "ProxyCommand   =  nc",
    "RemoteCommand  a  b  ",
    'LocalCommand "x"',
    "KnownHostsCommand a %f %H",
]


@pytest.mark.parametrize("text", LINES)
def test_one_line_as_ssh_G(  # noqa: N802 - ssh's flag
    ssh_g: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, text: str
) -> None:
    path = config(tmp_path, text + "\n")
    compared = compare_with_ssh(ssh_g, tmp_path, path, "gw")
    assert compared == 0 or 4 <= compared <= 6


# Generated configurations: blocks of Host and Match lines with options drawn from a
# table of values ssh accepts, an Include or two, compared with ssh -G.

_HOSTS = ["gw", "GW", "gw.example.com", "other", "10.0.0.1"]
_PATTERNS = ["gw", "GW", "g?", "*", "*.example.com", "other", "!gw", "!*.com", "10.0.0.*"]
_MATCH = [
    "all",
    "!all",
    "host gw",
    "host gw.example.com",
    "!host gw",
    "host *.example.com,!other",
    "originalhost gw",
    "originalhost GW",
    "user alice",
    "user bob,alice",
    "!user bob",
    "localuser root",
    "final",
    "!final",
    "canonical",
    "!canonical",
    "exec true",
    "exec false",
    'exec "test %h = gw.example.com"',
    "host gw exec true",
]
_OPTIONS = [
    "Port 2222",
    "Port 8022",
    "port=2200",
    "User bob",
    "User alice",
    "HostName %h.example.com",
    "HostName Real.Example.COM",
    "HostName 10.0.0.2",
    "IdentityFile ~/.ssh/id_%h",
    "IdentityFile /keys/%r",
    "CertificateFile ~/c-%n",
    "RemoteForward 8080 localhost:80",
    "RemoteForward 0 127.0.0.1:22",
    "RemoteForward 9000",
    "RemoteForward /tmp/r.sock /tmp/l.sock",
    "LocalForward 5000 db:5432",
    "DynamicForward 1080",
    "SendEnv A B",
    "SendEnv -A",
    "SetEnv X=1 Y=2",
    "ServerAliveInterval 15",
    "ServerAliveInterval none",
    "ServerAliveCountMax 4",
    "ConnectTimeout 1m",
    "Compression yes",
    "StrictHostKeyChecking accept-new",
    "StrictHostKeyChecking no",
    "UserKnownHostsFile ~/.ssh/kh_%h /tmp/k",
    "UserKnownHostsFile none",
    "ProxyJump u@jump:2222",
    "ProxyJump none",
    "ProxyCommand ssh -W %h:%p jump",
    "ControlPath ~/.ssh/cm-%C",
    "RemoteCommand echo %h %p",
    "IdentitiesOnly yes",
    "ExitOnForwardFailure yes",
    "RekeyLimit 1G 1h",
    "RekeyLimit 2G",
    "Ciphers aes128-ctr",
    "CanonicalizeHostname yes",
    "ClearAllForwardings yes",
    "HostKeyAlias Alias",
    "ChallengeResponseAuthentication no",
    "UpdateHostKeys ask",
    "ControlPersist yes",
    "RequestTTY no",
    "LogLevel ERROR",
    "BatchMode yes",
    "ProxyUseFDPass yes",
    "ProxyCommand -",
    "CanonicalizeMaxDots 3",
    "ConnectionAttempts 3",
    "HostName %%h",
    "ProxyJump gw.example.com",
]


@st.composite
def _blocks(draw: st.DrawFn, depth: int) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["host", "match", "options"]))
        if kind == "host":
            patterns = draw(st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=3))
            lines.append("Host " + " ".join(patterns))
        elif kind == "match":
            lines.append("Match " + draw(st.sampled_from(_MATCH)))
        options = draw(st.lists(st.sampled_from(_OPTIONS), max_size=4))
        lines.extend("  " + option for option in options)
        if depth < 2 and draw(st.booleans()):
            lines.append(f"  Include ~/inc/level{depth + 1}-*")
    return "".join(line + "\n" for line in lines)


_configs = st.tuples(
    _blocks(0), _blocks(1), _blocks(1), _blocks(2), st.sampled_from(_HOSTS), st.booleans()
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generated=_configs)
def test_generated_configurations_resolve_as_ssh_G(  # noqa: N802 - ssh's flag
    ssh_g: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path_factory: pytest.TempPathFactory,
    generated: tuple[str, str, str, str, str, bool],
) -> None:
    main, level1_a, level1_b, level2, host, with_user = generated
    home = tmp_path_factory.mktemp("generated")
    config(home, level1_a, "inc/level1-a")
    config(home, level1_b, "inc/level1-b")
    config(home, level2, "inc/level2-a")
    path = config(home, main, "config")
    compare_with_ssh(ssh_g, home, path, f"bob@{host}" if with_user else host)
    shutil.rmtree(home)


def test_this_machines_own_files_resolve_as_ssh_G(  # noqa: N802 - ssh's flag
    ssh_g: Callable[..., subprocess.CompletedProcess[str]], openssh_ssh: str
) -> None:
    """No ``-F``: the user's ``~/.ssh/config`` (if any), then ``/etc/ssh/ssh_config``."""
    done = subprocess.run(
        [openssh_ssh, "-G", "bob@gw"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    resolved = resolve("bob@gw", run=run_in_shell)
    assert resolved.files  # Debian's system file, at least
    ours = by_keyword(format_like_ssh_G(resolved))
    theirs = by_keyword(done.stdout.splitlines())
    assert {k: v for k, v in ours.items() if theirs.get(k) != v} == {}
    # host, user, hostname, port, and at most each keyword the files set (Debian's: 3).
    assert 4 <= len(ours) <= 4 + len({entry.keyword for entry in resolved.entries})


def test_the_comparison_can_fail(
    ssh_g: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """A reader that got first-wins backwards would be caught."""
    path = config(tmp_path, "Port 1\nPort 2\n")
    done = ssh_g(path, "gw", tmp_path)
    assert "port 1" in done.stdout.splitlines()
    assert "port 2" not in done.stdout.splitlines()
    resolved = resolve("gw", config_file=str(path), environ={})
    wrong = format_like_ssh_G(dataclasses.replace(resolved, port=2))
    assert by_keyword(wrong)["port"] != by_keyword(done.stdout.splitlines())["port"]
