"""
The configuration file for many tunnels (issue #14): TOML, read and checked completely
before anything starts, so a mistake is found by ``rtunnel --config FILE --check`` and by
a reload, never halfway through starting.

::

    [tunnel.web]
    host = "gw1.example.com"
    user = "tunnel"
    IdentityFile = "/etc/rtunnel/id_ed25519"
    ServerAliveInterval = 15
    forwards = ["8080:localhost:80", { listen = "8443", target = "localhost:443" }]

Every option takes the name it has in the one keyword table
(:data:`rtunnel.openssh.keywords.KEYWORDS`, matched case-insensitively as ``ssh`` matches
them) and is read by that table's parser, so a value means what it means after ``-o``.
Besides those, a tunnel takes ``host``, ``forwards``, ``password_file``, ``password_env``,
``ssh_config_host`` and ``ssh_config_file``; see ``docs/operations.md``.

The settings of the process as a whole (:data:`PROCESS_KEYS`: its control socket, HTTP
listener and log format) go in one ``[process]`` table, not in a tunnel's.

Every error names the file, the line, the key and what is wrong. :mod:`tomllib` gives no
line numbers for keys, so :func:`key_lines` scans the source for them.

Pure: no reactor, no network; it reads the password file, the ssh_config files and the
environment it is told about.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from rtunnel._core.forward_policy import ForwardPolicy
from rtunnel.errors import SpecError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forward_policy import (
    POLICY_KEYS,
    PolicyFor,
    attach_policies,
    check_value,
    policy_from_values,
)
from rtunnel.openssh.forwards import RemoteForwardSpec, forward_or_reason
from rtunnel.openssh.keywords import KEYWORDS, WHERE, keyword_named
from rtunnel.openssh.options import split_arguments
from rtunnel.openssh.values import check_host_name

__all__ = [
    "PROCESS_KEYS",
    "Config",
    "ConfigError",
    "ForwardConfig",
    "ProcessConfig",
    "TunnelConfig",
    "key_lines",
    "load_config",
    "parse_config",
]

#: A tunnel's own keys, besides the keyword table's.
OWN_KEYS: Final = (
    "host",
    "forwards",
    "password_file",
    "password_env",
    "ssh_config_host",
    "ssh_config_file",
    "servers",
)
#: The keys of one entry of a tunnel group's ``servers`` given as a table (issue #15),
#: besides the keyword table's.
SERVER_KEYS: Final = (
    "name",
    "host",
    "password_file",
    "password_env",
    "ssh_config_host",
    "ssh_config_file",
)
#: Rows that are about the group as a whole, not about one of its servers.
_GROUP_COMMANDS: Final = ("group_servers", "group_mode", "failback_after")
#: The keys of a forward given as a table: what it is, then its policy (issue #15).
FORWARD_KEYS: Final = ("name", "listen", "target", *POLICY_KEYS)
#: The ``[process]`` table's keys: the keyword table's rows that are about the process,
#: not about one tunnel (as ``-o`` for the command).
PROCESS_KEYS: Final = tuple(
    row.name for row in KEYWORDS if row.command in ("control_socket", "http_listen", "log_format")
)
#: The top-level tables.
TOP_KEYS: Final = ("tunnel", "process")

_TUNNEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

Path_ = tuple[str | int, ...]


class ConfigError(SpecError):
    """
    A configuration file that cannot be used: every problem found, one line each, in the
    order of the file.

    :ivar problems: the lines, each ``FILE line N: KEY: what is wrong``.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class ForwardConfig:
    """
    One forward of a tunnel.

    :ivar name: as the file names it: the ``-R`` string, or the table's ``name``.
    :ivar spec: what is requested.
    :ivar line: where the file gives it.
    """

    name: str
    spec: RemoteForwardSpec
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class TunnelConfig:
    """
    One tunnel: an SSH server and its forwards.

    :ivar name: the ``[tunnel.NAME]`` table's name.
    :ivar host: the SSH server (``host``, else the ssh_config Host's ``HostName``).
    :ivar settings: the keyword table's rows and values, by row name, in the order they
        apply (the file's first, then the ssh_config Host's; the first value wins).
    :ivar password: from ``password_file`` or ``password_env``; never shown.
    :ivar forwards: in file order.
    :ivar line: where the tunnel's table starts.
    :ivar servers: a tunnel group (issue #15): every server, in order, each a
        :class:`TunnelConfig` without forwards whose ``name`` is the server's name in the
        group; empty for a tunnel to one server.
    """

    name: str
    host: str
    settings: tuple[tuple[str, Any], ...]
    password: str | None = field(default=None, repr=False)
    forwards: tuple[ForwardConfig, ...] = ()
    line: int = field(default=0, compare=False)
    servers: tuple[TunnelConfig, ...] = ()

    def same_server(self, other: TunnelConfig) -> bool:
        """Whether ``other`` logs on to the same server the same way (host, port, user,
        credentials, every option): if not, the tunnel must reconnect. For a group: the
        same servers, each the same way, in the same order."""
        return (self.host, self.settings, self.password, self.servers) == (
            other.host,
            other.settings,
            other.password,
            other.servers,
        )

    def client_options(self) -> ClientOptions:
        """The settings as the command would hold them after its flags and ``-o``; with
        ``BatchMode=yes`` unless the file says otherwise (nobody answers a prompt)."""
        options = ClientOptions()
        for name, value in self.settings:
            row = keyword_named(name)
            assert row is not None, name
            options.apply(row, value)
        if options.batch_mode is None:
            options.batch_mode = True
        options.remote_forwards = [f.spec for f in self.forwards]
        return options

    @property
    def port(self) -> int:
        """The server's port (``Port``, default 22)."""
        options = self.client_options()
        return options.port if options.port is not None else 22

    @property
    def user(self) -> str | None:
        """The user (``User``); None: the local user."""
        return self.client_options().user


