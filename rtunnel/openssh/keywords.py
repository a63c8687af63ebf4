"""
The one table of the ``ssh_config`` keywords rtunnel reads: each row says how its
arguments are read (with OpenSSH's message for a mistake), which setting it fills (a
:class:`~rtunnel.TunnelSettings` name, or a setting of the command itself), whether the
first value given wins, and its line of help.

The ``-o`` parser (:func:`rtunnel.openssh.options.parse_option`), ``rtunnel --help``,
``twistd rtunnel --help`` and (issue #14) the configuration file readers are generated
from :data:`KEYWORDS`; a keyword is spelled nowhere else (``tests/pure/test_keywords.py``).
Adding an option is one field in :mod:`rtunnel.options` and one row here.

Every message copied from OpenSSH names the source file it comes from (openssh-portable:
``readconf.c``, ``misc.c``), so a script written against ``ssh`` keeps working against
``rtunnel``.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, NamedTuple, TypeVar, cast

from rtunnel._core.syntax import (
    Destination,
    parse_permit_remote_open,
    parse_proxy_jump,
    to_port,
)
from rtunnel.client.auth._pubkey import resolve_pubkey_algorithms
from rtunnel.client.transport._algorithms import resolve
from rtunnel.client.transport._sockopts import TCPOptions
from rtunnel.errors import SpecError
from rtunnel.openssh.forward_policy import PolicyFor, parse_policy_line
from rtunnel.openssh.forwards import RemoteForwardSpec, forward_or_reason
from rtunnel.openssh.values import check_host_name, check_user_name, parse_time

if TYPE_CHECKING:
    from rtunnel.client.hostkeys.verify import HostKeyPolicy
    from rtunnel.client.reach.jump import JumpHost
    from rtunnel.client.reach.proxy import Proxy
    from rtunnel.options import TunnelSettings

__all__ = [
    "BATCH_MODE",
    "BIND_ADDRESS",
    "CIPHERS",
    "COMPRESSION",
    "GSSAPI_AUTHENTICATION",
    "GSSAPI_DELEGATE_CREDENTIALS",
    "HOST_NAME",
    "IDENTITY_FILE",
    "KEYWORDS",
    "LOG_LEVELS",
    "MACS",
    "PORT",
    "PROXY_JUMP",
    "REMOTE_FORWARD",
    "STRICT_HOST_KEY_CHECKING",
    "TOPICS",
    "USER",
    "WHERE",
    "HostKeyAlgorithmList",
    "Keyword",
    "help_lines",
    "keyword_named",
    "parse_channel_timeout",
    "parse_in_file",
    "parse_rekey_limit",
    "twistd_summary",
]

V = TypeVar("V")

# OpenSSH's -o lines are processed as line 0 of a file called "command-line"
# (ssh.c: process_config_line(..., "command-line", 0, ...)); every readconf.c message
# starts with that. Note the two spellings: most messages say "%s line %d:", only the
# unknown-keyword one says "%s: line %d:" (readconf.c, parse_token).
WHERE: Final = "command-line line 0"

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

#: The topics the help groups the keywords under, in order.
TOPICS: Final = (
    "Connection",
    "Forwards",
    "Host keys",
    "Authentication",
    "Transport",
    "Staying up",
    "Logging",
    "Operations",
)


@dataclass(frozen=True)
class Keyword(Generic[V]):
    """
    One keyword.

    :ivar name: its spelling in OpenSSH's documentation (matched case-insensitively).
    :ivar value: what it takes, for the help (``yes|no``, ``TIME``, ...).
    :ivar topic: one of :data:`TOPICS`.
    :ivar help: one line saying what it does.
    :ivar parse: reads the arguments (``parse(keyword as typed, arguments)``) into a typed
        value; a mistake is a :class:`~rtunnel.errors.SpecError` in OpenSSH's words.
    :ivar sets: the :class:`~rtunnel.TunnelSettings` names it fills; empty for a setting
        of the command (``command``).
    :ivar to_settings: the value as those settings (default: the value, for the one name
        in ``sets``).
    :ivar command: the :class:`~rtunnel.openssh.client_options.ClientOptions` attribute
        it sets instead: a setting the command combines with others (credentials, the
        reconnect policy) or uses itself (the port, the log level).
    :ivar collect: ``"first"``: the first value given wins (readconf.c: "the first
        obtained value will be used"); ``"append"``: every value is kept; ``"unique"``:
        every value, an identical one once.
    :ivar slot: keywords with the same slot compete for one value (ssh_config(5): of
        ProxyCommand and ProxyJump, the first one given wins); default: its own name.
    :ivar default: the value ``ssh`` has when the keyword is not given, where it differs
        from the library's default (no keepalives unless asked).
    :ivar aliases: older names OpenSSH still accepts.
    :ivar own: rtunnel's keyword (the reference's setting), not OpenSSH's.
    """

    name: str
    value: str
    topic: str
    help: str
    parse: Callable[[str, list[str]], V]
    sets: tuple[str, ...] = ()
    to_settings: Callable[[V], TunnelSettings] | None = None
    command: str = ""
    collect: Literal["first", "append", "unique"] = "first"
    slot: str = ""
    default: V | None = None
    aliases: tuple[str, ...] = ()
    own: bool = False

    def settings(self, value: V) -> TunnelSettings:
        """The :class:`~rtunnel.TunnelSettings` this keyword's ``value`` gives."""
        if self.to_settings is not None:
            return self.to_settings(value)
        assert len(self.sets) == 1, self.name
        return cast("TunnelSettings", {self.sets[0]: value})

    @property
    def competes_as(self) -> str:
        """The name first-wins is decided by (the slot, else the keyword itself)."""
        return self.slot or self.name


