"""
The pure core of the ``rtunnel`` command line: OpenSSH's syntax for remote forwards
(``-R``) and ``-o`` options, and the exact lines OpenSSH prints about them. Destinations
and jump hosts, which the library reads too, are in :mod:`rtunnel._core.syntax`.

Nothing here touches the network, the reactor or the file system, so all of it is tested
as plain functions. Every message copied from OpenSSH names the source file it comes from
(openssh-portable: ``ssh.c``, ``readconf.c``, ``misc.c``, ``channels.c``,
``sshconnect2.c``), so a script written against ``ssh`` keeps working against
``rtunnel``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

from typing_extensions import override

from rtunnel._core.syntax import parse_proxy_jump, to_port
from rtunnel.client.transport._algorithms import resolve
from rtunnel.errors import SpecError

if TYPE_CHECKING:
    from rtunnel.tunnel import HostKeyPolicy

__all__ = [
    "HOST_KEY_VERIFICATION_FAILED",
    "LOG_LEVELS",
    "SUPPORTED_OPTIONS",
    "ClientOptions",
    "OptionValue",
    "RemoteForwardSpec",
    "check_host_name",
    "check_user_name",
    "format_allocated",
    "format_forward_failure",
    "format_permission_denied",
    "parse_option",
    "parse_port",
    "parse_rekey_limit",
    "parse_remote_forward",
    "parse_time",
    "split_arguments",
]

# OpenSSH's -o lines are processed as line 0 of a file called "command-line"
# (ssh.c: process_config_line(..., "command-line", 0, ...)); every readconf.c message
# starts with that. Note the two spellings: most messages say "%s line %d:", only the
# unknown-keyword one says "%s: line %d:" (readconf.c, parse_token).
_WHERE: Final = "command-line line 0"

#: sshconnect2.c, verify_host_key_callback: the last line ``ssh`` prints when it refuses
#: a host key.
HOST_KEY_VERIFICATION_FAILED: Final = "Host key verification failed."

#: OpenSSH's log levels, quietest first (log.c, log_levels[]). ``DEBUG`` is an alias of
#: ``DEBUG1``.
LOG_LEVELS: Final = (
    "QUIET",
    "FATAL",
    "ERROR",
    "INFO",
    "VERBOSE",
    "DEBUG1",
    "DEBUG2",
    "DEBUG3",
)

# NI_MAXHOST: parse_forward (readconf.c) refuses host names this long or longer.
_NI_MAXHOST: Final = 1025
# isspace() in the C locale: parse_forward skips these before the first field.
_C_WHITESPACE: Final = " \t\n\v\f\r"


# --------------------------------------------------------------------------------------
# Ports and times


def parse_port(text: str) -> int:
    """
    Parse ``-p port`` the way ``ssh`` does: a decimal number from 1 to 65535.

    :raises SpecError: ``Bad port '<text>'`` (ssh.c, case 'p'), otherwise.
    """
    port = to_port(text)
    if port is None or port == 0:
        raise SpecError(f"Bad port '{text}'")
    return port


_TIME_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_PART: Final = re.compile(r"([0-9]+)([sSmMhHdDwW]?)")
_INT_MAX: Final = 2**31 - 1


def parse_time(text: str) -> int:
    """
    OpenSSH's ``convtime`` (misc.c): a time in seconds, written as a number or as a
    sequence like ``1h30m`` (units ``s``, ``m``, ``h``, ``d``, ``w``, either case).

    :raises SpecError: if ``text`` is not such a time or exceeds ``INT_MAX`` seconds.
    """
    total = 0
    position = 0
    if not text:
        raise SpecError(f"invalid time value '{text}'")
    while position < len(text):
        match = _TIME_PART.match(text, position)
        if match is None:
            raise SpecError(f"invalid time value '{text}'")
        digits, unit = match.groups()
        digits = digits.lstrip("0") or "0"
        if len(digits) > 10:
            raise SpecError(f"invalid time value '{text}'")
        total += int(digits) * _TIME_UNITS[unit.lower()]
        if total > _INT_MAX:
            raise SpecError(f"invalid time value '{text}'")
        position = match.end()
    return total


# --------------------------------------------------------------------------------------
# Remote forwards: -R [bind_address:]port:host:hostport


@dataclass(frozen=True)
class RemoteForwardSpec:
    """
    One remote forward, as ``ssh -R`` takes it.

    :ivar bind_address: the address string sent in ``tcpip-forward`` (RFC 4254 section
        7.1). ``"localhost"`` when the spec gave none (the server listens on loopback
        only, as OpenSSH asks); ``""`` for all interfaces (written ``*`` or left empty in
        the spec).
    :ivar port: the port the server should listen on; 0 lets the server choose.
    :ivar host: the local host each inbound connection is forwarded to (``"socks"`` for a
        dynamic forward, as ssh names it).
    :ivar host_port: the local port (1-65535; 0 for a dynamic forward).
    :ivar dynamic: ``-R [bind_address:]port`` alone: a remote dynamic (SOCKS) forward.
    :ivar target_path: ``-R [bind_address:]port:/path/to/socket``: a local Unix-domain
        socket as the target (``host`` is then ``""`` and ``host_port`` 0).
    """

    bind_address: str
    port: int
    host: str
    host_port: int
    dynamic: bool = False
    target_path: str | None = None
    listen_path: str | None = None

    @classmethod
    def unix_target(cls, bind_address: str, port: int, path: str) -> RemoteForwardSpec:
        """A forward to the local Unix-domain socket ``path``."""
        return cls(bind_address, port, "", 0, target_path=path)

    @classmethod
    def unix_listener(
        cls,
        listen_path: str,
        host: str = "",
        host_port: int = 0,
        target_path: str | None = None,
    ) -> RemoteForwardSpec:
        """A forward from the socket ``listen_path`` on the server's side."""
        return cls(
            listen_path, 0, host, host_port, target_path=target_path, listen_path=listen_path
        )

    @classmethod
    def socks(cls, bind_address: str, port: int) -> RemoteForwardSpec:
        """A remote dynamic forward; ssh calls its target ``socks:0``."""
        return cls(bind_address, port, "socks", 0, dynamic=True)

    def __post_init__(self) -> None:
        if self.bind_address == "*":
            # "*" and "" both mean all interfaces (channels.c, channel_rfwd_bind_host);
            # keep one spelling so equal forwards compare equal.
            object.__setattr__(self, "bind_address", "")
        if not 0 <= self.port <= 65535:
            raise SpecError(f"Bad remote forwarding port {self.port} (must be 0-65535)")
        if self.dynamic:
            return
        if self.listen_path is not None and not self.listen_path:
            raise SpecError("Bad remote forward: the listen socket path is empty")
        if self.target_path is not None:
            if not self.target_path:
                raise SpecError("Bad remote forward: the target socket path is empty")
            return
        if not 1 <= self.host_port <= 65535:
            raise SpecError(f"Bad target port {self.host_port} (must be 1-65535)")
        if not self.host:
            raise SpecError("Bad remote forward: the target host is empty")

    def to_spec(self) -> str:
        """
        The spec in ``-R`` syntax, always with the bind address (``*`` for all
        interfaces); :func:`parse_remote_forward` reads it back to an equal object.
        """
        if self.listen_path is not None:
            listen = _quote_path(self.listen_path)
            if self.target_path is not None:
                return f"{listen}:{_quote_path(self.target_path)}"
            return f"{listen}:{_quote_field(self.host)}:{self.host_port}"
        bind = "*" if self.bind_address == "" else _quote_field(self.bind_address)
        if self.dynamic:
            return f"{bind}:{self.port}"
        if self.target_path is not None:
            return f"{bind}:{self.port}:{_quote_path(self.target_path)}"
        return f"{bind}:{self.port}:{_quote_field(self.host)}:{self.host_port}"

    @override
    def __str__(self) -> str:
        return self.to_spec()


