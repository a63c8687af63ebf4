"""
The command's ``ssh_config``: the files read as ``ssh`` reads them (``~/.ssh/config`` then
``/etc/ssh/ssh_config``, or ``-F FILE``, or ``-F none``; resolved by
:func:`rtunnel.openssh.ssh_config.resolve`), and every line that took effect applied
through the same rows of the one keyword table as ``-o``
(:func:`~rtunnel.openssh.keywords.parse_in_file`). The command line is applied first, so
it wins, as in ``ssh`` (readconf.c: "the first obtained value will be used").

A keyword ``ssh`` knows and rtunnel does not use (``ForwardAgent``, ``LocalForward``,
``SendEnv``, ...) is ignored with a ``debug1`` note, as ``ssh`` ignores what it does not
support: a user's ``Host *`` block written for ``ssh`` must not stop the tunnel.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtunnel.errors import SpecError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.keywords import (
    GSSAPI_AUTHENTICATION,
    HOST_NAME,
    KEYWORDS,
    PORT,
    PROXY_JUMP,
    REMOTE_FORWARD,
    USER,
    Keyword,
    keyword_named,
    parse_in_file,
)
from rtunnel.openssh.ssh_config import KEYWORDS as SSH_KEYWORDS
from rtunnel.openssh.ssh_config import (
    ConfigEntry,
    ResolvedConfig,
    format_like_ssh_G,
    parse_forward,
    resolve,
    run_in_shell,
)

__all__ = [
    "COMMAND_LINE",
    "ConfigRead",
    "as_option",
    "expand_host_name",
    "known_to_ssh",
    "read_ssh_config",
    "remote_forward_option",
    "ssh_G_lines",
    "used_by_rtunnel",
]

#: The file name resolve() gives ``-o`` options (ssh.c's "command-line").
COMMAND_LINE = "command-line"

#: The system-wide file ``ssh`` reads after the user's (ssh.c, ``_PATH_HOST_CONFIG_FILE``).
SYSTEM_FILE = "/etc/ssh/ssh_config"


@dataclass(frozen=True)
class ConfigRead:
    """
    What reading the configuration gave.

    :ivar resolved: the files' answer for the destination (host, user, port, entries).
    :ivar notes: ``debug1`` lines: the files read (ssh's "Reading configuration data
        FILE"), and each line ignored, with why.
    """

    resolved: ResolvedConfig
    notes: tuple[str, ...]


def _row_for(entry: ConfigEntry) -> Keyword[Any] | None:
    row = keyword_named(entry.keyword)
    return None if row is None or row.own else row


def used_by_rtunnel(keyword: str) -> bool:
    """Whether the ssh_config ``keyword`` (any case, any alias) is one rtunnel applies."""
    row = keyword_named(keyword)
    return row is not None and not row.own


_SSH_NAMES = frozenset(name for row in SSH_KEYWORDS for name in (row.name, *row.aliases))


def known_to_ssh(keyword: str) -> bool:
    """Whether ``ssh``'s reader knows ``keyword`` (rtunnel's own and ``ChannelTimeout``,
    newer than OpenSSH 9.2's client, it does not)."""
    return keyword.lower() in _SSH_NAMES


def expand_host_name(template: str, host: str) -> str:
    """
    ``HostName`` with its tokens, ``%h`` (the destination's host) and ``%%``, expanded as
    ssh.c expands it (``percent_expand(options.hostname, "h", host)``).

    :raises SpecError: for any other ``%`` token.
    """
    out: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        token = template[i + 1 : i + 2]
        if token == "%":
            out.append("%")
        elif token == "h":
            out.append(host)
        else:
            raise SpecError(f"HostName {template!r}: unknown token %{token} (only %h and %%)")
        i += 2
    return "".join(out)


def as_option(row: Keyword[Any], *values: str) -> str:
    """A flag's value as the ``-o`` line :func:`resolve` reads: each value quoted as
    ``argv_split`` (misc.c) unquotes it."""
    quoted = ['"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values]
    return f"{row.name}={' '.join(quoted)}"


def remote_forward_option(spec: str) -> str | None:
    """
    ``-R spec`` as the ``-o`` line ssh's reader takes: two arguments, listen and target,
    as readconf.c joins them, or one for a dynamic forward (ssh.c, case 'R', parses the
    spec itself; an ``-o RemoteForward`` of one argument is a dynamic one). None when
    ssh's ``parse_forward`` refuses it.
    """
    for dynamic in (False, True):
        forward = parse_forward(spec, dynamic=dynamic, remote=True, environ={})
        if forward is not None:
            break
    else:
        return None
    port = forward.listen_port
    if forward.listen_path is not None:
        listen = forward.listen_path
    elif forward.listen_host is not None:
        listen = f"[{forward.listen_host}]:{port}"
    else:
        listen = str(port)
    if dynamic:
        return as_option(REMOTE_FORWARD, listen)
    target = forward.connect_path or f"[{forward.connect_host}]:{forward.connect_port}"
    return as_option(REMOTE_FORWARD, listen, target)


# Read by resolve() itself: the host, user and port come from ResolvedConfig.
_RESOLVED_ROWS = frozenset(row.name for row in (HOST_NAME, USER, PORT))


def read_ssh_config(
    destination: str,
    options: ClientOptions,
    *,
    command_line: Sequence[str] = (),
    config_file: str | None = None,
    user_file: str | None = None,
    system_file: str = SYSTEM_FILE,
    home: str | None = None,
    local_user: str | None = None,
    environ: Mapping[str, str] | None = None,
    run: Callable[[str], int] | None = run_in_shell,
) -> ConfigRead:
    """
    Read the ``ssh_config`` files for ``destination`` as ``ssh`` does and apply what they
    set to ``options`` (already holding the command line's flags and ``-o`` options),
    then the resolved user and port.

    :param command_line: the command line as ``-o`` lines (flags translated), for what
        the files' ``Match`` and ``%`` tokens see; only keywords ``ssh`` knows.
    :param config_file: ``-F``: the file instead of the user's and the system's, or
        ``"none"``.
    :return: the resolved configuration (``resolved.host`` is the host to connect to)
        and the ``debug1`` notes.
    :raises SpecError: ssh's message for a bad file (``FILE line N: ...``), or the
        keyword row's message for a value rtunnel cannot use, naming the line.
    """
    resolved = resolve(
        destination,
        config_file=config_file,
        user_file=user_file,
        system_file=system_file,
        command_line=command_line,
        home=home,
        local_user=local_user,
        environ=environ,
        run=run,
    )
    notes = [f"Reading configuration data {path}" for path in resolved.files]
    notes += [line.message for line in resolved.ignored]
    for entry in resolved.entries:
        if entry.file == COMMAND_LINE:
            continue  # applied already, by the flags and -o
        row = _row_for(entry)
        if row is None:
            notes.append(
                f'{entry.where}: Ignored option "{entry.keyword}": rtunnel does not use it'
            )
            continue
        if row.name in _RESOLVED_ROWS:
            continue
        if row.competes_as == PROXY_JUMP.competes_as:
            # ProxyCommand's and ProxyJump's % tokens are expanded when connecting.
            args = list(entry.values)
        else:
            # ~, % tokens and ${VAR}, for the keywords ssh expands them in.
            args = [resolved.expand_value(entry, value) for value in entry.values]
        value = parse_in_file(row, entry.written, args, entry.where)
        if row is GSSAPI_AUTHENTICATION and value and not _gssapi_installed():
            # Debian's /etc/ssh/ssh_config says GSSAPIAuthentication yes for every host;
            # without the optional python-gssapi every logon would fail up front. ssh
            # built without GSSAPI ignores the keyword too ("Unsupported option").
            notes.append(
                f"{entry.where}: Ignored option {entry.written!r}: python-gssapi is not "
                "installed (pip install 'rtunnel[gssapi]')"
            )
            continue
        options.apply(row, value)
    options.user = resolved.user
    options.port = resolved.port
    return ConfigRead(resolved, tuple(notes))


def _gssapi_installed() -> bool:
    try:
        return importlib.util.find_spec("gssapi") is not None
    except (ImportError, ValueError):  # ValueError: None in sys.modules
        return False


#: The keywords ``rtunnel -G`` prints: the table's, as ``ssh -G`` names them.
_SHOWN = frozenset(
    name.lower() for row in KEYWORDS if not row.own for name in (row.name, *row.aliases)
)


def ssh_G_lines(resolved: ResolvedConfig) -> list[str]:  # noqa: N802 - ssh's flag
    """
    ``rtunnel -G``: the lines ``ssh -G`` prints (:func:`format_like_ssh_G`) for the
    keywords rtunnel uses, ``host``, ``user``, ``hostname`` and ``port`` first.
    """
    lines = format_like_ssh_G(resolved)
    return lines[:4] + [line for line in lines[4:] if line.split(" ", 1)[0].lower() in _SHOWN]