# --------------------------------------------------------------------------------------
# Reading values, with readconf.c's words


def _one(keyword: str, args: list[str]) -> str:
    # readconf.c, after the switch: "keyword %s extra arguments at end of line".
    if len(args) > 1:
        raise SpecError(f"{WHERE}: keyword {keyword} extra arguments at end of line")
    if not args or not args[0]:
        raise SpecError(f"{WHERE}: Missing argument.")
    return args[0]


def _expand_path(path: str) -> str:
    # OpenSSH's tilde_expand_filename: "~" and "~user" at the start of a path.
    return os.path.expanduser(path)


# readconf.c multistate_flag.
_FLAGS: Final = {"yes": True, "true": True, "no": False, "false": False}


def _flag(keyword: str, args: list[str]) -> bool:
    value = _one(keyword, args)
    flag = _FLAGS.get(value.lower())
    if flag is None:
        raise SpecError(f'{WHERE}: unsupported option "{value}".')
    return flag


def _text(keyword: str, args: list[str]) -> str:
    return _one(keyword, args)


def _path(keyword: str, args: list[str]) -> str:
    return _expand_path(_one(keyword, args))


def _port(keyword: str, args: list[str]) -> int:
    value = _one(keyword, args)
    port = to_port(value)
    if port is None or port == 0:
        raise SpecError(f"{WHERE}: Bad port '{value}'.")
    return port


def _time(keyword: str, args: list[str]) -> int:
    try:
        return parse_time(_one(keyword, args))
    except SpecError as error:
        if error.message.startswith(WHERE):
            raise
        raise SpecError(f"{WHERE}: invalid time value.") from None


def _connect_timeout(keyword: str, args: list[str]) -> int | None:
    if _one(keyword, args) == "none":
        return None
    return _time(keyword, args)


def _count(keyword: str, args: list[str]) -> int:
    value = _one(keyword, args)
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise SpecError(f"{WHERE}: invalid integer value.")
    return number


def _number(keyword: str, args: list[str]) -> int:
    value = _one(keyword, args)
    if not (value.isascii() and value.isdigit()):
        raise SpecError(f"{WHERE}: Bad number '{value}'.")
    return int(value)


# readconf.c multistate_strict_hostkey, normalised to "yes", "no", "ask" or "accept-new".
_STRICT: Final = {
    "yes": "yes",
    "true": "yes",
    "no": "no",
    "false": "no",
    "off": "no",
    "ask": "ask",
    "accept-new": "accept-new",
}


def _strict(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args)
    strict = _STRICT.get(value.lower())
    if strict is None:
        raise SpecError(f'{WHERE}: unsupported option "{value}".')
    return strict


def _host_key_policy(setting: str) -> TunnelSettings:
    """
    The tunnel's host key policy for ``StrictHostKeyChecking``.

    ``yes`` and ``ask`` are ``strict`` (rtunnel never prompts, which is what ``ask``
    amounts to under ``BatchMode``), ``accept-new`` is ``accept-new``, and ``no`` and
    ``off`` are ``accept-new`` as well: OpenSSH with ``no`` records an unknown key but,
    when a known key has *changed*, disables every port forward ("Port forwarding is
    disabled to avoid man-in-the-middle attacks.", sshconnect.c ``check_host_key``). A
    tunnel with its forwards disabled is useless, so refusing the changed key outright is
    the faithful equivalent. Not given, it is OpenSSH's ``ask``, so ``strict``.
    """
    policy: HostKeyPolicy = "accept-new" if setting in ("no", "accept-new") else "strict"
    return {"host_key_policy": policy}


_LOG_LEVEL_NAMES: Final = {name.lower(): name for name in LOG_LEVELS} | {"debug": "DEBUG1"}


def _control_socket(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args)
    return value.lower() if value.lower() in ("auto", "none") else _expand_path(value)


def _http_listen(keyword: str, args: list[str]) -> str:
    """``[ADDRESS:]PORT`` (``[IPV6]:PORT``) or ``none``, as ``ADDRESS:PORT``."""
    value = _one(keyword, args)
    if value.lower() == "none":
        return "none"
    address, colon, port = value.rpartition(":")
    if not colon:
        address = "127.0.0.1"
    elif address.startswith("[") and address.endswith("]") and len(address) > 2:
        pass
    elif not address or ":" in address or "[" in address:
        address = "?"
    number = to_port(port)
    if number is None or address == "?":
        raise SpecError(
            f"{WHERE}: Bad HttpListen '{value}': give PORT, ADDRESS:PORT, [IPV6]:PORT or none"
        )
    return f"{address}:{number}"


def _log_format(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args).lower()
    if value not in ("text", "json"):
        raise SpecError(f"{WHERE}: unsupported log format '{value}': give text or json")
    return value