def _quote_path(path: str) -> str:
    # A path keeps its "/" unescaped: that is what marks it as one (readconf.c).
    return "".join("\\" + c if c in "\\:" else c for c in path)


def _quote_field(value: str) -> str:
    """
    Write one field so ``parse_fwd_field`` (readconf.c) reads it back unchanged:
    brackets when that is enough (IPv6 addresses), backslash escapes otherwise.
    """
    if ":" in value and "]" not in value and "/" not in value:
        return f"[{value}]"
    out = []
    for index, char in enumerate(value):
        if char in "\\:/" or (index == 0 and char == "[") or (index == 0 and char in _C_WHITESPACE):
            out.append("\\")
        out.append(char)
    return "".join(out)


class _Field(NamedTuple):
    text: str
    is_path: bool


def _split_forward_fields(spec: str) -> list[_Field] | None:
    """
    Split a forwarding spec into at most four fields like OpenSSH's ``parse_forward``
    and ``parse_fwd_field`` (readconf.c):

    - leading C whitespace is skipped;
    - a field in square brackets is taken literally (the ``]`` must end the field);
    - elsewhere a backslash makes the next character literal, and ``:`` ends a field;
    - a ``/`` outside an escape marks the field as a Unix socket path.

    Returns None when the spec is malformed (unmatched bracket, trailing backslash, more
    than four fields).
    """
    rest = spec.lstrip(_C_WHITESPACE)
    fields: list[_Field] = []
    position = 0
    while position < len(rest) and len(fields) < 4:
        if rest[position] == "[":
            end = rest.find("]", position + 1)
            if end == -1:
                return None
            after = end + 1
            if after < len(rest) and rest[after] != ":":
                return None
            content = rest[position + 1 : end]
            fields.append(_Field(content, "/" in content))
            position = after + 1 if after < len(rest) else after
            continue
        chars: list[str] = []
        is_path = False
        while position < len(rest):
            char = rest[position]
            if char == "\\":
                if position + 1 >= len(rest):
                    return None
                chars.append(rest[position + 1])
                position += 2
                continue
            if char == ":":
                position += 1
                break
            if char == "/":
                is_path = True
            chars.append(char)
            position += 1
        fields.append(_Field("".join(chars), is_path))
    if position < len(rest):
        return None  # a fifth field: trailing garbage
    return fields


_REMOTE_SYNTAX: Final = "expected [bind_address:]port:host:hostport"


def _forward_from_fields(fields: list[_Field]) -> RemoteForwardSpec | str:
    """A spec from split fields, or the reason it is not one."""
    if len(fields) in (2, 3) and fields[-1].is_path and not any(f.is_path for f in fields[:-1]):
        # [bind_address:]port:/local/socket (readconf.c, parse_forward, cases 2 and 3).
        path_port = to_port(fields[-2].text)
        if path_port is None:
            return f"bad listen port '{fields[-2].text}'"
        path_bind = fields[0].text if len(fields) == 3 else None
        return RemoteForwardSpec.unix_target(_bind_host(path_bind), path_port, fields[-1].text)
    if fields and fields[0].is_path:
        # /path/on/server:host:hostport or /path/on/server:/local/socket (readconf.c,
        # parse_forward, cases 3 and 2).
        if len(fields) == 2 and fields[1].is_path:
            return RemoteForwardSpec.unix_listener(fields[0].text, target_path=fields[1].text)
        if len(fields) == 3 and not fields[1].is_path and not fields[2].is_path:
            socket_port = to_port(fields[2].text)
            if socket_port is None or socket_port == 0:
                return f"bad target port '{fields[2].text}'"
            if not fields[1].text:
                return "missing target host"
            return RemoteForwardSpec.unix_listener(fields[0].text, fields[1].text, socket_port)
        return "expected /path/on/server:host:hostport or /path/on/server:/local/socket"
    if any(f.is_path for f in fields):
        return _REMOTE_SYNTAX
    if len(fields) in (1, 2):
        # ssh -R [bind_address:]port alone is a remote dynamic (SOCKS) forward (OpenSSH
        # 7.6; ssh.c tries parse_forward with dynamicfwd=1 after dynamicfwd=0 fails).
        listen_field = fields[-1]
        dyn_port = to_port(listen_field.text)
        if dyn_port is None:
            return f"bad listen port '{listen_field.text}'"
        dyn_bind = fields[0].text if len(fields) == 2 else None
        if dyn_bind is not None and len(dyn_bind) >= _NI_MAXHOST:
            return "host name too long"
        return RemoteForwardSpec.socks(_bind_host(dyn_bind), dyn_port)
    if len(fields) == 3:
        bind: str | None = None
        listen, host, host_port = fields
    elif len(fields) == 4:
        bind_field, listen, host, host_port = fields
        bind = bind_field.text
    else:
        return _REMOTE_SYNTAX
    port = to_port(listen.text)
    if port is None:
        return f"bad listen port '{listen.text}'"
    target_port = to_port(host_port.text)
    if target_port is None or target_port == 0:
        return f"bad target port '{host_port.text}'"
    if not host.text:
        return "missing target host"
    if len(host.text) >= _NI_MAXHOST or (bind is not None and len(bind) >= _NI_MAXHOST):
        return "host name too long"
    return RemoteForwardSpec(_bind_host(bind), port, host.text, target_port)