@dataclass(frozen=True)
class ProcessConfig:
    """
    The ``[process]`` table: what the whole process does besides its tunnels. Each value
    as its ``-o`` option's parser gives it; None when not set.

    :ivar control_socket: ``ControlSocket``: ``"auto"``, ``"none"`` or a path.
    :ivar http_listen: ``HttpListen``: ``"ADDRESS:PORT"`` or ``"none"``.
    :ivar log_format: ``LogFormat``: ``"text"`` or ``"json"``.
    """

    control_socket: str | None = None
    http_listen: str | None = None
    log_format: str | None = None

    def overridden_by(self, other: ProcessConfig) -> ProcessConfig:
        """These settings with ``other``'s wherever it sets one (the command line's
        ``-o`` over the file)."""
        return ProcessConfig(
            other.control_socket if other.control_socket is not None else self.control_socket,
            other.http_listen if other.http_listen is not None else self.http_listen,
            other.log_format if other.log_format is not None else self.log_format,
        )

    @classmethod
    def from_options(cls, options: ClientOptions) -> ProcessConfig:
        """The process settings ``-o`` gave."""
        return cls(options.control_socket, options.http_listen, options.log_format)


@dataclass(frozen=True)
class Config:
    """
    A configuration file, checked.

    :ivar file: where it was read from.
    :ivar tunnels: in file order; names are unique.
    :ivar process: the ``[process]`` table.
    """

    file: str
    tunnels: tuple[TunnelConfig, ...]
    process: ProcessConfig = ProcessConfig()

    def tunnel(self, name: str) -> TunnelConfig | None:
        """The tunnel called ``name``."""
        return next((t for t in self.tunnels if t.name == name), None)


# --------------------------------------------------------------------------------------
# Line numbers