def _log_level(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args)
    level = _LOG_LEVEL_NAMES.get(value.lower())
    if level is None:
        raise SpecError(f"{WHERE}: unsupported log level '{value}'")
    return level


def _identity_agent(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args)
    # readconf.c: "none" and "SSH_AUTH_SOCK" are kept as words, anything else a path.
    return value if value in ("none", "SSH_AUTH_SOCK") else _expand_path(value)


def _fingerprint_hash(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args).lower()
    if value not in ("md5", "sha256"):
        # readconf.c: ssh_digest_alg_by_name accepts md5 and sha256 here.
        raise SpecError(f'{WHERE}: Invalid hash algorithm "{value}".')
    return value


def _methods(keyword: str, args: list[str]) -> tuple[str, ...]:
    return tuple(m for m in _one(keyword, args).split(",") if m)


def _known_hosts_files(keyword: str, args: list[str]) -> tuple[str, ...]:
    if not args:
        raise SpecError(f"{WHERE}: Missing argument.")
    for arg in args:
        if not arg:
            raise SpecError(f"{WHERE}: keyword {keyword} empty argument")
    if any(arg.lower() == "none" for arg in args):
        if len(args) > 1:
            raise SpecError(f'{WHERE}: keyword {keyword} "none" argument must appear alone.')
        return ()
    return tuple(_expand_path(arg) for arg in args)


def _user_known_hosts(files: tuple[str, ...]) -> TunnelSettings:
    # UserKnownHostsFile=none: nothing is known; with accept-new the key is "recorded"
    # nowhere, as OpenSSH connects without being able to record it.
    return {"known_hosts": files or (os.devnull,)}


def _pubkey_algorithms(keyword: str, args: list[str]) -> tuple[str, ...]:
    value = _one(keyword, args)
    try:
        resolved = resolve_pubkey_algorithms(value)
    except SpecError as error:
        raise SpecError(f"{WHERE}: Bad key types '{value}'. {error.message}") from None
    assert resolved is not None
    return resolved


def _algorithms(kind: str, complaint: str) -> Callable[[str, list[str]], tuple[str, ...]]:
    """A reader of an algorithm list of ``kind``, in OpenSSH's list syntax, resolved."""

    def parse(keyword: str, args: list[str]) -> tuple[str, ...]:
        value = _one(keyword, args)
        try:
            return tuple(resolve(kind, value))
        except SpecError as error:
            # readconf.c's words ("Bad SSH2 cipher spec"), then why.
            raise SpecError(f"{WHERE}: {complaint} '{value}'. {error.message}") from None

    return parse


class HostKeyAlgorithmList(NamedTuple):
    """``HostKeyAlgorithms`` read: the list, and whether it changes OpenSSH's default
    (``+...``/``-...``), which is then ordered after known_hosts as the default is."""

    names: tuple[str, ...]
    modifies_default: bool


def _host_key_algorithms(keyword: str, args: list[str]) -> HostKeyAlgorithmList:
    names = _algorithms("host key", "Bad key types")(keyword, args)
    return HostKeyAlgorithmList(names, args[0].strip()[:1] in "+-")


_SIZE_SUFFIXES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rekey_limit(args: Sequence[str]) -> tuple[str, ...]:
    """
    ``RekeyLimit`` as OpenSSH reads it (readconf.c, ``oRekeyLimit``): ``default`` or a size
    with an optional K, M or G suffix (at least 16 bytes), then optionally ``none``,
    ``default`` or a time (``1h30m``). Returns ``(bytes, seconds)`` as decimal strings,
    ``""`` for "the default" and ``"none"`` for no time limit.
    """
    if not args or not args[0]:
        raise SpecError(f"{WHERE}: Missing argument.")
    if len(args) > 2:
        raise SpecError(f"{WHERE}: keyword rekeylimit extra arguments at end of line")
    size_text = args[0]
    if size_text.lower() == "default":
        size = ""
    else:
        match = re.fullmatch(r"(\d+)([kKmMgG]?)", size_text)
        if match is None:
            raise SpecError(f"{WHERE}: Bad number.")
        amount = int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]
        if amount != 0 and amount < 16:
            raise SpecError(f"{WHERE}: RekeyLimit too small")
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
                raise SpecError(f"{WHERE}: invalid time value.") from None
    return (size, seconds)


def _rekey_limit_settings(limit: tuple[str, ...]) -> TunnelSettings:
    size, seconds = limit
    settings: TunnelSettings = {}
    if size:
        settings["rekey_bytes"] = int(size)
    if seconds and seconds != "none":
        settings["rekey_seconds"] = float(seconds)
    return settings


def parse_channel_timeout(args: Sequence[str]) -> int:
    """
    ``ChannelTimeout`` as OpenSSH 9.2+ reads it (readconf.c, ``parse_pattern_interval``):
    ``type=interval`` pairs, or ``none``. Returns the seconds for ``forwarded-tcpip``
    channels, the only kind a reverse tunnel carries, taken from the first pair whose type
    pattern matches it (``*`` does); 0 for none. Other types are accepted and have nothing
    to apply to.
    """
    if not args or not args[0]:
        raise SpecError(f"{WHERE}: Missing argument.")
    if len(args) == 1 and args[0].lower() == "none":
        return 0
    chosen: int | None = None
    for arg in args:
        kind, sep, interval = arg.partition("=")
        if not sep or not kind or not interval:
            raise SpecError(f'{WHERE}: invalid channel timeout "{arg}": give type=interval.')
        try:
            seconds = parse_time(interval)
        except SpecError:
            raise SpecError(f'{WHERE}: invalid channel timeout interval "{interval}".') from None
        if chosen is None and _pattern_matches("forwarded-tcpip", kind):
            chosen = seconds
    return chosen or 0