def _bind_host(listen_host: str | None) -> str:
    """
    The address sent in ``tcpip-forward``, as OpenSSH's ``channel_rfwd_bind_host``
    (channels.c) picks it: ``localhost`` when none was given (so an ``sshd`` with
    ``GatewayPorts clientspecified`` listens on loopback only), ``""`` (all interfaces)
    for ``*`` or an empty field.
    """
    if listen_host is None:
        return "localhost"
    if listen_host in ("", "*"):
        return ""
    return listen_host


def parse_remote_forward(spec: str) -> RemoteForwardSpec:
    """
    Parse an ``ssh -R`` spec: ``[bind_address:]port:host:hostport``, or
    ``[bind_address:]port`` alone for a remote dynamic (SOCKS) forward.

    IPv6 addresses go in square brackets (``[::1]:8080:[::1]:80``); a backslash escapes
    the next character. Port 0 asks the server to choose. OpenSSH's older slash syntax
    (``port/host/hostport``) is not accepted: since OpenSSH 6.7 a ``/`` marks a
    Unix-domain socket path, which rtunnel does not forward.

    :raises SpecError: ``Bad remote forwarding specification '<spec>': <reason>``; the
        part before the colon is ``ssh``'s own line (ssh.c, case 'R').
    """
    fields = _split_forward_fields(spec)
    result = _REMOTE_SYNTAX if fields is None else _forward_from_fields(fields)
    if isinstance(result, str):
        raise SpecError(f"Bad remote forwarding specification '{spec}': {result}")
    return result


# --------------------------------------------------------------------------------------
# User and host names on the command line


def check_user_name(user: str) -> None:
    """
    OpenSSH's check of a user name given on the command line (ssh.c, ``valid_ruser``,
    since 9.6 and in Debian's 9.2): no shell metacharacters, no ``-`` first or after a
    space, no ``\\`` last; and, beyond it, nothing that is not printable (control
    characters, invalid UTF-8).

    :raises SpecError: ``remote username contains invalid characters``, as ssh says it.
    """
    if (
        user.startswith("-")
        or user.endswith("\\")
        or not user.isprintable()
        or any(c in "'`\";&<>|(){}" for c in user)
        or re.search(r"\s-", user)
    ):
        raise SpecError("remote username contains invalid characters")


def check_host_name(host: str) -> None:
    """
    OpenSSH's check of a host name given on the command line (ssh.c, ``valid_hostname``):
    no shell metacharacters or white space, no ``-`` first; and nothing that is not
    printable, which no name lookup takes anyway.

    :raises SpecError: ``hostname contains invalid characters``, as ssh says it.
    """
    if (
        host.startswith("-")
        or not host.isprintable()
        or any(c in "'`\"$\\;&<>|(){}" or c.isspace() for c in host)
    ):
        raise SpecError("hostname contains invalid characters")


# --------------------------------------------------------------------------------------
# -o options


def split_arguments(text: str) -> list[str]:
    """
    Split an option's arguments like OpenSSH's ``argv_split`` (misc.c): on spaces and
    tabs, with single or double quotes grouping, and a backslash escaping a quote, a
    backslash, or (outside quotes) a space. Other backslashes are kept. A ``#`` that
    starts an argument ends the line (a comment).

    :raises SpecError: ``command-line line 0: invalid quotes`` (readconf.c) when a
        quote is not closed.
    """
    args: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        quote = ""
        arg: list[str] = []
        while i < n:
            char = text[i]
            if char == "\\":
                following = text[i + 1] if i + 1 < n else ""
                if following and (following in "'\"\\" or (not quote and following == " ")):
                    arg.append(following)
                    i += 2
                    continue
                arg.append(char)
            elif not quote and char in " \t":
                break
            elif not quote and char in "\"'":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                arg.append(char)
            i += 1
        if quote:
            raise SpecError(f"{_WHERE}: invalid quotes")
        args.append("".join(arg))
    return args


#: The ``-o`` options rtunnel understands, by lower-case name (OpenSSH matches option
#: names case-insensitively, readconf.c ``lowercase(keyword)``).
SUPPORTED_OPTIONS: Final = {
    name.lower(): name
    for name in (
        "AutoReconnect",
        "BatchMode",
        "BindAddress",
        "CertificateFile",
        "ChannelTimeout",
        "Ciphers",
        "Compression",
        "ConnectTimeout",
        "ExitOnForwardFailure",
        "FingerprintHash",
        "ForwardingLocalHost",
        "GSSAPIAuthentication",
        "GSSAPIDelegateCredentials",
        "GlobalKnownHostsFile",
        "HashKnownHosts",
        "HostKeyAlgorithms",
        "IdentitiesOnly",
        "IdentityAgent",
        "IdentityFile",
        "KbdInteractiveAuthentication",
        "KexAlgorithms",
        "LogLevel",
        "MACs",
        "MaxRetryCount",
        "MaxTransferRate",
        "ServerAliveCountMax",
        "ServerAliveInterval",
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
        "StrictHostKeyChecking",
        "TCPKeepAlive",
        "User",
        "UserKnownHostsFile",
    )
}

# Old names OpenSSH still accepts for an option (readconf.c keywords[]: OpenSSH 8.5 renamed
# PubkeyAcceptedKeyTypes).
_ALIASES: Final = {"pubkeyacceptedkeytypes": "PubkeyAcceptedAlgorithms"}

# Options OpenSSH knows (readconf.c, keywords[]) that rtunnel does not implement.
# OpenSSH would apply them; silently ignoring one (a ProxyJump, say) would connect
# somewhere the user did not ask for, so they are refused with OpenSSH's wording for an
# unsupported option rather than reported as unknown.
_OPENSSH_ONLY: Final = frozenset(
    # A word list reads better than 110 one-per-line string literals.
    """
    addkeystoagent addressfamily bindinterface canonicaldomains
    canonicalizefallbacklocal canonicalizehostname canonicalizemaxdots
    canonicalizepermittedcnames casignaturealgorithms
    challengeresponseauthentication checkhostip cipher
    clearallforwardings compressionlevel connectionattempts controlmaster
    controlpath controlpersist dsaauthentication dynamicforward enableescapecommandline
    enablesshkeysign escapechar fallbacktorsh forkafterauthentication
    forwardagent forwardx11 forwardx11timeout forwardx11trusted gatewayports
    host hostbasedacceptedalgorithms hostbasedauthentication hostbasedkeytypes
    hostkeyalias hostname ignoreunknown
    include ipqos kbdinteractivedevices keepalive
    knownhostscommand localcommand localforward logfacility logverbose
    match nohostauthenticationforlocalhost
    obscurekeystroketiming permitlocalcommand
    pkcs11provider protocol
    proxyusefdpass
    refuseconnection remotecommand requesttty requiredrsasize revokedhostkeys
    rhostsrsaauthentication rsaauthentication securitykeyprovider sendenv
    sessiontype setenv smartcarddevice
    stdinnull streamlocalbindmask streamlocalbindunlink syslogfacility tag
    tunnel tunneldevice updatehostkeys useprivilegedport usersh verifyhostkeydns
    visualhostkey warnweakcrypto xauthlocation
    """.split()  # noqa: SIM905
)