class _Scanner:
    """
    Finds the line of every key, array element and table in TOML that :mod:`tomllib`
    has already accepted: a path (``("tunnel", "web", "forwards", 1)``) -> its line. An
    ``[[array.of.tables]]`` element's path has its index, as the parsed data has.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path_, int] = {}
        self.counts: dict[tuple[str | int, ...], int] = {}

    def _peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def _advance(self, n: int) -> None:
        self.line += self.text.count("\n", self.i, self.i + n)
        self.i += n

    def _skip(self, newlines: bool) -> None:
        while self.i < len(self.text):
            char = self.text[self.i]
            if char in " \t\r" or (newlines and char == "\n"):
                self._advance(1)
            elif char == "#":
                end = self.text.find("\n", self.i)
                self._advance((len(self.text) if end < 0 else end) - self.i)
            else:
                return

    def _record(self, path: Path_, line: int) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            char = self._peek()
            if char in "\"'":
                end = self.i + 1
                while self.text[end] != char:
                    end += 2 if char == '"' and self.text[end] == "\\" else 1
                raw = self.text[self.i : end + 1]
                parts.append(tomllib.loads(f"k = {raw}")["k"])
                self._advance(end + 1 - self.i)
            else:
                match = re.compile(r"[A-Za-z0-9_-]+").match(self.text, self.i)
                assert match is not None, self.text[self.i : self.i + 20]
                parts.append(match.group())
                self._advance(match.end() - self.i)
            self._skip(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance(1)

    def _in_arrays(self, keys: tuple[str, ...]) -> Path_:
        # A table header inside an array of tables names its last element.
        path: list[str | int] = []
        for key in keys:
            path.append(key)
            count = self.counts.get(tuple(path))
            if count is not None:
                path.append(count - 1)
        return tuple(path)

    def _value(self, path: Path_) -> None:
        self._skip(newlines=False)
        for quotes in ('"""', "'''"):
            if self._peek(3) == quotes:
                end = self.i + 3
                while self.text[end : end + 3] != quotes:
                    end += 2 if quotes == '"""' and self.text[end] == "\\" else 1
                while self.text[end + 3 : end + 4] == quotes[0]:
                    end += 1  # up to two quotes may end the content
                self._advance(end + 3 - self.i)
                return
        char = self._peek()
        if char in "\"'":
            end = self.i + 1
            while self.text[end] != char:
                end += 2 if char == '"' and self.text[end] == "\\" else 1
            self._advance(end + 1 - self.i)
        elif char == "[":
            self._advance(1)
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._advance(1)
                    return
                self._record((*path, index), self.line)
                self._value((*path, index))
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance(1)
                index += 1
        elif char == "{":
            self._advance(1)
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self._advance(1)
                    return
                line = self.line
                inner = (*path, *self._key())
                self._advance(1)  # "="
                self._record(inner, line)
                self._value(inner)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance(1)
        else:
            match = re.compile(r"[^,\]}\n#]*").match(self.text, self.i)
            assert match is not None
            self._advance(match.end() - self.i)

    def scan(self) -> dict[Path_, int]:
        table: Path_ = ()
        while True:
            self._skip(newlines=True)
            if self.i >= len(self.text):
                return self.lines
            line = self.line
            if self._peek(2) == "[[":
                self._advance(2)
                keys = self._key()
                self._advance(2)
                parent = self._in_arrays(keys[:-1]) + keys[-1:]
                count = self.counts.get(parent, 0)
                self.counts[parent] = count + 1
                table = (*parent, count)
                self._record(table, line)
            elif self._peek() == "[":
                self._advance(1)
                keys = self._key()
                self._advance(1)
                table = self._in_arrays(keys)
                self._record(table, line)
            else:
                path = (*table, *self._key())
                self._advance(1)  # "="
                self._record(path, line)
                self._value(path)


def key_lines(text: str) -> dict[Path_, int]:
    """
    The line of each table, key and array element in the TOML ``text`` (which must be
    valid TOML): ``{("tunnel", "web", "host"): 3, ("tunnel", "web", "forwards", 0): 5,
    ...}``. A table made by dotted keys has the line of its first key.
    """
    return _Scanner(text).scan()


# --------------------------------------------------------------------------------------
# Reading


def _their_words(message: str) -> str:
    # The table's parsers speak as readconf.c does, about "command-line line 0"; here the
    # place is said once, in front.
    for prefix in (f"{WHERE}: ", "command-line: line 0: "):
        message = message.removeprefix(prefix)
    return message


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part)
            shown = part if bare else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            text += f".{shown}" if text else shown
    return text


def _suggest(key: str, known: Sequence[str]) -> str:
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]}?" if close else ""


_KNOWN_KEYS: Final = (*OWN_KEYS, *(row.name for row in KEYWORDS))


def _strings(value: object) -> list[str]:
    # A string or a list of strings (else nothing: _arguments has said what is wrong).
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _arguments(value: object) -> list[str] | None:
    """A TOML value as the arguments of an ssh_config line; None if it cannot be one."""
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, float):
        return [str(int(value)) if value.is_integer() else str(value)]
    if isinstance(value, str):
        # As ssh_config splits a line's arguments (quotes group).
        return split_arguments(value)
    if isinstance(value, list) and all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value
    ):
        return [str(v) for v in value]
    return None


