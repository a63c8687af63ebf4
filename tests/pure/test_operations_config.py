"""
The configuration file for many tunnels (rtunnel/operations/config.py): what a good file
gives, the line of every key, and every error path with its exact message (file, line,
key, what is wrong).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rtunnel.errors import SpecError
from rtunnel.openssh.forwards import RemoteForwardSpec, parse_remote_forward
from rtunnel.openssh.ssh_config import resolve
from rtunnel.operations.config import (
    ConfigError,
    ForwardConfig,
    ProcessConfig,
    key_lines,
    load_config,
    parse_config,
)

GOOD = """\
# two servers
[tunnel.web]
host = "gw1.example.com"
user = "tunnel"
Port = 2222
IdentityFile = ["/etc/rtunnel/id_ed25519", "/etc/rtunnel/id_rsa"]
serveraliveinterval = 15
StrictHostKeyChecking = "accept-new"
Compression = true
forwards = [
  "8080:localhost:80",
  { listen = "8443", target = "localhost:443", name = "tls" },
  { listen = 1080 },
]

[tunnel.db]
host = "gw2.example.com"
password_env = "DB_PASSWORD"

[[tunnel.db.forwards]]
listen = "127.0.0.1:5432"
target = "/run/postgresql/.s.PGSQL.5432"
"""


def _parse(text: str, **kw: Any) -> Any:
    kw.setdefault("environ", {})
    return parse_config(textwrap.dedent(text), "t.toml", **kw)


def test_a_good_file() -> None:
    config = parse_config(GOOD, "t.toml", environ={"DB_PASSWORD": "s3cret"})
    web, db = config.tunnels
    assert (web.name, web.host, web.port, web.user, web.line) == (
        "web",
        "gw1.example.com",
        2222,
        "tunnel",
        2,
    )
    assert web.forwards == (
        ForwardConfig("8080:localhost:80", parse_remote_forward("8080:localhost:80")),
        ForwardConfig("tls", parse_remote_forward("8443:localhost:443")),
        ForwardConfig("1080", RemoteForwardSpec.socks("localhost", 1080)),
    )
    assert [f.line for f in web.forwards] == [11, 12, 13]
    options = web.client_options()
    assert options.identity_files == ["/etc/rtunnel/id_ed25519", "/etc/rtunnel/id_rsa"]
    assert options.tunnel == {
        "keepalive_interval": 15,
        "host_key_policy": "accept-new",
        "compression": True,
    }
    # Nobody answers a prompt under a supervisor.
    assert options.batch_mode is True
    assert (db.host, db.port, db.user, db.password) == ("gw2.example.com", 22, None, "s3cret")
    assert db.forwards[0].spec == RemoteForwardSpec(
        "127.0.0.1", 5432, "", 0, target_path="/run/postgresql/.s.PGSQL.5432"
    )
    assert db.forwards[0].line == 20
    assert "s3cret" not in repr(config)


def test_same_server_compares_everything_that_logs_on() -> None:
    base = _parse('[tunnel.a]\nhost = "h"\nforwards = ["1:h:2"]\n').tunnels[0]
    more_forwards = _parse('[tunnel.a]\nhost = "h"\nforwards = ["1:h:2", "3:h:4"]\n').tunnels[0]
    assert base.same_server(more_forwards)
    for change in [
        'host = "h2"',
        "Port = 2200",
        'User = "u"',
        "ServerAliveInterval = 9",
        'IdentityFile = "/k"',
        'password_env = "P"',
    ]:
        text = '[tunnel.a]\nhost = "h"\nforwards = ["1:h:2"]\n' + change + "\n"
        text = text.replace('host = "h"\n', "", 1) if change.startswith("host") else text
        other = _parse(text, environ={"P": "x"}).tunnels[0]
        assert not base.same_server(other), change


def test_key_lines() -> None:
    text = textwrap.dedent('''\
        top = 1
        [a]
        "quoted key" = """
        not = a key
        """
        b.c = [
          1,  # one
          { d = 'x', e = "y" },
        ]
        [[a.list]]
        f = 1
        [[a.list]]
        f = 2
        [a.list.sub]
        g = 3
        ''')
    assert key_lines(text) == {
        ("top",): 1,
        ("a",): 2,
        ("a", "quoted key"): 3,
        ("a", "b"): 6,
        ("a", "b", "c"): 6,
        ("a", "b", "c", 0): 7,
        ("a", "b", "c", 1): 8,
        ("a", "b", "c", 1, "d"): 8,
        ("a", "b", "c", 1, "e"): 8,
        ("a", "list"): 10,
        ("a", "list", 0): 10,
        ("a", "list", 0, "f"): 11,
        ("a", "list", 1): 12,
        ("a", "list", 1, "f"): 13,
        ("a", "list", 1, "sub"): 14,
        ("a", "list", 1, "sub", "g"): 15,
    }


_T = '[tunnel.a]\nhost = "h"\nforwards = ["1:h:2"]\n'

#: (file text, exact messages): every way a file can be wrong.
ERRORS = [
    (
        "[tunnel.a\n",
        [
            "t.toml line 1: not valid TOML: Expected ']' at the end of a table declaration "
            "(column 10)"
        ],
    ),
    ("tunnels = 1\n" + _T, ["t.toml line 1: tunnels: unknown key; did you mean tunnel?"]),
    ("", ["t.toml line 1: no tunnels: add a [tunnel.NAME] table with host and forwards"]),
    ("tunnel = 3\n", ["t.toml line 1: tunnel: must be tables: [tunnel.NAME]"]),
    (
        "[tunnel]\na = 3\n",
        ["t.toml line 2: tunnel.a: must be a table: [tunnel.NAME] with host and forwards"],
    ),
    (
        _T.replace("tunnel.a", 'tunnel."a b"'),
        [
            "t.toml line 1: tunnel.\"a b\": a tunnel's name is letters, digits, '.', '_' and "
            "'-', first a letter or digit"
        ],
    ),
    (_T + "hots = 1\n", ["t.toml line 4: tunnel.a.hots: unknown key; did you mean host?"]),
    (_T + "Zzz = 1\n", ["t.toml line 4: tunnel.a.Zzz: unknown key"]),
    (
        _T + 'ServerAliveInterval = "x"\n',
        ["t.toml line 4: tunnel.a.ServerAliveInterval: invalid time value."],
    ),
    (_T + "Port = 0\n", ["t.toml line 4: tunnel.a.Port: Bad port '0'."]),
    (
        _T + 'Compression = "maybe"\n',
        ['t.toml line 4: tunnel.a.Compression: unsupported option "maybe".'],
    ),
    (
        _T + "Port = { a = 1 }\n",
        ["t.toml line 4: tunnel.a.Port: give a string, a number, true/false or a list of strings"],
    ),
    (
        _T + 'IdentityFile = ["a", "b"]\nCiphers = "nope"\n',
        [
            "t.toml line 5: tunnel.a.Ciphers: Bad SSH2 cipher spec 'nope'. Unsupported cipher "
            "algorithm 'nope'; supported: aes128-gcm@openssh.com, aes256-gcm@openssh.com, "
            "chacha20-poly1305@openssh.com, aes128-ctr, aes192-ctr, aes256-ctr, aes128-cbc, "
            "aes192-cbc, aes256-cbc, 3des-cbc, blowfish-cbc, cast128-cbc, arcfour256, "
            "arcfour128, arcfour."
        ],
    ),
    (
        '[tunnel.a]\nforwards = ["1:h:2"]\n',
        ['t.toml line 1: tunnel.a: no host: give host = "NAME" (or ssh_config_host)'],
    ),
    (
        '[tunnel.a]\nhost = "-oProxyCommand=x"\nforwards = ["1:h:2"]\n',
        ["t.toml line 2: tunnel.a.host: hostname contains invalid characters"],
    ),
    (
        '[tunnel.a]\nhost = 3\nforwards = ["1:h:2"]\n',
        ["t.toml line 2: tunnel.a.host: give a non-empty string"],
    ),
    (
        '[tunnel.a]\nhost = "h"\n',
        ['t.toml line 1: tunnel.a: no forwards: give forwards = ["PORT:HOST:HOSTPORT", ...]'],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = []\n',
        ["t.toml line 3: tunnel.a.forwards: is empty: give at least one forward"],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = "1:h:2"\n',
        ['t.toml line 3: tunnel.a.forwards: give a list: forwards = ["PORT:HOST:HOSTPORT", ...]'],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = [\n  "1:h:2",\n  3,\n]\n',
        [
            't.toml line 5: tunnel.a.forwards[1]: give "[BIND:]PORT:HOST:HOSTPORT" or {listen = '
            "..., target = ...}"
        ],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = ["1:h:2", "x:h:2"]\n',
        ["t.toml line 3: tunnel.a.forwards[1]: bad forward 'x:h:2': bad listen port 'x'"],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = [{ listen = "1", targt = "h:2" }]\n',
        ["t.toml line 3: tunnel.a.forwards[0].targt: unknown key; did you mean target?"],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = [{ target = "h:2" }]\n',
        [
            't.toml line 3: tunnel.a.forwards[0]: give listen = "[BIND_ADDRESS:]PORT" (or a '
            "socket path)"
        ],
    ),
    (
        '[tunnel.a]\nhost = "h"\n[[tunnel.a.forwards]]\nlisten = "1"\ntarget = 2\n',
        [
            't.toml line 5: tunnel.a.forwards[0].target: give target = "HOST:PORT" or a socket '
            "path (none: SOCKS)"
        ],
    ),
    (
        '[tunnel.a]\nhost = "h"\n[[tunnel.a.forwards]]\nlisten = "1"\nname = ""\n',
        ["t.toml line 5: tunnel.a.forwards[0].name: give a non-empty string"],
    ),
    (
        '[tunnel.a]\nhost = "h"\nforwards = [\n "1:h:2",\n "localhost:1:h:2",\n]\n',
        [
            "t.toml line 5: tunnel.a.forwards: 'localhost:1:h:2' is the same forward as '1:h:2' "
            "(line 4)"
        ],
    ),
    (
        _T + 'password_file = "p"\npassword_env = "P"\n',
        ["t.toml line 5: tunnel.a.password_env: give password_file or password_env, not both"],
    ),
    (
        _T + 'password_env = "NOT_SET"\n',
        ["t.toml line 4: tunnel.a.password_env: the environment variable NOT_SET is not set"],
    ),
    (
        _T + 'password_file = "/nonexistent/pw"\n',
        [
            "t.toml line 4: tunnel.a.password_file: cannot read /nonexistent/pw: No such file or "
            "directory"
        ],
    ),
    (
        _T + 'ssh_config_file = "/x"\n',
        ["t.toml line 4: tunnel.a.ssh_config_file: needs ssh_config_host"],
    ),
    # The [process] table: the settings of the whole process, and only those.
    ("procss = 1\n" + _T, ["t.toml line 1: procss: unknown key; did you mean process?"]),
    (
        "process = 1\n" + _T,
        ["t.toml line 1: process: must be a table: [process] with ControlSocket, HttpListen, ..."],
    ),
    (
        _T + "HttpListen = 9100\n",
        [
            "t.toml line 4: tunnel.a.HttpListen: a setting of the whole process: put it in the "
            "[process] table"
        ],
    ),
    (
        '[process]\nUser = "x"\nforwards = 1\n' + _T,
        [
            "t.toml line 2: process.User: a tunnel's setting: put it in a [tunnel.NAME] table",
            "t.toml line 3: process.forwards: a tunnel's setting: put it in a [tunnel.NAME] table",
        ],
    ),
    (
        "[process]\nHttpListn = 1\n" + _T,
        ["t.toml line 2: process.HttpListn: unknown key; did you mean HttpListen?"],
    ),
    (
        '[process]\nHttpListen = "x:y"\n' + _T,
        [
            "t.toml line 2: process.HttpListen: Bad HttpListen 'x:y': give PORT, ADDRESS:PORT, "
            "[IPV6]:PORT or none"
        ],
    ),
    (
        '[process]\nLogFormat = ["json"]\n' + _T,
        ["t.toml line 2: process.LogFormat: give a string or a number"],
    ),
    (
        '[process]\nLogFormat = "xml"\n' + _T,
        ["t.toml line 2: process.LogFormat: unsupported log format 'xml': give text or json"],
    ),
]


@pytest.mark.parametrize(("text", "messages"), ERRORS)
def test_every_error_names_the_file_the_line_and_the_key(text: str, messages: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.toml", environ={})
    assert list(caught.value.problems) == messages


def test_every_mistake_is_reported_at_once_in_file_order() -> None:
    text = _T + 'Port = 0\n[tunnel.b]\nforwards = ["x"]\nServerAliveCountMax = -1\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.toml", environ={})
    assert caught.value.problems == (
        "t.toml line 4: tunnel.a.Port: Bad port '0'.",
        't.toml line 5: tunnel.b: no host: give host = "NAME" (or ssh_config_host)',
        "t.toml line 6: tunnel.b.forwards[0]: bad forward 'x': bad listen port 'x'",
        "t.toml line 7: tunnel.b.ServerAliveCountMax: invalid integer value.",
    )
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_password_files(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = parse_config(_T + 'password_file = "pw"\n', str(tmp_path / "t.toml"))
    assert config.tunnels[0].password == "s3cret"
    secret.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        parse_config(_T + 'password_file = "pw"\n', str(tmp_path / "t.toml"))
    assert caught.value.problems == (
        f"{tmp_path}/t.toml line 4: tunnel.a.password_file: {secret} is open to group or "
        "others: chmod 600 it",
    )
    secret.write_text("\n")
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        parse_config(_T + 'password_file = "pw"\n', str(tmp_path / "t.toml"))
    assert caught.value.problems == (
        f"{tmp_path}/t.toml line 4: tunnel.a.password_file: {secret} is empty",
    )


def test_an_ssh_config_host_is_the_starting_point(tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host gw\n  HostName 192.0.2.7\n  Port 2222\n  User bob\n  IdentityFile ~/k\n"
        "  ServerAliveInterval 7\n  RemoteForward 9000 localhost:9\n  ForwardAgent yes\n"
    )
    text = (
        '[tunnel.a]\nssh_config_host = "gw"\nssh_config_file = "' + str(ssh_config) + '"\n'
        'ServerAliveInterval = 3\nforwards = ["1:h:2"]\n'
    )
    home = str(tmp_path)

    def resolver(alias: str, file: str | None) -> Any:
        return resolve(alias, config_file=file, home=home, environ={})

    tunnel = parse_config(text, "t.toml", environ={}, ssh_config=resolver).tunnels[0]
    assert (tunnel.host, tunnel.port, tunnel.user) == ("192.0.2.7", 2222, "bob")
    options = tunnel.client_options()
    # The file's own value wins over the Host's, as the first value does in ssh.
    assert options.tunnel["keepalive_interval"] == 3
    assert options.identity_files == [f"{home}/k"]
    assert [f.spec for f in tunnel.forwards] == [
        parse_remote_forward("1:h:2"),
        parse_remote_forward("9000:localhost:9"),
    ]


def test_an_ssh_config_error_names_the_key_and_the_ssh_config_line(tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host gw\n  ServerAliveInterval soon\n")
    text = (
        '[tunnel.a]\nssh_config_host = "gw"\nssh_config_file = "' + str(ssh_config) + '"\n'
        'forwards = ["1:h:2"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.toml", environ={})
    [message] = caught.value.problems
    assert message.startswith("t.toml line 2: tunnel.a.ssh_config_host: ")
    assert f"{ssh_config}" in message and "line 2" in message


def test_a_resolver_failure_is_the_keys_problem() -> None:
    def refuse(alias: str, file: str | None) -> Any:
        raise SpecError(f"no such file: {file}")

    with pytest.raises(ConfigError) as caught:
        parse_config(
            '[tunnel.a]\nssh_config_host = "gw"\nssh_config_file = "/x"\nforwards = ["1:h:2"]\n',
            "t.toml",
            ssh_config=refuse,
        )
    assert caught.value.problems == ("t.toml line 2: tunnel.a.ssh_config_host: no such file: /x",)


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml")
    assert caught.value.problems == (
        f"{tmp_path}/missing.toml: cannot read the configuration: No such file or directory",
    )
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "bin.toml")
    assert caught.value.problems == (f"{tmp_path}/bin.toml: not UTF-8 text",)


def test_the_example_file_is_good() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "tunnels.toml"
    config = load_config(example, environ={"RTUNNEL_DB_PASSWORD": "x"})
    assert [t.name for t in config.tunnels] == ["web", "db"]
    assert sum(len(t.forwards) for t in config.tunnels) == 3
    assert os.path.basename(config.file) == "tunnels.toml"


def test_the_process_table() -> None:
    """[process] anywhere in the file, keys matched as ssh matches them, values read by the
    -o parsers; -o given on the command line wins key by key."""
    config = parse_config(
        _T + '[process]\ncontrolsocket = "auto"\nHttpListen = 9180\n', "t.toml", environ={}
    )
    assert config.process == ProcessConfig("auto", "127.0.0.1:9180", None)
    assert [t.name for t in config.tunnels] == ["a"]
    assert parse_config(_T, "t.toml", environ={}).process == ProcessConfig()
    given = ProcessConfig(http_listen="[::1]:1", log_format="json")
    assert config.process.overridden_by(given) == ProcessConfig("auto", "[::1]:1", "json")