#: A parsed option value: ``bool`` for yes/no options, ``int`` for Port,
#: ``int | None`` for ConnectTimeout (None: ``none``), a tuple of paths for
#: UserKnownHostsFile, a :class:`RemoteForwardSpec` for RemoteForward, and ``str``
#: otherwise.
OptionValue = str | int | bool | None | tuple[str, ...] | RemoteForwardSpec

# readconf.c multistate_flag and multistate_strict_hostkey. StrictHostKeyChecking
# values are normalised to "yes", "no", "ask" or "accept-new".
_FLAGS: Final = {"yes": True, "true": True, "no": False, "false": False}
_STRICT: Final = {
    "yes": "yes",
    "true": "yes",
    "no": "no",
    "false": "no",
    "off": "no",
    "ask": "ask",
    "accept-new": "accept-new",
}
_LOG_LEVEL_NAMES: Final = {name.lower(): name for name in LOG_LEVELS} | {"debug": "DEBUG1"}
# Options OpenSSH accepts and ignores (readconf.c: oIgnore and oDeprecated, which only
# log at debug level); refusing them would break command lines that work with ssh.
_IGNORED: Final = frozenset(
    {
        "cipher",
        "fallbacktorsh",
        "globalknownhostsfile2",
        "protocol",
        "rhostsauthentication",
        "useprivilegedport",
        "useroaming",
        "usersh",
        "userknownhostsfile2",
    }
)
_WHITESPACE: Final = " \t\r\n"


def _strdelim(text: str) -> tuple[str | None, str | None]:
    """
    OpenSSH's ``strdelim`` (misc.c) with ``=`` splitting: the next token, ending at
    whitespace, a double quote or an ``=``, and the rest after the delimiter and any
    whitespace, with at most one ``=`` skipped. A token in double quotes runs to the
    closing quote. Returns ``(None, None)`` for an unclosed quote; the rest is None at
    the end of the text.
    """
    index = next((i for i, c in enumerate(text) if c in _WHITESPACE + '"='), None)
    if index is None:
        return text, None
    if text[index] == '"':
        end = text.find('"', index + 1)
        if end == -1:
            return None, None
        return text[:index] + text[index + 1 : end], text[end + 1 :].lstrip(_WHITESPACE)
    token, rest = text[:index], text[index + 1 :].lstrip(_WHITESPACE)
    if text[index] != "=" and rest.startswith("="):
        rest = rest[1:].lstrip(_WHITESPACE)
    return token, rest


def _expand_path(path: str) -> str:
    # OpenSSH's tilde_expand_filename: "~" and "~user" at the start of a path.
    return os.path.expanduser(path)


def parse_option(text: str) -> tuple[str, OptionValue] | None:
    """
    Parse one ``-o`` option, ``Key=Value`` or ``Key Value``, as ``ssh`` does
    (readconf.c, ``process_config_line``): the key is case-insensitive, the arguments
    are split by :func:`split_arguments`.

    :return: the option's canonical name (as in :data:`SUPPORTED_OPTIONS`) and its
        validated value (see :data:`OptionValue`); or None for a line OpenSSH ignores:
        blank, a ``#`` comment, or a deprecated option such as ``Protocol``.
    :raises SpecError: with OpenSSH's message for the mistake, e.g.
        ``command-line: line 0: Bad configuration option: foo`` for an unknown key and
        ``command-line line 0: Unsupported option "proxyjump"`` for an OpenSSH option
        rtunnel does not implement.
    """
    # Trailing whitespace (and form feeds) are stripped first.
    keyword, rest = _strdelim(text.rstrip(_WHITESPACE + "\f"))
    if keyword == "":
        # Leading whitespace or '=': the keyword is the next token.
        keyword, rest = _strdelim(rest) if rest is not None else (None, None)
    if not keyword or keyword[0] in "\n#":
        return None
    keyword = keyword.lower()
    if rest is None or not rest.lstrip(_WHITESPACE):
        raise SpecError(f'{_WHERE}: no argument after keyword "{keyword}"')
    canonical = SUPPORTED_OPTIONS.get(keyword) or _ALIASES.get(keyword)
    if canonical is None:
        if keyword in _IGNORED:
            return None
        if keyword in _OPENSSH_ONLY:
            raise SpecError(f'{_WHERE}: Unsupported option "{keyword}"')
        raise SpecError(f"command-line: line 0: Bad configuration option: {keyword}")
    args = split_arguments(rest.lstrip(_WHITESPACE))
    return canonical, _parse_value(canonical, keyword, args)


#: Algorithm list options: (kind for :func:`rtunnel.client.transport._algorithms.resolve`, OpenSSH's
#: complaint about a bad list, readconf.c).
_ALGORITHM_OPTIONS: Final = {
    "Ciphers": ("cipher", "Bad SSH2 cipher spec"),
    "MACs": ("mac", "Bad SSH2 MAC spec"),
    "KexAlgorithms": ("kex", "Bad SSH2 KexAlgorithms"),
    "HostKeyAlgorithms": ("host key", "Bad key types"),
}

_SIZE_SUFFIXES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rekey_limit(args: Sequence[str]) -> tuple[str, ...]:
    """
    ``RekeyLimit`` as OpenSSH reads it (readconf.c, ``oRekeyLimit``): ``default`` or a size
    with an optional K, M or G suffix (at least 16 bytes), then optionally ``none``,
    ``default`` or a time (``1h30m``). Returns ``(bytes, seconds)`` as decimal strings,
    ``""`` for "the default" and ``"none"`` for no time limit.
    """
    if not args or not args[0]:
        raise SpecError(f"{_WHERE}: Missing argument.")
    if len(args) > 2:
        raise SpecError(f"{_WHERE}: keyword rekeylimit extra arguments at end of line")
    size_text = args[0]
    if size_text.lower() == "default":
        size = ""
    else:
        match = re.fullmatch(r"(\d+)([kKmMgG]?)", size_text)
        if match is None:
            raise SpecError(f"{_WHERE}: Bad number.")
        amount = int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]
        if amount != 0 and amount < 16:
            raise SpecError(f"{_WHERE}: RekeyLimit too small")
        size = str(amount)
    seconds = ""
    if len(args) == 2:
        when = args[1].lower()
        if when == "none":
            seconds = "none"
        elif when != "default":
            try:
                seconds = str(parse_time(args[1]))
            except SpecError:
                raise SpecError(f"{_WHERE}: invalid time value.") from None
    return (size, seconds)