class _Reader:
    def __init__(
        self,
        text: str,
        file: str,
        environ: Mapping[str, str],
        ssh_config: Callable[[str, str | None], Any],
        base: Path,
    ) -> None:
        self.file = file
        self.environ = environ
        self.ssh_config = ssh_config
        self.base = base
        self.lines = key_lines(text)
        self.problems: list[tuple[int, str]] = []
        self.process_config = ProcessConfig()

    def line_of(self, path: Path_) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            inside = [line for p, line in self.lines.items() if p[: len(path)] == path]
            if inside:
                return min(inside)
            path = path[:-1]
        return 1

    def problem(self, path: Path_, what: str, line: int | None = None) -> None:
        where = line if line is not None else self.line_of(path)
        self.problems.append((where, f"{self.file} line {where}: {_dotted(path)}: {what}"))

    def read(self, data: dict[str, Any]) -> tuple[TunnelConfig, ...]:
        for key in data:
            if key not in TOP_KEYS:
                self.problem((key,), f"unknown key{_suggest(key, TOP_KEYS)}")
        if "process" in data:
            self.process(data["process"])
        tunnels = data.get("tunnel")
        if tunnels is None or tunnels == {}:
            self.problems.append(
                (
                    1,
                    f"{self.file} line 1: no tunnels: add a [tunnel.NAME] table with host "
                    "and forwards",
                )
            )
            return ()
        if not isinstance(tunnels, dict):
            self.problem(("tunnel",), "must be tables: [tunnel.NAME]")
            return ()
        found = []
        for name, table in tunnels.items():
            path: Path_ = ("tunnel", name)
            if not _TUNNEL_NAME.fullmatch(name):
                self.problem(
                    path,
                    "a tunnel's name is letters, digits, '.', '_' and '-', first a letter or digit",
                )
            if not isinstance(table, dict):
                self.problem(path, "must be a table: [tunnel.NAME] with host and forwards")
                continue
            tunnel = self.tunnel(name, table)
            if tunnel is not None:
                found.append(tunnel)
        return tuple(found)

    def process(self, table: object) -> None:
        path: Path_ = ("process",)
        if not isinstance(table, dict):
            self.problem(path, "must be a table: [process] with ControlSocket, HttpListen, ...")
            return
        values: dict[str, Any] = {}
        for key, value in table.items():
            row = keyword_named(key)
            if row is None or row.name not in PROCESS_KEYS:
                if row is not None or key in OWN_KEYS:
                    what = "a tunnel's setting: put it in a [tunnel.NAME] table"
                else:
                    what = f"unknown key{_suggest(key, PROCESS_KEYS)}"
                self.problem((*path, key), what)
                continue
            args = _arguments(value)
            if args is None or (isinstance(value, list)):
                self.problem((*path, key), "give a string or a number")
                continue
            try:
                values[row.command] = row.parse(key, args)
            except SpecError as error:
                self.problem((*path, key), _their_words(error.message))
        self.process_config = ProcessConfig(**values)

    def tunnel(self, name: str, table: dict[str, Any]) -> TunnelConfig | None:
        path: Path_ = ("tunnel", name)
        before = len(self.problems)
        settings: list[tuple[str, Any]] = []
        forwards: list[ForwardConfig] = []
        for key, value in table.items():
            if key in OWN_KEYS:
                continue
            row = keyword_named(key)
            if row is None:
                self.problem((*path, key), f"unknown key{_suggest(key, _KNOWN_KEYS)}")
                continue
            if row.name in PROCESS_KEYS:
                # One control socket, one listener, one log for every tunnel.
                self.problem(
                    (*path, key), "a setting of the whole process: put it in the [process] table"
                )
                continue
            args = _arguments(value)
            if args is None:
                self.problem(
                    (*path, key), "give a string, a number, true/false or a list of strings"
                )
                continue
            groups = [[a] for a in args] if row.collect != "first" else [args]
            if row.command == "forward_policies":
                # Each string is one policy line, "8080 allow=... rate=10".
                groups = [[" ".join(split_arguments(v))] for v in _strings(value)]
            for group in groups:
                try:
                    parsed = row.parse(key, group)
                except SpecError as error:
                    self.problem((*path, key), _their_words(error.message))
                    continue
                if row.command == "remote_forwards":
                    forwards.append(
                        ForwardConfig(" ".join(group), parsed, self.line_of((*path, key)))
                    )
                else:
                    settings.append((row.name, parsed))
        forwards = self.forwards(path, table.get("forwards")) + forwards
        if "servers" in table or any(name == _GROUP_SERVER for name, _ in settings):
            return self.group(name, path, table, settings, forwards, before)
        host = self.text_value(path, table, "host")
        password = self.password(path, table)
        alias = self.text_value(path, table, "ssh_config_host")
        config_file = self.text_value(path, table, "ssh_config_file")
        if config_file is not None and alias is None:
            self.problem((*path, "ssh_config_file"), "needs ssh_config_host")
        if alias is not None:
            host = self.from_ssh_config(path, alias, config_file, host, settings, forwards)
        if host is None and alias is None and "host" not in table:
            self.problem(path, 'no host: give host = "NAME" (or ssh_config_host)')
        elif host is not None:
            try:
                check_host_name(host)
            except SpecError as error:
                self.problem((*path, "host"), error.message)
        if not forwards and "forwards" not in table:
            self.problem(path, 'no forwards: give forwards = ["PORT:HOST:HOSTPORT", ...]')
        self.check_duplicates(path, forwards)
        forwards = self.attach_policies(path, table, settings, forwards)
        if len(self.problems) > before or host is None:
            return None
        tunnel = TunnelConfig(
            name, host, tuple(settings), password, tuple(forwards), self.line_of(path)
        )
        self.check_options(path, tunnel)
        return tunnel if len(self.problems) == before else None

    # -- tunnel groups (issue #15)

    def group(
        self,
        name: str,
        path: Path_,
        table: dict[str, Any],
        settings: list[tuple[str, Any]],
        forwards: list[ForwardConfig],
        before: int,
    ) -> TunnelConfig | None:
        """A tunnel with ``servers`` (or ``GroupServer``): the tunnel's own settings
        apply to every server, each entry's over them."""
        shared = [(n, v) for n, v in settings if _row_command(n) not in _GROUP_COMMANDS]
        password = self.password(path, table)
        servers: list[TunnelConfig] = []
        if "host" in table or "ssh_config_host" in table:
            # The tunnel's own host is the first server, as the command's destination.
            first = self.server_entry(path, {k: table[k] for k in SERVER_KEYS if k in table})
            if first is not None:
                servers.append(first)
        for n, value in settings:
            if n == _GROUP_SERVER:
                server = self.server_from_destination(value)
                servers.append(replace(server, line=self.line_of(path)))
        entries = table.get("servers")
        if entries is not None:
            where = (*path, "servers")
            if not isinstance(entries, list) or not entries:
                self.problem(
                    where,
                    'give a list of servers: ["[user@]host[:port]", {host = ..., ...}, ...]',
                )
            else:
                for index, entry in enumerate(entries):
                    if isinstance(entry, str):
                        destination = self.destination((*where, index), entry)
                        if destination is not None:
                            server = self.server_from_destination(destination)
                            servers.append(replace(server, line=self.line_of((*where, index))))
                    elif isinstance(entry, dict):
                        from_table = self.server_entry((*where, index), entry)
                        if from_table is not None:
                            servers.append(from_table)
                    else:
                        self.problem(
                            (*where, index),
                            'give "[user@]host[:port]" or a table {host = ..., Port = ..., ...}',
                        )
        if not forwards and "forwards" not in table:
            self.problem(path, 'no forwards: give forwards = ["PORT:HOST:HOSTPORT", ...]')
        self.check_duplicates(path, forwards)
        # Each server's entry settings first, then the tunnel's (the first value wins).
        servers = [
            TunnelConfig(
                s.name or _label(s.host, (*s.settings, *shared)),
                s.host,
                (*s.settings, *shared),
                s.password if s.password is not None else password,
                (),
                s.line,
            )
            for s in servers
        ]
        seen: dict[str, int] = {}
        for server in servers:
            if server.name in seen:
                self.problem(
                    path,
                    f"two servers are called {server.name!r}: give each a different name",
                    server.line,
                )
            seen[server.name] = server.line
        if len(self.problems) > before or not servers:
            return None
        tunnel = TunnelConfig(
            name,
            servers[0].host,
            tuple(settings),
            password,
            tuple(forwards),
            self.line_of(path),
            tuple(servers),
        )
        for server in servers:
            self.check_options(path, server)
        return tunnel if len(self.problems) == before else None

    def destination(self, where: Path_, text: str) -> Any:
        row = keyword_named(_GROUP_SERVER)
        assert row is not None
        try:
            return row.parse(_GROUP_SERVER, [text])
        except SpecError as error:
            self.problem(where, _their_words(error.message))
            return None

    def server_from_destination(self, destination: Any) -> TunnelConfig:
        own: list[tuple[str, Any]] = []
        if destination.user is not None:
            own.append((_USER, destination.user))
        if destination.port is not None:
            own.append((_PORT, destination.port))
        return TunnelConfig("", destination.host, tuple(own), None)

    def server_entry(self, where: Path_, entry: dict[str, Any]) -> TunnelConfig | None:
        before = len(self.problems)
        settings: list[tuple[str, Any]] = []
        for key, value in entry.items():
            if key in SERVER_KEYS:
                continue
            row = keyword_named(key)
            if row is None:
                self.problem(
                    (*where, key), f"unknown key{_suggest(key, (*SERVER_KEYS, *_KNOWN_KEYS))}"
                )
                continue
            if row.name in PROCESS_KEYS or row.command in (*_GROUP_COMMANDS, "remote_forwards"):
                self.problem(
                    (*where, key),
                    "a setting of the whole group: put it in the tunnel's table, not a server's",
                )
                continue
            args = _arguments(value)
            if args is None:
                self.problem(
                    (*where, key), "give a string, a number, true/false or a list of strings"
                )
                continue
            groups = [[a] for a in args] if row.collect != "first" else [args]
            for group in groups:
                try:
                    settings.append((row.name, row.parse(key, group)))
                except SpecError as error:
                    self.problem((*where, key), _their_words(error.message))
        host = self.text_value(where, entry, "host")
        alias = self.text_value(where, entry, "ssh_config_host")
        config_file = self.text_value(where, entry, "ssh_config_file")
        password = self.password(where, entry)
        label = self.text_value(where, entry, "name")
        if config_file is not None and alias is None:
            self.problem((*where, "ssh_config_file"), "needs ssh_config_host")
        if alias is not None:
            ignored: list[ForwardConfig] = []
            host = self.from_ssh_config(where, alias, config_file, host, settings, ignored)
        if host is None and alias is None and "host" not in entry:
            self.problem(where, 'no host: give host = "NAME" (or ssh_config_host)')
        elif host is not None:
            try:
                check_host_name(host)
            except SpecError as error:
                self.problem((*where, "host"), error.message)
        if len(self.problems) > before or host is None:
            return None
        # No name: HOST:PORT, once the tunnel's settings are known (group()).
        return TunnelConfig(label or "", host, tuple(settings), password, (), self.line_of(where))

    def text_value(self, path: Path_, table: dict[str, Any], key: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.problem((*path, key), "give a non-empty string")
            return None
        return value

    def forwards(self, path: Path_, value: object) -> list[ForwardConfig]:
        if value is None:
            return []
        path = (*path, "forwards")
        if not isinstance(value, list):
            self.problem(path, 'give a list: forwards = ["PORT:HOST:HOSTPORT", ...]')
            return []
        if not value:
            self.problem(path, "is empty: give at least one forward")
        found = []
        for index, item in enumerate(value):
            where = (*path, index)
            spec_text: str | None
            if isinstance(item, str):
                spec_text, name = item, item
            elif isinstance(item, dict):
                spec_text, name = self.forward_table(where, item)
                if spec_text is None:
                    continue
            else:
                self.problem(
                    where, 'give "[BIND:]PORT:HOST:HOSTPORT" or {listen = ..., target = ...}'
                )
                continue
            result = forward_or_reason(spec_text)
            if isinstance(result, str):
                self.problem(where, f"bad forward '{spec_text}': {result}")
                continue
            if isinstance(item, dict):
                policy = self.forward_policy(where, item)
                if policy is False:
                    continue
                if isinstance(policy, ForwardPolicy):
                    if policy.filters_originators and result.listen_path is not None:
                        self.problem(
                            where,
                            "a socket forward has no originator address, so allow and "
                            "deny cannot apply",
                        )
                        continue
                    result = dataclasses.replace(result, policy=policy)
            found.append(ForwardConfig(name or spec_text, result, self.line_of(where)))
        return found

    def attach_policies(
        self,
        path: Path_,
        table: dict[str, Any],
        settings: list[tuple[str, Any]],
        forwards: list[ForwardConfig],
    ) -> list[ForwardConfig]:
        # Issue #15: ForwardPolicy lines join the forwards they name (the forward tables'
        # own policy keys are already on them); they are not settings of the tunnel.
        policies: list[PolicyFor] = [v for n, v in settings if isinstance(v, PolicyFor)]
        if not policies:
            return forwards
        settings[:] = [(n, v) for n, v in settings if not isinstance(v, PolicyFor)]
        key = next(
            (k for k in table if getattr(keyword_named(k), "command", "") == "forward_policies"),
            "",
        )
        try:
            specs = attach_policies([f.spec for f in forwards], policies)
        except SpecError as error:
            self.problem((*path, key) if key else path, error.message)
            return forwards
        return [dataclasses.replace(f, spec=spec) for f, spec in zip(forwards, specs, strict=True)]

    def forward_policy(self, where: Path_, item: dict[str, Any]) -> ForwardPolicy | bool | None:
        # The policy keys of a forward table; False when one is wrong (said already).
        texts: dict[str, str] = {}
        ok = True
        for key in POLICY_KEYS:
            if key not in item:
                continue
            value = item[key]
            if isinstance(value, list) and key in ("allow", "deny"):
                # A list of strings, or one string with commas, as after -o.
                good = all(isinstance(v, str) for v in value)
                text = ",".join(value) if good else ""
            elif isinstance(value, bool):
                good, text = False, ""
            else:
                good, text = isinstance(value, (str, int, float)), str(value)
            if not good:
                what = (
                    'a list of addresses or CIDR blocks, e.g. ["10.0.0.0/8", "::1"]'
                    if key in ("allow", "deny")
                    else "a number or a string"
                )
                self.problem((*where, key), f"give {what}")
                ok = False
                continue
            try:
                check_value(key, text)
            except SpecError as error:
                self.problem((*where, key), error.message)
                ok = False
                continue
            texts[key] = text
        if not ok:
            return False
        if not texts:
            return None
        try:
            return policy_from_values(texts)
        except SpecError as error:
            self.problem(where, error.message)
            return False

    def forward_table(self, where: Path_, item: dict[str, Any]) -> tuple[str | None, str]:
        for key in item:
            if key not in FORWARD_KEYS:
                self.problem((*where, key), f"unknown key{_suggest(key, FORWARD_KEYS)}")
        listen = item.get("listen")
        target = item.get("target")
        name = item.get("name")
        ok = True
        if isinstance(listen, int) and not isinstance(listen, bool):
            listen = str(listen)
        if not isinstance(listen, str) or not listen:
            self.problem(
                (*where, "listen") if "listen" in item else where,
                'give listen = "[BIND_ADDRESS:]PORT" (or a socket path)',
            )
            ok = False
        if target is not None and (not isinstance(target, str) or not target):
            self.problem(
                (*where, "target"), 'give target = "HOST:PORT" or a socket path (none: SOCKS)'
            )
            ok = False
        if name is not None and (not isinstance(name, str) or not name):
            self.problem((*where, "name"), "give a non-empty string")
            ok = False
        if not ok or any(key not in FORWARD_KEYS for key in item):
            return None, ""
        assert isinstance(listen, str)
        text = listen if target is None else f"{listen}:{target}"
        return text, name if isinstance(name, str) else text

    def password(self, path: Path_, table: dict[str, Any]) -> str | None:
        from_file = self.text_value(path, table, "password_file")
        from_env = self.text_value(path, table, "password_env")
        if from_file is not None and from_env is not None:
            self.problem((*path, "password_env"), "give password_file or password_env, not both")
            return None
        if from_env is not None:
            password = self.environ.get(from_env)
            if not password:
                self.problem(
                    (*path, "password_env"), f"the environment variable {from_env} is not set"
                )
            return password or None
        if from_file is None:
            return None
        file = self.base / os.path.expanduser(from_file)
        try:
            mode = file.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                self.problem(
                    (*path, "password_file"),
                    f"{file} is open to group or others: chmod 600 it",
                )
                return None
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            why = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            self.problem((*path, "password_file"), f"cannot read {file}: {why}")
            return None
        password = text.rstrip("\r\n")
        if not password:
            self.problem((*path, "password_file"), f"{file} is empty")
            return None
        return password

    def from_ssh_config(
        self,
        path: Path_,
        alias: str,
        config_file: str | None,
        host: str | None,
        settings: list[tuple[str, Any]],
        forwards: list[ForwardConfig],
    ) -> str | None:
        where = (*path, "ssh_config_host")
        try:
            resolved = self.ssh_config(alias, config_file)
        except SpecError as error:
            self.problem(where, error.message)
            return host
        for entry in resolved.entries:
            row = keyword_named(entry.keyword)
            if row is None:
                continue  # HostName is host; keywords rtunnel lacks, ssh would read too
            try:
                values = [resolved.expand_value(entry, v) for v in entry.values]
                parsed = row.parse(entry.written, values)
            except SpecError as error:
                self.problem(where, f"{entry.where}: {_their_words(error.message)}")
                continue
            if row.command == "remote_forwards":
                if all(f.spec != parsed for f in forwards):
                    forwards.append(
                        ForwardConfig(" ".join(entry.values), parsed, self.line_of(where))
                    )
            else:
                settings.append((row.name, parsed))
        return host if host is not None else str(resolved.host)

    def check_duplicates(self, path: Path_, forwards: list[ForwardConfig]) -> None:
        seen: dict[RemoteForwardSpec, ForwardConfig] = {}
        for forward in forwards:
            first = seen.setdefault(forward.spec, forward)
            if first is not forward:
                self.problems.append(
                    (
                        forward.line,
                        f"{self.file} line {forward.line}: {_dotted((*path, 'forwards'))}: "
                        f"'{forward.name}' is the same forward as '{first.name}' "
                        f"(line {first.line})",
                    )
                )

    def check_options(self, path: Path_, tunnel: TunnelConfig) -> None:
        # What the option groups refuse only together is found now, not when the tunnel
        # starts. (The rest the runner adds, credentials and the reconnect policy, is
        # made from values the rows have checked.)
        from rtunnel.options import TunnelOptions

        try:
            TunnelOptions.create(**tunnel.client_options().tunnel)
        except SpecError as error:
            self.problem(path, _their_words(error.message))


def _label(host: str, settings: Sequence[tuple[str, Any]]) -> str:
    """A group server's name when the file gives none: ``HOST:PORT``."""
    port = _setting(settings, _PORT) or 22
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _row_command(name: str) -> str:
    row = keyword_named(name)
    return row.command if row is not None else ""


def _setting(settings: Sequence[tuple[str, Any]], name: str) -> Any:
    """The first value of the row ``name`` in ``settings``; None if none."""
    return next((value for n, value in settings if n == name), None)


# The rows a group reads by name (their spelling stays in the keyword table).
_GROUP_SERVER: Final = next(row.name for row in KEYWORDS if row.command == "group_servers")
_USER: Final = next(row.name for row in KEYWORDS if row.command == "user")
_PORT: Final = next(row.name for row in KEYWORDS if row.command == "port")


def _default_ssh_config(alias: str, config_file: str | None) -> Any:
    from rtunnel.openssh.ssh_config import resolve

    return resolve(alias, config_file=os.path.expanduser(config_file) if config_file else None)


def parse_config(
    text: str,
    file: str = "<config>",
    *,
    environ: Mapping[str, str] | None = None,
    ssh_config: Callable[[str, str | None], Any] | None = None,
    base: Path | None = None,
) -> Config:
    """
    Read and check a configuration from its text.

    :param file: its name, for the messages.
    :param environ: where ``password_env`` looks (default ``os.environ``).
    :param ssh_config: resolves ``ssh_config_host`` (given the Host and
        ``ssh_config_file``) to a :class:`~rtunnel.openssh.ssh_config.ResolvedConfig`;
        default :func:`rtunnel.openssh.ssh_config.resolve`.
    :param base: what relative paths (``password_file``) are relative to (default: the
        file's directory, else the current one).
    :raises ConfigError: naming every problem by file, line and key.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if match is None:
            raise ConfigError([f"{file}: not valid TOML: {message}"]) from None
        what = message[: match.start()].strip()
        raise ConfigError(
            [f"{file} line {match.group(1)}: not valid TOML: {what} (column {match.group(2)})"]
        ) from None
    if base is None:
        base = Path(file).parent if file != "<config>" else Path()
    reader = _Reader(
        text,
        file,
        os.environ if environ is None else environ,
        ssh_config or _default_ssh_config,
        base,
    )
    tunnels = reader.read(data)
    if reader.problems:
        raise ConfigError([message for _, message in sorted(reader.problems, key=lambda p: p[0])])
    return Config(file, tunnels, reader.process_config)


def load_config(
    file: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    ssh_config: Callable[[str, str | None], Any] | None = None,
) -> Config:
    """
    Read and check the configuration file ``file`` (see :func:`parse_config`).

    :raises ConfigError: when it cannot be read, or naming every problem in it.
    """
    name = os.fspath(file)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{name}: cannot read the configuration: {error.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: not UTF-8 text"]) from None
    return parse_config(text, name, environ=environ, ssh_config=ssh_config)
