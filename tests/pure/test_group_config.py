"""Tunnel groups in the configuration file (issue #15): read, merged, and each mistake
named by file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtunnel._core.syntax import Destination
from rtunnel.errors import SpecError
from rtunnel.openssh.options import parse_option
from rtunnel.operations.config import ConfigError, parse_config

GROUP = """\
[tunnel.web]
GroupMode = "failover"
FailbackAfter = "1m"
IdentityFile = "/etc/rtunnel/id"
User = "tunnel"
ServerAliveInterval = 5
forwards = ["8080:localhost:80"]
servers = [
  { host = "gw1.example.com", name = "first" },
  { host = "gw2.example.com", Port = 2222, User = "other", password_env = "PW" },
  "bob@gw3.example.com:2200",
  "gw4.example.com",
]
"""


def read(text: str, **kw: object) -> object:
    return parse_config(text, "t.toml", environ={"PW": "secret"}, base=Path("/"), **kw)  # type: ignore[arg-type]


def test_a_group_with_tables_and_destinations() -> None:
    config = read(GROUP)
    (tunnel,) = config.tunnels  # type: ignore[attr-defined]
    assert [s.name for s in tunnel.servers] == [
        "first",
        "gw2.example.com:2222",
        "gw3.example.com:2200",
        "gw4.example.com:22",
    ]
    assert [s.host for s in tunnel.servers] == [
        "gw1.example.com",
        "gw2.example.com",
        "gw3.example.com",
        "gw4.example.com",
    ]
    assert [(s.user, s.port) for s in tunnel.servers] == [
        ("tunnel", 22),
        ("other", 2222),
        ("bob", 2200),
        ("tunnel", 22),
    ]
    assert [s.password for s in tunnel.servers] == [None, "secret", None, None]
    # Shared settings reach every server; group settings stay with the tunnel.
    for server in tunnel.servers:
        options = server.client_options()
        assert options.identity_files == ["/etc/rtunnel/id"]
        assert options.tunnel["keepalive_interval"] == 5
    options = tunnel.client_options()
    assert (options.group_mode, options.failback_after) == ("failover", 60)
    assert tunnel.host == "gw1.example.com" and len(tunnel.forwards) == 1
    assert tunnel.servers[0].line == 9


def test_host_and_group_server_as_the_command_has_them() -> None:
    config = read(
        '[tunnel.a]\nhost = "gw1"\nGroupServer = ["gw2", "carol@gw3:2022"]\n'
        'GroupMode = "all"\nforwards = ["0:localhost:80"]\n'
    )
    (tunnel,) = config.tunnels  # type: ignore[attr-defined]
    assert [s.name for s in tunnel.servers] == ["gw1:22", "gw2:22", "gw3:2022"]
    assert tunnel.client_options().group_mode == "all"


def test_a_changed_server_list_is_another_server() -> None:
    (a,) = read(GROUP).tunnels  # type: ignore[attr-defined]
    (b,) = read(GROUP.replace('"gw4.example.com",\n', "")).tunnels  # type: ignore[attr-defined]
    (c,) = read(GROUP).tunnels  # type: ignore[attr-defined]
    assert not a.same_server(b) and a.same_server(c)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ('GroupMode = "failover"', 'GroupMode = "round-robin"'),
            "t.toml line 2: tunnel.web.GroupMode: Bad GroupMode 'round-robin': give failover",
        ),
        (
            ('name = "first"', 'name = "first", Colour = "red"'),
            "t.toml line 9: tunnel.web.servers[0].Colour: unknown key",
        ),
        (
            ('name = "first"', 'name = "first", GroupMode = "all"'),
            "t.toml line 9: tunnel.web.servers[0].GroupMode: a setting of the whole group",
        ),
        (
            ('{ host = "gw1.example.com", name = "first" }', "{ Port = 22 }"),
            "t.toml line 9: tunnel.web.servers[0]: no host",
        ),
        (
            ('"gw4.example.com"', '"gw1.example.com:22"'),
            "t.toml line 12: tunnel.web: two servers are called 'gw1.example.com:22'",
        ),
        (
            ('"bob@gw3.example.com:2200"', '"bob@gw3.example.com:99999"'),
            "t.toml line 11: tunnel.web.servers[2]: ",
        ),
        (('"gw4.example.com",', "4,"), "t.toml line 12: tunnel.web.servers[3]: give"),
    ],
)
def test_mistakes_name_file_line_and_key(change: tuple[str, str], problem: str) -> None:
    text = GROUP.replace(*change)
    assert text != GROUP
    if "two servers" in problem:
        # A name given to the first server makes it "first"; drop it to collide.
        text = text.replace(', name = "first"', "")
    with pytest.raises(ConfigError) as caught:
        read(text)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_an_empty_server_list() -> None:
    with pytest.raises(ConfigError) as caught:
        read('[tunnel.a]\nservers = []\nforwards = ["80:h:80"]\n')
    assert caught.value.problems[0].startswith("t.toml line 2: tunnel.a.servers: give a list")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "GroupMode=both",
            "command-line line 0: Bad groupmode 'both': give failover (one server at a "
            "time) or all (every server)",
        ),
        (
            "GroupServer=a,b",
            "command-line line 0: Bad groupserver 'a,b': give one [user@]host[:port] per "
            "groupserver",
        ),
        ("FailbackAfter=soon", "command-line line 0: invalid time value."),
    ],
)
def test_command_line_mistakes_are_one_line(option: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_option(option)
    assert caught.value.message == message


def test_command_line_values() -> None:
    assert parse_option("FailbackAfter=no") == ("FailbackAfter", None)
    assert parse_option("FailbackAfter=90") == ("FailbackAfter", 90)
    assert parse_option("GroupServer=ssh://eve@[::1]:2200") == (
        "GroupServer",
        Destination("eve", "::1", 2200),
    )


def test_the_example_file_is_good() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "group.toml"
    config = parse_config(example.read_text(), str(example))
    (tunnel,) = config.tunnels
    assert [s.name for s in tunnel.servers] == ["gw1", "gw2", "gw3.example.com:22"]
    assert [s.port for s in tunnel.servers] == [22, 2222, 22]
    options = tunnel.client_options()
    assert (options.group_mode, options.failback_after) == ("failover", 300)