_RECONNECT_MODES: Final = {
    "no": "off",
    "false": "off",
    "off": "off",
    "yes": "on-loss",
    "true": "on-loss",
    "always": "always",
}


def parse_channel_timeout(args: Sequence[str]) -> int:
    """
    ``ChannelTimeout`` as OpenSSH 9.2+ reads it (readconf.c, ``parse_pattern_interval``):
    ``type=interval`` pairs, or ``none``. Returns the seconds for ``forwarded-tcpip``
    channels, the only kind a reverse tunnel carries, taken from the first pair whose type
    pattern matches it (``*`` does); 0 for none. Other types are accepted and have nothing
    to apply to.
    """
    if not args or not args[0]:
        raise SpecError(f"{_WHERE}: Missing argument.")
    if len(args) == 1 and args[0].lower() == "none":
        return 0
    chosen: int | None = None
    for arg in args:
        kind, sep, interval = arg.partition("=")
        if not sep or not kind or not interval:
            raise SpecError(f'{_WHERE}: invalid channel timeout "{arg}": give type=interval.')
        try:
            seconds = parse_time(interval)
        except SpecError:
            raise SpecError(f'{_WHERE}: invalid channel timeout interval "{interval}".') from None
        if chosen is None and _pattern_matches("forwarded-tcpip", kind):
            chosen = seconds
    return chosen or 0