def _pattern_matches(name: str, pattern: str) -> bool:
    """OpenSSH's ``match_pattern`` (match.c): ``*`` and ``?`` wildcards, nothing else."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


_RECONNECT_MODES: Final = {
    "no": "off",
    "false": "off",
    "off": "off",
    "yes": "on-loss",
    "true": "on-loss",
    "always": "always",
}


def _auto_reconnect(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args)
    mode = _RECONNECT_MODES.get(value.lower())
    if mode is None:
        raise SpecError(
            f'{WHERE}: unsupported AutoReconnect "{value}": give no, yes (reconnect when '
            "an established connection breaks) or always (also retry the first logon)."
        )
    return mode


def _retry_count(keyword: str, args: list[str]) -> int:
    value = _one(keyword, args)
    if not (value.isascii() and value.isdigit()):
        raise SpecError(f"{WHERE}: Bad number '{value}' (0 means no limit).")
    return int(value)


def _retry_interval(keyword: str, args: list[str]) -> int:
    seconds = _time(keyword, args)
    if seconds < 1:
        raise SpecError(f"{WHERE}: RetryInterval must be at least 1 second.")
    return seconds


def _group_server(keyword: str, args: list[str]) -> Destination:
    # Issue #15: one more server for the same forwards, written as a -J hop is.
    value = _one(keyword, args)
    try:
        hops = parse_proxy_jump(value)
    except SpecError as error:
        raise SpecError(f"{WHERE}: {error.message}") from None
    if len(hops) != 1:
        raise SpecError(
            f"{WHERE}: Bad {keyword} '{value}': give one [user@]host[:port] per {keyword}"
        )
    hop = hops[0]
    if hop.user is not None:
        check_user_name(hop.user)
    check_host_name(hop.host)
    return hop


def _group_mode(keyword: str, args: list[str]) -> str:
    value = _one(keyword, args).lower()
    if value not in ("failover", "all"):
        raise SpecError(
            f"{WHERE}: Bad {keyword} '{_one(keyword, args)}': give failover (one server at a "
            "time) or all (every server)"
        )
    return value


def _failback_after(keyword: str, args: list[str]) -> int | None:
    if _one(keyword, args).lower() == "no":
        return None
    return _time(keyword, args)


def _permit_remote_open(keyword: str, args: list[str]) -> tuple[tuple[str, str], ...] | None:
    if not args:
        raise SpecError(f"{WHERE}: Missing argument.")
    try:
        return parse_permit_remote_open(args)
    except SpecError as error:
        raise SpecError(f"{WHERE}: {error.message}") from None


def _transfer_rate(keyword: str, args: list[str]) -> int:
    value = _one(keyword, args)
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    if match is None:
        raise SpecError(
            f"{WHERE}: Bad MaxTransferRate '{value}': give bytes per second, with an "
            "optional K, M or G (0: no limit)."
        )
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]


def _forward_policy(keyword: str, args: list[str]) -> PolicyFor:
    # One -o argument "8080 allow=... rate=10" arrives split on spaces, as ssh splits it.
    words = [word for arg in args for word in arg.split()]
    try:
        return parse_policy_line(words)
    except SpecError as error:
        raise SpecError(
            f"{WHERE}: Bad ForwardPolicy '{' '.join(words)}': {error.message}"
        ) from None


def _proxy_command(keyword: str, args: list[str]) -> str:
    # readconf.c keeps the rest of the line as the command.
    if not args:
        raise SpecError(f"{WHERE}: Missing argument.")
    command = " ".join(args)
    if command.lower() != "none":
        # Imported here, as in _proxy_jump and _proxy: a plain start needs none of it.
        from rtunnel.client.reach._proxycommand import expand_proxy_command

        try:
            # Unknown tokens are refused now; the values do not matter for that.
            expand_proxy_command(command, host="h", port=22, user="u")
        except SpecError as error:
            raise SpecError(f"{WHERE}: {error.message}") from None
    return command


def _proxy_command_settings(command: str) -> TunnelSettings:
    return {"proxy_command": None if command.lower() == "none" else command}


def _proxy_jump(keyword: str, args: list[str]) -> tuple[JumpHost, ...]:
    value = _one(keyword, args)
    if value.lower() == "none":
        return ()
    try:
        parse_proxy_jump(value)
    except SpecError as error:
        raise SpecError(f"{WHERE}: {error.message}") from None
    from rtunnel.client.reach.jump import jump_hosts

    hops = jump_hosts(value)
    # ssh runs "ssh -W ... HOP" for each hop, which checks the hop's names as it checks
    # the destination's (ssh.c, valid_hostname and valid_ruser) and says so in its words.
    for hop in hops:
        if hop.user is not None:
            check_user_name(hop.user)
        check_host_name(hop.host)
    return hops


def _hide_password(url: str) -> str:
    # A proxy URL's password must not reach the terminal or a log in an error message.
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _proxy(keyword: str, args: list[str]) -> Proxy | Literal["auto"] | None:
    value = _one(keyword, args)
    if value.lower() == "none":
        return None
    if value.lower() == "auto":
        return "auto"
    from rtunnel.client.reach.proxy import Proxy

    try:
        return Proxy.from_url(value)
    except SpecError as error:
        raise SpecError(f"{WHERE}: Bad Proxy '{_hide_password(value)}'. {error.message}") from None


def _remote_forward(keyword: str, args: list[str]) -> RemoteForwardSpec:
    if len(args) > 2:
        raise SpecError(f"{WHERE}: keyword {keyword} extra arguments at end of line")
    # readconf.c joins "listen target" into "listen:target" for parse_forward.
    result = forward_or_reason(":".join(args))
    if isinstance(result, str):
        shown = " ".join(args)
        raise SpecError(f"{WHERE}: Bad forwarding specification '{shown}': {result}")
    return result


# --------------------------------------------------------------------------------------
# The table

_ALGORITHM_LIST = "[+|-|^]NAME,..."

#: ``-b`` and ``BindAddress``.
BIND_ADDRESS: Final = Keyword(
    "BindAddress",
    value="ADDRESS",
    topic="Connection",
    help="connect from this local address (-b)",
    parse=_text,
    sets=("local_host",),
)
#: ``-J`` and ``ProxyJump``.
PROXY_JUMP: Final = Keyword(
    "ProxyJump",
    value="[USER@]HOST[:PORT][,...]|none",
    topic="Connection",
    help="reach the server through these jump hosts, with the same keys and known_hosts "
    "(-J; no ssh binary needed)",
    parse=_proxy_jump,
    sets=("proxy_jump",),
    slot="ProxyCommand|ProxyJump",
)
#: ``-c`` and ``Ciphers``.
CIPHERS: Final = Keyword(
    "Ciphers",
    value=_ALGORITHM_LIST,
    topic="Transport",
    help="the ciphers to offer (-c); a leading + appends to the default, - removes, ^ puts first",
    parse=_algorithms("cipher", "Bad SSH2 cipher spec"),
    sets=("ciphers",),
)
#: ``-m`` and ``MACs``.
MACS: Final = Keyword(
    "MACs",
    value=_ALGORITHM_LIST,
    topic="Transport",
    help="the MACs to offer (-m)",
    parse=_algorithms("mac", "Bad SSH2 MAC spec"),
    sets=("macs",),
)
#: ``-C`` and ``Compression``.
COMPRESSION: Final = Keyword(
    "Compression",
    value="yes|no",
    topic="Transport",
    help="compress (zlib@openssh.com, then zlib; -C)",
    parse=_flag,
    sets=("compression",),
)
#: ``-K`` and these two.
GSSAPI_AUTHENTICATION: Final = Keyword(
    "GSSAPIAuthentication",
    value="yes|no",
    topic="Authentication",
    help="GSSAPI (Kerberos) authentication, off by default as in ssh (-K)",
    parse=_flag,
    command="gssapi_authentication",
)
GSSAPI_DELEGATE_CREDENTIALS: Final = Keyword(
    "GSSAPIDelegateCredentials",
    value="yes|no",
    topic="Authentication",
    help="forward the Kerberos ticket (-K)",
    parse=_flag,
    command="gssapi_delegate_credentials",
)

#: ``StrictHostKeyChecking``, named in the command's host key message.
STRICT_HOST_KEY_CHECKING: Final = Keyword(
    "StrictHostKeyChecking",
    value="yes|ask|accept-new|no",
    topic="Host keys",
    help="yes and ask (the default) refuse an unknown host key, accept-new and no record it; "
    "a changed key is always refused",
    parse=_strict,
    sets=("host_key_policy",),
    to_settings=_host_key_policy,
)
#: ``HostName``: the name the command connects to (the destination's ``%h`` expanded;
#: :mod:`rtunnel.openssh.ssh_config` resolves it with the files).
HOST_NAME: Final = Keyword(
    "HostName",
    value="NAME|ADDRESS",
    topic="Connection",
    help="the real host to connect to, the destination being a nickname (%h: that "
    "nickname); usually in an ssh_config Host block",
    parse=_text,
    command="host_name",
)
#: ``-p`` and ``Port``.
PORT: Final = Keyword(
    "Port",
    value="PORT",
    topic="Connection",
    help="the server's port (-p; default 22)",
    parse=_port,
    command="port",
)
#: ``-l`` and ``User``.
USER: Final = Keyword(
    "User",
    value="NAME",
    topic="Connection",
    help="the user to log in as (-l; default: the local user)",
    parse=_text,
    command="user",
)
#: ``-R`` and ``RemoteForward``.
REMOTE_FORWARD: Final = Keyword(
    "RemoteForward",
    value="[BIND_ADDRESS:]PORT[:HOST:HOSTPORT]",
    topic="Forwards",
    help="as -R (repeatable)",
    parse=_remote_forward,
    command="remote_forwards",
    collect="unique",
)
#: ``-i`` and ``IdentityFile``.
IDENTITY_FILE: Final = Keyword(
    "IdentityFile",
    value="FILE",
    topic="Authentication",
    help="a private key (-i; repeatable)",
    parse=_path,
    command="identity_files",
    collect="append",
)

#: ``BatchMode``, named in the command's messages.
SERVER_ALIVE_INTERVAL: Final = Keyword(
    "ServerAliveInterval",
    value="TIME",
    topic="Staying up",
    help="send a keepalive after that long without a packet from the server "
    "(default 0: never; 300 with BatchMode=yes, as ssh)",
    parse=lambda keyword, args: _server_alive(keyword, args, time=True),
    sets=("keepalive_interval",),
    default=0,
)
#: ServerAliveInterval when BatchMode=yes and none is given (readconf.c,
#: fill_default_options: "in batch mode, default is 5mins").
BATCH_MODE_SERVER_ALIVE_INTERVAL: Final = 300

BATCH_MODE: Final = Keyword(
    "BatchMode",
    value="yes|no",
    topic="Authentication",
    help="never ask for a password or passphrase",
    parse=_flag,
    command="batch_mode",
)

#: Every keyword rtunnel reads, by topic.
KEYWORDS: Final[tuple[Keyword[Any], ...]] = (
    # Connection
    HOST_NAME,
    PORT,
    USER,
    BIND_ADDRESS,
    Keyword(
        "ConnectTimeout",
        value="TIME|none",
        topic="Connection",
        help="bound the TCP connect plus the SSH handshake (default 30 s)",
        parse=_connect_timeout,
        sets=("connect_timeout",),
    ),
    Keyword(
        "ProxyCommand",
        value="COMMAND|none",
        topic="Connection",
        help="speak SSH over COMMAND's standard input and output (%h, %p, %r, %n, %% expanded); "
        "of ProxyCommand and ProxyJump the first given wins",
        parse=_proxy_command,
        sets=("proxy_command",),
        to_settings=_proxy_command_settings,
        slot="ProxyCommand|ProxyJump",
    ),
    PROXY_JUMP,
    Keyword(
        "Proxy",
        value="URL|auto|none",
        topic="Connection",
        help="reach the server through socks4://, socks4a://, socks5://[USER:PASSWORD@]HOST[:PORT] "
        "or http:// (HTTP CONNECT); auto: the one ALL_PROXY or all_proxy names, less "
        "NO_PROXY's hosts",
        parse=_proxy,
        sets=("proxy",),
        own=True,
    ),
    Keyword(
        "ProxyExceptionsList",
        value="HOST;HOST...",
        topic="Connection",
        help="hosts reached without the proxy",
        parse=_text,
        sets=("proxy_exceptions",),
        own=True,
    ),
    Keyword(
        "TCPKeepAlive",
        value="yes|no",
        topic="Connection",
        help="TCP keep-alive probes on the SSH connection (default yes)",
        parse=_flag,
        sets=("tcp_options",),
        to_settings=lambda on: {"tcp_options": TCPOptions(keepalive=on)},
    ),
    # Forwards
    REMOTE_FORWARD,
    Keyword(
        "ExitOnForwardFailure",
        value="yes|no",
        topic="Forwards",
        help="exit when the server refuses a forward",
        parse=_flag,
        sets=("exit_on_forward_failure",),
    ),
    Keyword(
        "PermitRemoteOpen",
        value="HOST:PORT ...|any|none",
        topic="Forwards",
        help="where a dynamic forward's clients may connect (* for any host or port)",
        parse=_permit_remote_open,
        sets=("permit_remote_open",),
    ),
    Keyword(
        "ChannelTimeout",
        value="forwarded-tcpip=TIME|none",
        topic="Forwards",
        help="close forwarded connections idle that long (*=TIME too)",
        parse=lambda keyword, args: parse_channel_timeout(args),
        sets=("channel_idle_timeout",),
        to_settings=lambda seconds: {"channel_idle_timeout": float(seconds)},
    ),
    Keyword(
        "ForwardingLocalHost",
        value="ADDRESS",
        topic="Forwards",
        help="connect to targets from this address",
        parse=_text,
        sets=("forwarding_local_host",),
        own=True,
    ),
    Keyword(
        "ForwardPolicy",
        value="[BIND_ADDRESS:]PORT KEY=VALUE ...",
        topic="Forwards",
        help="a policy for the -R forward listening there (repeatable): allow=ADDR[/BITS],... "
        "deny=ADDR[/BITS],... (deny wins) max_channels=N rate=N[/s|/m|/h] burst=N "
        "bandwidth=N[K|M|G] idle_timeout=TIME",
        parse=_forward_policy,
        command="forward_policies",
        collect="append",
        own=True,
    ),
    Keyword(
        "MaxTransferRate",
        value="N[K|M|G]",
        topic="Forwards",
        help="bytes per second to the server, all channels together (0: no limit)",
        parse=_transfer_rate,
        sets=("max_transfer_rate",),
        own=True,
    ),
    # Host keys
    STRICT_HOST_KEY_CHECKING,
    Keyword(
        "UserKnownHostsFile",
        value="FILE ...|none",
        topic="Host keys",
        help="the known_hosts files (default ~/.ssh/known_hosts)",
        parse=_known_hosts_files,
        sets=("known_hosts",),
        to_settings=_user_known_hosts,
    ),
    Keyword(
        "GlobalKnownHostsFile",
        value="FILE ...|none",
        topic="Host keys",
        help="known_hosts files read, never written (default /etc/ssh/ssh_known_hosts{,2})",
        parse=_known_hosts_files,
        sets=("global_known_hosts",),
    ),
    Keyword(
        "FingerprintHash",
        value="sha256|md5",
        topic="Host keys",
        help="the fingerprints shown",
        parse=_fingerprint_hash,
        sets=("fingerprint_hash",),
    ),
    Keyword(
        "HashKnownHosts",
        value="yes|no",
        topic="Host keys",
        help="hash the host names accept-new records",
        parse=_flag,
        sets=("hash_known_hosts",),
    ),
    # Authentication
    IDENTITY_FILE,
    Keyword(
        "CertificateFile",
        value="FILE",
        topic="Authentication",
        help="a certificate for a key (repeatable)",
        parse=_path,
        command="certificate_files",
        collect="append",
    ),
    Keyword(
        "IdentityAgent",
        value="SOCKET|SSH_AUTH_SOCK|none",
        topic="Authentication",
        help="the ssh-agent to ask (default SSH_AUTH_SOCK)",
        parse=_identity_agent,
        command="identity_agent",
    ),
    Keyword(
        "IdentitiesOnly",
        value="yes|no",
        topic="Authentication",
        help="use the agent's keys only for the identity files and certificates given",
        parse=_flag,
        command="identities_only",
    ),
    Keyword(
        "PreferredAuthentications",
        value="METHOD,...",
        topic="Authentication",
        help="the methods to try, in order",
        parse=_methods,
        command="preferred_authentications",
    ),
    Keyword(
        "PubkeyAuthentication",
        value="yes|no",
        topic="Authentication",
        help="public key authentication",
        parse=_flag,
        command="pubkey_authentication",
    ),
    Keyword(
        "PasswordAuthentication",
        value="yes|no",
        topic="Authentication",
        help="password authentication",
        parse=_flag,
        command="password_authentication",
    ),
    Keyword(
        "KbdInteractiveAuthentication",
        value="yes|no",
        topic="Authentication",
        help="keyboard-interactive authentication",
        parse=_flag,
        command="kbd_interactive_authentication",
    ),
    Keyword(
        "NumberOfPasswordPrompts",
        value="N",
        topic="Authentication",
        help="how often a password or passphrase is asked (default 3)",
        parse=_number,
        sets=("number_of_password_prompts",),
    ),
    Keyword(
        "PubkeyAcceptedAlgorithms",
        value=_ALGORITHM_LIST,
        topic="Authentication",
        help="the public key signature algorithms to use",
        parse=_pubkey_algorithms,
        sets=("pubkey_accepted_algorithms",),
        # OpenSSH 8.5 renamed PubkeyAcceptedKeyTypes (readconf.c keywords[]).
        aliases=("PubkeyAcceptedKeyTypes",),
    ),
    GSSAPI_AUTHENTICATION,
    GSSAPI_DELEGATE_CREDENTIALS,
    BATCH_MODE,
    # Transport
    CIPHERS,
    MACS,
    Keyword(
        "KexAlgorithms",
        value=_ALGORITHM_LIST,
        topic="Transport",
        help="the key exchange methods to offer",
        parse=_algorithms("kex", "Bad SSH2 KexAlgorithms"),
        sets=("kex_algorithms",),
    ),
    Keyword(
        "HostKeyAlgorithms",
        value=_ALGORITHM_LIST,
        topic="Transport",
        help="the host key algorithms to accept",
        parse=_host_key_algorithms,
        sets=("host_key_algorithms", "order_host_key_algorithms"),
        to_settings=lambda chosen: {
            "host_key_algorithms": chosen.names,
            "order_host_key_algorithms": chosen.modifies_default,
        },
    ),
    Keyword(
        "RekeyLimit",
        value="SIZE[K|M|G] [TIME|none]",
        topic="Transport",
        help="new keys after that many bytes either way, or that long (default 1G none)",
        parse=lambda keyword, args: parse_rekey_limit(args),
        sets=("rekey_bytes", "rekey_seconds"),
        to_settings=_rekey_limit_settings,
    ),
    COMPRESSION,
    # Staying up
    SERVER_ALIVE_INTERVAL,
    Keyword(
        "ServerAliveCountMax",
        value="N",
        topic="Staying up",
        help="drop the connection after that many unanswered keepalives (default 3)",
        parse=lambda keyword, args: _server_alive(keyword, args, time=False),
        sets=("keepalive_count_max",),
        default=3,
    ),
    Keyword(
        "AutoReconnect",
        value="no|yes|always",
        topic="Staying up",
        help="yes (the default): reconnect and request the forwards again when the connection "
        "breaks; always: also retry the first connection; no: exit, as ssh does",
        parse=_auto_reconnect,
        command="auto_reconnect",
        own=True,
    ),
    Keyword(
        "MaxRetryCount",
        value="N",
        topic="Staying up",
        help="retries in a row before giving up (0: no limit)",
        parse=_retry_count,
        command="max_retry_count",
        own=True,
    ),
    Keyword(
        "RetryInterval",
        value="TIME",
        topic="Staying up",
        help="the first wait; it doubles up to a minute, and starts again once a reconnect has "
        "carried traffic",
        parse=_retry_interval,
        command="retry_interval",
        own=True,
    ),
    # Several servers for one service (issue #15)
    Keyword(
        "GroupServer",
        value="[user@]host[:port]",
        topic="Staying up",
        help="one more SSH server for the same forwards (repeat it for more; read through "
        "ssh_config as the destination is, with the same options): the destination and "
        "these servers form a tunnel group",
        parse=_group_server,
        command="group_servers",
        collect="append",
        own=True,
    ),
    Keyword(
        "GroupMode",
        value="failover|all",
        topic="Staying up",
        help="with GroupServer: failover (the default) holds the forwards on one server at "
        "a time, the others logged on as standbys, and moves them to the next server at once "
        "when it is lost; all holds them on every server",
        parse=_group_mode,
        command="group_mode",
        own=True,
    ),
    Keyword(
        "FailbackAfter",
        value="TIME|no",
        topic="Staying up",
        help="failover: move the forwards back to an earlier server once it has been logged "
        "on that long (default no: they stay where they are until that server is lost)",
        parse=_failback_after,
        command="failback_after",
        own=True,
    ),
    # Logging
    Keyword(
        "LogLevel",
        value="QUIET|FATAL|ERROR|INFO|VERBOSE|DEBUG1-3",
        topic="Logging",
        help="what is printed (-v and -q move it)",
        parse=_log_level,
        command="log_level",
    ),
    Keyword(
        "LogFormat",
        value="text|json",
        topic="Logging",
        help="json: one JSON object per line on stderr (time, level, tunnel, message), for "
        "journald or a log shipper",
        parse=_log_format,
        command="log_format",
        own=True,
    ),
    # Operations (issue #14)
    Keyword(
        "ControlSocket",
        value="auto|PATH|none",
        topic="Operations",
        help='listen on a Unix socket only you can open, which "rtunnel status" asks; auto: '
        "$XDG_RUNTIME_DIR/rtunnel/PID.sock, else ~/.rtunnel/PID.sock",
        parse=_control_socket,
        command="control_socket",
        own=True,
    ),
    Keyword(
        "HttpListen",
        value="[ADDRESS:]PORT|none",
        topic="Operations",
        help="serve /healthz, /readyz and /metrics (Prometheus) over HTTP; ADDRESS defaults "
        "to 127.0.0.1",
        parse=_http_listen,
        command="http_listen",
        own=True,
    ),
)


def _server_alive(keyword: str, args: list[str], *, time: bool) -> int:
    value = _one(keyword, args)
    try:
        number = parse_time(value) if time else int(value)
    except (SpecError, ValueError):
        number = -1
    if number < 0:
        # readconf.c's words for a bad time / integer value.
        raise SpecError(f"{WHERE}: invalid {'time value' if time else 'integer value'}.")
    return number


_BY_NAME: Final = {
    spelling.lower(): row for row in KEYWORDS for spelling in (row.name, *row.aliases)
}


def keyword_named(name: str) -> Keyword[Any] | None:
    """The row for ``name`` or one of its aliases, matched case-insensitively as OpenSSH
    matches keywords (readconf.c ``lowercase(keyword)``)."""
    return _BY_NAME.get(name.lower())


def parse_in_file(row: Keyword[V], written: str, args: list[str], where: str) -> V:
    """
    ``row.parse`` for a line of an ``ssh_config`` file: the same reader as ``-o``, its
    message naming the file's line (``where``, ``FILE line N``) where an ``-o`` option's
    names ``command-line line 0``, as readconf.c names every line it reads.

    :param written: the keyword as the file spells it.
    :raises SpecError: the row's message, so placed.
    """
    try:
        return row.parse(written, args)
    except SpecError as error:
        message = error.message
        for prefix in (WHERE, "command-line: line 0"):
            if message.startswith(prefix):
                message = where + message[len(prefix) :]
                break
        else:
            message = f"{where}: {message}"
        raise SpecError(message) from None


# --------------------------------------------------------------------------------------
# Help


def help_lines(indent: int, width: int = 88) -> list[str]:
    """
    The keywords for ``rtunnel --help``: by topic, each ``Name=VALUE`` and its help line,
    rtunnel's own marked, wrapped to ``width`` columns after ``indent`` spaces.
    """
    pad = " " * indent
    lines: list[str] = []
    for topic in TOPICS:
        lines.append(f"{pad}{topic}:")
        for row in (r for r in KEYWORDS if r.topic == topic):
            own = "; rtunnel's own" if row.own else ""
            lines.extend(
                textwrap.wrap(
                    f"{row.name}={row.value}: {row.help}{own}.",
                    width,
                    initial_indent=pad + "  ",
                    subsequent_indent=pad + "      ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
    return lines


def twistd_summary() -> str:
    """The keywords for ``twistd rtunnel --help``, one sentence per topic (twistd wraps
    the text itself)."""
    return " ".join(
        f"{topic}: "
        + ", ".join(f"{row.name}={row.value}" for row in KEYWORDS if row.topic == topic)
        + "."
        for topic in TOPICS
    )