def _pattern_matches(name: str, pattern: str) -> bool:
    """OpenSSH's ``match_pattern`` (match.c): ``*`` and ``?`` wildcards, nothing else."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _one(keyword: str, args: list[str]) -> str:
    # readconf.c, after the switch: "keyword %s extra arguments at end of line".
    if len(args) > 1:
        raise SpecError(f"{_WHERE}: keyword {keyword} extra arguments at end of line")
    if not args or not args[0]:
        raise SpecError(f"{_WHERE}: Missing argument.")
    return args[0]


def _hide_password(url: str) -> str:
    # A proxy URL's password must not reach the terminal or a log in an error message.
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _parse_value(canonical: str, keyword: str, args: list[str]) -> OptionValue:
    if canonical in (
        "BatchMode",
        "Compression",
        "ExitOnForwardFailure",
        "GSSAPIAuthentication",
        "GSSAPIDelegateCredentials",
        "HashKnownHosts",
        "IdentitiesOnly",
        "KbdInteractiveAuthentication",
        "PasswordAuthentication",
        "PubkeyAuthentication",
        "TCPKeepAlive",
    ):
        value = _one(keyword, args)
        flag = _FLAGS.get(value.lower())
        if flag is None:
            raise SpecError(f'{_WHERE}: unsupported option "{value}".')
        return flag
    if canonical == "StrictHostKeyChecking":
        value = _one(keyword, args)
        strict = _STRICT.get(value.lower())
        if strict is None:
            raise SpecError(f'{_WHERE}: unsupported option "{value}".')
        return strict
    if canonical == "Port":
        value = _one(keyword, args)
        port = to_port(value)
        if port is None or port == 0:
            raise SpecError(f"{_WHERE}: Bad port '{value}'.")
        return port
    if canonical == "ConnectTimeout":
        value = _one(keyword, args)
        if value == "none":
            return None
        try:
            return parse_time(value)
        except SpecError:
            raise SpecError(f"{_WHERE}: invalid time value.") from None
    if canonical in ("ServerAliveInterval", "ServerAliveCountMax"):
        value = _one(keyword, args)
        try:
            number = parse_time(value) if canonical == "ServerAliveInterval" else int(value)
        except (SpecError, ValueError):
            number = -1
        if number < 0:
            # readconf.c's words for a bad time / integer value.
            what = "time value" if canonical == "ServerAliveInterval" else "integer value"
            raise SpecError(f"{_WHERE}: invalid {what}.")
        return number
    if canonical == "LogLevel":
        value = _one(keyword, args)
        level = _LOG_LEVEL_NAMES.get(value.lower())
        if level is None:
            raise SpecError(f"{_WHERE}: unsupported log level '{value}'")
        return level
    if canonical == "User":
        return _one(keyword, args)
    if canonical in ("IdentityFile", "CertificateFile"):
        return _expand_path(_one(keyword, args))
    if canonical == "IdentityAgent":
        value = _one(keyword, args)
        # readconf.c: "none" and "SSH_AUTH_SOCK" are kept as words, anything else a path.
        return value if value in ("none", "SSH_AUTH_SOCK") else _expand_path(value)
    if canonical == "FingerprintHash":
        value = _one(keyword, args).lower()
        if value not in ("md5", "sha256"):
            # readconf.c: ssh_digest_alg_by_name accepts md5 and sha256 here.
            raise SpecError(f'{_WHERE}: Invalid hash algorithm "{value}".')
        return value
    if canonical == "NumberOfPasswordPrompts":
        value = _one(keyword, args)
        if not value.isdigit():
            raise SpecError(f"{_WHERE}: Bad number '{value}'.")
        return int(value)
    if canonical == "PreferredAuthentications":
        value = _one(keyword, args)
        return tuple(m for m in value.split(",") if m)
    if canonical in ("UserKnownHostsFile", "GlobalKnownHostsFile"):
        if not args:
            raise SpecError(f"{_WHERE}: Missing argument.")
        for arg in args:
            if not arg:
                raise SpecError(f"{_WHERE}: keyword {keyword} empty argument")
        if any(arg.lower() == "none" for arg in args):
            if len(args) > 1:
                raise SpecError(f'{_WHERE}: keyword {keyword} "none" argument must appear alone.')
            return ()
        return tuple(_expand_path(arg) for arg in args)
    if canonical == "PubkeyAcceptedAlgorithms":
        from rtunnel.client.auth._pubkey import resolve_pubkey_algorithms

        value = _one(keyword, args)
        try:
            resolve_pubkey_algorithms(value)
        except SpecError as error:
            raise SpecError(f"{_WHERE}: Bad key types '{value}'. {error.message}") from None
        return value
    if canonical in _ALGORITHM_OPTIONS:
        kind, complaint = _ALGORITHM_OPTIONS[canonical]
        value = _one(keyword, args)
        try:
            resolve(kind, value)
        except SpecError as error:
            # readconf.c's words ("Bad SSH2 cipher spec"), then why.
            raise SpecError(f"{_WHERE}: {complaint} '{value}'. {error.message}") from None
        return value
    if canonical == "RekeyLimit":
        return parse_rekey_limit(args)
    if canonical == "AutoReconnect":
        value = _one(keyword, args)
        mode = _RECONNECT_MODES.get(value.lower())
        if mode is None:
            raise SpecError(
                f'{_WHERE}: unsupported AutoReconnect "{value}": give no, yes (reconnect when '
                "an established connection breaks) or always (also retry the first logon)."
            )
        return mode
    if canonical == "MaxRetryCount":
        value = _one(keyword, args)
        if not value.isdigit():
            raise SpecError(f"{_WHERE}: Bad number '{value}' (0 means no limit).")
        return int(value)
    if canonical == "RetryInterval":
        value = _one(keyword, args)
        try:
            seconds = parse_time(value)
        except SpecError:
            raise SpecError(f"{_WHERE}: invalid time value.") from None
        if seconds < 1:
            raise SpecError(f"{_WHERE}: RetryInterval must be at least 1 second.")
        return seconds
    if canonical == "ChannelTimeout":
        return parse_channel_timeout(args)
    if canonical == "PermitRemoteOpen":
        if not args:
            raise SpecError(f"{_WHERE}: Missing argument.")
        from rtunnel._core.syntax import parse_permit_remote_open

        try:
            parse_permit_remote_open(args)
        except SpecError as error:
            raise SpecError(f"{_WHERE}: {error.message}") from None
        return " ".join(args)
    if canonical == "MaxTransferRate":
        value = _one(keyword, args)
        match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
        if match is None:
            raise SpecError(
                f"{_WHERE}: Bad MaxTransferRate '{value}': give bytes per second, with an "
                "optional K, M or G (0: no limit)."
            )
        return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]
    if canonical in ("BindAddress", "ForwardingLocalHost", "ProxyExceptionsList"):
        return _one(keyword, args)
    if canonical == "ProxyCommand":
        # readconf.c keeps the rest of the line as the command.
        if not args:
            raise SpecError(f"{_WHERE}: Missing argument.")
        command = " ".join(args)
        if command.lower() != "none":
            from rtunnel.client.reach._proxycommand import expand_proxy_command

            try:
                expand_proxy_command(command, host="h", port=22, user="u")
            except SpecError as error:
                raise SpecError(f"{_WHERE}: {error.message}") from None
        return command
    if canonical == "ProxyJump":
        value = _one(keyword, args)
        if value.lower() == "none":
            return "none"
        try:
            parse_proxy_jump(value)
        except SpecError as error:
            raise SpecError(f"{_WHERE}: {error.message}") from None
        return value
    if canonical == "Proxy":
        value = _one(keyword, args)
        if value.lower() not in ("auto", "none"):
            from rtunnel.client.reach.proxy import Proxy

            try:
                Proxy.from_url(value)
            except SpecError as error:
                raise SpecError(
                    f"{_WHERE}: Bad Proxy '{_hide_password(value)}'. {error.message}"
                ) from None
        return value
    if canonical == "RemoteForward":
        if len(args) > 2:
            raise SpecError(f"{_WHERE}: keyword {keyword} extra arguments at end of line")
        # readconf.c joins "listen target" into "listen:target" for parse_forward.
        joined = ":".join(args)
        fields = _split_forward_fields(joined)
        result = _REMOTE_SYNTAX if fields is None else _forward_from_fields(fields)
        if isinstance(result, str):
            shown = " ".join(args)
            raise SpecError(f"{_WHERE}: Bad forwarding specification '{shown}': {result}")
        return result
    raise AssertionError(f"no parser for {canonical}")  # pragma: no cover


# --------------------------------------------------------------------------------------
# The options of one invocation


#: Options stored as given in a ClientOptions attribute, the first value winning.
_FIRST_WINS: Final = {
    "Compression": "compression",
    "Ciphers": "ciphers",
    "MACs": "macs",
    "KexAlgorithms": "kex_algorithms",
    "HostKeyAlgorithms": "host_key_algorithms",
    "RekeyLimit": "rekey_limit",
    "GlobalKnownHostsFile": "global_known_hosts_files",
    "FingerprintHash": "fingerprint_hash",
    "HashKnownHosts": "hash_known_hosts",
    "PreferredAuthentications": "preferred_authentications",
    "NumberOfPasswordPrompts": "number_of_password_prompts",
    "PasswordAuthentication": "password_authentication",
    "KbdInteractiveAuthentication": "kbd_interactive_authentication",
    "PubkeyAuthentication": "pubkey_authentication",
    "GSSAPIAuthentication": "gssapi_authentication",
    "GSSAPIDelegateCredentials": "gssapi_delegate_credentials",
    "IdentityAgent": "identity_agent",
    "IdentitiesOnly": "identities_only",
    "PubkeyAcceptedAlgorithms": "pubkey_accepted_algorithms",
    "AutoReconnect": "auto_reconnect",
    "MaxRetryCount": "max_retry_count",
    "RetryInterval": "retry_interval",
    "ChannelTimeout": "channel_timeout",
    "TCPKeepAlive": "tcp_keepalive",
    "BindAddress": "bind_address",
    "ForwardingLocalHost": "forwarding_local_host",
    "Proxy": "proxy",
    "ProxyExceptionsList": "proxy_exceptions",
    "MaxTransferRate": "max_transfer_rate",
    "PermitRemoteOpen": "permit_remote_open",
}


@dataclass
class ClientOptions:
    """
    The settings of one ``rtunnel`` invocation, filled from flags and ``-o`` options with
    OpenSSH's rule that the first value given for an option wins (readconf.c: "the first
    obtained value will be used"), except identity files and forwards, which accumulate.

    :ivar user: ``-l``, ``-o User`` or the destination's user.
    :ivar port: ``-p``, ``-o Port`` or an ``ssh://`` URI's port.
    :ivar identity_files: ``-i`` and ``-o IdentityFile``, in order.
    :ivar known_hosts_files: ``-o UserKnownHostsFile`` (empty for ``none``), or None.
    :ivar strict_host_key_checking: ``yes``, ``no``, ``ask`` or ``accept-new``, or None.
    :ivar exit_on_forward_failure: ``-o ExitOnForwardFailure``, or None.
    :ivar batch_mode: ``-o BatchMode``, or None (rtunnel never prompts either way).
    :ivar connect_timeout: seconds from ``-o ConnectTimeout`` (None: ``none``).
    :ivar connect_timeout_given: whether ``ConnectTimeout`` was given at all.
    :ivar server_alive_interval: ``-o ServerAliveInterval`` seconds (None: not given, 0).
    :ivar server_alive_count_max: ``-o ServerAliveCountMax`` (None: not given, 3).
    :ivar log_level: one of :data:`LOG_LEVELS`, or None for the default (``INFO``).
    :ivar remote_forwards: ``-R`` and ``-o RemoteForward``, in order, without repeats.
    :ivar global_known_hosts_files: ``-o GlobalKnownHostsFile`` (empty for ``none``), or
        None for OpenSSH's default.
    :ivar fingerprint_hash: ``-o FingerprintHash`` (``sha256`` or ``md5``), or None.
    :ivar hash_known_hosts: ``-o HashKnownHosts``, or None.
    :ivar preferred_authentications: ``-o PreferredAuthentications``, or None.
    :ivar number_of_password_prompts: ``-o NumberOfPasswordPrompts``, or None (3).
    :ivar password_authentication: ``-o PasswordAuthentication``, or None (yes).
    :ivar kbd_interactive_authentication: ``-o KbdInteractiveAuthentication``, or None.
    :ivar pubkey_authentication: ``-o PubkeyAuthentication``, or None (yes).
    :ivar gssapi_authentication: ``-K`` or ``-o GSSAPIAuthentication``, or None (no).
    :ivar gssapi_delegate_credentials: ``-K`` or ``-o GSSAPIDelegateCredentials``, or
        None (no).
    :ivar certificate_files: ``-o CertificateFile``, in order.
    :ivar identity_agent: ``-o IdentityAgent`` (a path, ``none`` or ``SSH_AUTH_SOCK``).
    :ivar identities_only: ``-o IdentitiesOnly``, or None (no).
    :ivar pubkey_accepted_algorithms: ``-o PubkeyAcceptedAlgorithms`` (OpenSSH list
        syntax, checked), or None (automatic).
    :ivar ciphers: ``-c`` or ``-o Ciphers`` (OpenSSH list syntax, checked), or None; likewise
        ``macs`` (``-m``, ``-o MACs``), ``kex_algorithms`` and ``host_key_algorithms``.
    :ivar rekey_limit: ``-o RekeyLimit`` as :func:`parse_rekey_limit` returns it, or None.
    :ivar compression: ``-C`` or ``-o Compression``, or None (off).
    :ivar auto_reconnect: ``-o AutoReconnect`` (rtunnel's, the reference's name):
        ``"off"`` (``no``), ``"on-loss"`` (``yes``) or ``"always"``, or None (not given:
        ``"on-loss"``, a tunnel is kept open; ``no`` ends with the connection, as ssh).
    :ivar max_retry_count: ``-o MaxRetryCount`` (0: no limit), or None.
    :ivar retry_interval: ``-o RetryInterval`` seconds before the first retry, or None.
    :ivar channel_timeout: ``-o ChannelTimeout`` seconds for forwarded-tcpip channels
        (0: none), or None.
    :ivar tcp_keepalive: ``-o TCPKeepAlive``, or None (yes).
    :ivar bind_address: ``-b`` or ``-o BindAddress``: the local address to connect from.
    :ivar forwarding_local_host: ``-o ForwardingLocalHost`` (rtunnel's, the reference's
        name): the local address connections to targets are made from.
    :ivar proxy: ``-o Proxy`` (rtunnel's): a proxy URL, ``auto`` or ``none``.
    :ivar proxy_exceptions: ``-o ProxyExceptionsList`` (the reference's name): hosts
        reached without the proxy, separated by ``;``.
    :ivar max_transfer_rate: ``-o MaxTransferRate`` (the reference's name): bytes per
        second of channel data to the server, or None (no limit).
    :ivar permit_remote_open: ``-o PermitRemoteOpen``: where dynamic forwards may connect.
    :ivar proxy_command: ``-o ProxyCommand``, or ``none``.
    :ivar proxy_jump: ``-J`` / ``-o ProxyJump``: ``[user@]host[:port][,...]``
        (:func:`parse_proxy_jump`), or ``none``. At most one of ``proxy_command`` and
        ``proxy_jump`` is set.
    """

    user: str | None = None
    port: int | None = None
    identity_files: list[str] = field(default_factory=list)
    known_hosts_files: tuple[str, ...] | None = None
    strict_host_key_checking: str | None = None
    exit_on_forward_failure: bool | None = None
    batch_mode: bool | None = None
    connect_timeout: int | None = None
    connect_timeout_given: bool = False
    log_level: str | None = None
    server_alive_interval: int | None = None
    server_alive_count_max: int | None = None
    remote_forwards: list[RemoteForwardSpec] = field(default_factory=list)
    global_known_hosts_files: tuple[str, ...] | None = None
    fingerprint_hash: str | None = None
    hash_known_hosts: bool | None = None
    preferred_authentications: tuple[str, ...] | None = None
    number_of_password_prompts: int | None = None
    password_authentication: bool | None = None
    kbd_interactive_authentication: bool | None = None
    pubkey_authentication: bool | None = None
    gssapi_authentication: bool | None = None
    gssapi_delegate_credentials: bool | None = None
    certificate_files: list[str] = field(default_factory=list)
    identity_agent: str | None = None
    identities_only: bool | None = None
    pubkey_accepted_algorithms: str | None = None
    ciphers: str | None = None
    macs: str | None = None
    kex_algorithms: str | None = None
    host_key_algorithms: str | None = None
    rekey_limit: tuple[str, ...] | None = None
    compression: bool | None = None
    auto_reconnect: str | None = None
    max_retry_count: int | None = None
    retry_interval: int | None = None
    channel_timeout: int | None = None
    tcp_keepalive: bool | None = None
    bind_address: str | None = None
    forwarding_local_host: str | None = None
    proxy: str | None = None
    proxy_exceptions: str | None = None
    proxy_command: str | None = None
    proxy_jump: str | None = None
    max_transfer_rate: int | None = None
    permit_remote_open: str | None = None
    jump_given: bool = field(default=False, repr=False)
    _debug_flag: int = field(default=0, repr=False)

    def apply_option(self, text: str) -> None:
        """
        Apply one ``-o`` option. Blank options, ``#`` comments and deprecated options
        are ignored, as OpenSSH ignores them.

        :raises SpecError: see :func:`parse_option`.
        """
        parsed = parse_option(text)
        if parsed is not None:
            self.apply(*parsed)

    def apply(self, name: str, value: OptionValue) -> None:
        """Apply an option parsed by :func:`parse_option`."""
        if name == "RemoteForward":
            assert isinstance(value, RemoteForwardSpec)
            self.add_remote_forward(value)
        elif name == "IdentityFile":
            assert isinstance(value, str)
            self.identity_files.append(value)
        elif name == "CertificateFile":
            assert isinstance(value, str)
            self.certificate_files.append(value)
        elif name == "User":
            assert isinstance(value, str)
            self.user = self.user if self.user is not None else value
        elif name == "Port":
            assert isinstance(value, int)
            self.port = self.port if self.port is not None else value
        elif name == "UserKnownHostsFile":
            assert isinstance(value, tuple)
            if self.known_hosts_files is None:
                self.known_hosts_files = value
        elif name == "StrictHostKeyChecking":
            assert isinstance(value, str)
            if self.strict_host_key_checking is None:
                self.strict_host_key_checking = value
        elif name == "ExitOnForwardFailure":
            assert isinstance(value, bool)
            if self.exit_on_forward_failure is None:
                self.exit_on_forward_failure = value
        elif name == "BatchMode":
            assert isinstance(value, bool)
            if self.batch_mode is None:
                self.batch_mode = value
        elif name == "ConnectTimeout":
            assert value is None or isinstance(value, int)
            if not self.connect_timeout_given:
                self.connect_timeout = value
                self.connect_timeout_given = True
        elif name == "ServerAliveInterval":
            assert isinstance(value, int)
            if self.server_alive_interval is None:
                self.server_alive_interval = value
        elif name == "ServerAliveCountMax":
            assert isinstance(value, int)
            if self.server_alive_count_max is None:
                self.server_alive_count_max = value
        elif name == "LogLevel":
            assert isinstance(value, str)
            if self.log_level is None:
                self.log_level = value
        elif name in ("ProxyCommand", "ProxyJump"):
            # ssh_config(5): ProxyJump and ProxyCommand compete, the first one given wins.
            assert isinstance(value, str)
            if self.proxy_command is None and self.proxy_jump is None:
                if name == "ProxyJump":
                    self.proxy_jump = value
                else:
                    self.proxy_command = value
        elif name in _FIRST_WINS:
            # The first value wins (readconf.c), as for the options above.
            attribute = _FIRST_WINS[name]
            if getattr(self, attribute) is None:
                setattr(self, attribute, value)
        else:  # pragma: no cover
            raise AssertionError(f"unknown option {name}")

    def add_remote_forward(self, forward: RemoteForwardSpec) -> None:
        """Add a forward; an identical one already present is not added twice
        (readconf.c, ``add_remote_forward``)."""
        if forward not in self.remote_forwards:
            self.remote_forwards.append(forward)

    def more_verbose(self) -> None:
        """``-v``: ``DEBUG1`` the first time, one level more each time up to ``DEBUG3``
        (ssh.c, case 'v')."""
        if self._debug_flag == 0:
            self._debug_flag = 1
            self.log_level = "DEBUG1"
        elif self.effective_log_level != "DEBUG3":
            self._debug_flag += 1
            self.log_level = LOG_LEVELS[LOG_LEVELS.index(self.effective_log_level) + 1]

    def quiet(self) -> None:
        """``-q``: quiet mode (ssh.c, case 'q')."""
        self.log_level = "QUIET"

    @property
    def effective_log_level(self) -> str:
        """The log level in force: the one given, else ``INFO`` (readconf.c default)."""
        return self.log_level if self.log_level is not None else "INFO"

    def logs(self, level: str) -> bool:
        """Whether a message at ``level`` is shown (log.c: ``level <= log_level``)."""
        return LOG_LEVELS.index(level) <= LOG_LEVELS.index(self.effective_log_level)

    @property
    def host_key_policy(self) -> HostKeyPolicy:
        """
        :class:`~rtunnel.ReverseTunnel`'s host key policy for ``StrictHostKeyChecking``.

        ``yes`` and ``ask`` are ``strict`` (rtunnel never prompts, which is what ``ask``
        amounts to under ``BatchMode``), ``accept-new`` is ``accept-new``, and ``no``
        and ``off`` are ``accept-new`` as well: OpenSSH with ``no`` records an unknown
        key but, when a known key has *changed*, disables every port forward
        ("Port forwarding is disabled to avoid man-in-the-middle attacks.",
        sshconnect.c ``check_host_key``). A tunnel with its forwards disabled is
        useless, so refusing the changed key outright is the faithful equivalent.
        The unset default is OpenSSH's ``ask``, so ``strict``.
        """
        setting = self.strict_host_key_checking
        if setting in ("no", "accept-new"):
            return "accept-new"
        return "strict"

    def set_default_user(self, user: str | None) -> None:
        """Use ``user`` unless a user was already given (ssh.c: ``-l`` wins over
        ``user@host``)."""
        if self.user is None and user is not None:
            self.user = user

    def set_default_port(self, port: int | None) -> None:
        """Use ``port`` unless a port was already given."""
        if self.port is None and port is not None:
            self.port = port


# --------------------------------------------------------------------------------------
# What OpenSSH prints


def format_allocated(port: int, host: str, host_port: int, path: str | None = None) -> str:
    """
    ``ssh``'s line for a forward the server allocated a port for (ssh.c,
    ``ssh_confirm_remote_forward``: ``"Allocated port %u for remote forward to %s:%d"``;
    the host is printed as given, IPv6 without brackets; a Unix-socket target's path
    followed by ``:-2``, as ssh 9.2 prints it).
    """
    if path is not None:
        # OpenSSH 9.2 prints the path with its internal port for sockets, PORT_STREAMLOCAL
        # (-2): "... to /run/app.sock:-2". Scripts read the line, so it is kept as is.
        return f"Allocated port {port} for remote forward to {path}:-2"
    return f"Allocated port {port} for remote forward to {host}:{host_port}"


def format_forward_failure(listen_port: int, *, fatal: bool, listen_path: str | None = None) -> str:
    """
    ``ssh``'s line for a refused remote forward (ssh.c, ``ssh_confirm_remote_forward``):
    ``Error: ...`` when ``ExitOnForwardFailure`` makes it fatal, ``Warning: ...``
    otherwise. ``listen_port`` is the port asked for (0 when the server was to choose);
    a socket on the server's side is named by its ``listen_path``.
    """
    prefix = "Error" if fatal else "Warning"
    if listen_path is not None:
        return f"{prefix}: remote port forwarding failed for listen path {listen_path}"
    return f"{prefix}: remote port forwarding failed for listen port {listen_port}"


def format_permission_denied(user: str, host: str, methods: Sequence[str]) -> str:
    """
    ``ssh``'s line when authentication failed (sshconnect2.c, ``userauth``:
    ``"%s@%s: Permission denied (%s)."``, the methods comma-separated).
    """
    return f"{user}@{host}: Permission denied ({','.join(methods)})."
