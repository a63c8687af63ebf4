"""
OpenSSH's ``-o`` options as ``ssh`` reads them (readconf.c, ``process_config_line``):
the keywords rtunnel understands, the ones it refuses and the ones it ignores, each
value checked with OpenSSH's message for a mistake.

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
from typing import Final

from rtunnel._core.syntax import parse_proxy_jump, to_port
from rtunnel.client.transport._algorithms import resolve
from rtunnel.errors import SpecError
from rtunnel.openssh.forwards import RemoteForwardSpec, forward_or_reason
from rtunnel.openssh.values import parse_time

__all__ = [
    "LOG_LEVELS",
    "SUPPORTED_OPTIONS",
    "OptionValue",
    "parse_channel_timeout",
    "parse_option",
    "parse_rekey_limit",
    "split_arguments",
]

# OpenSSH's -o lines are processed as line 0 of a file called "command-line"
# (ssh.c: process_config_line(..., "command-line", 0, ...)); every readconf.c message
# starts with that. Note the two spellings: most messages say "%s line %d:", only the
# unknown-keyword one says "%s: line %d:" (readconf.c, parse_token).
_WHERE: Final = "command-line line 0"

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
        result = forward_or_reason(":".join(args))
        if isinstance(result, str):
            shown = " ".join(args)
            raise SpecError(f"{_WHERE}: Bad forwarding specification '{shown}': {result}")
        return result
    raise AssertionError(f"no parser for {canonical}")  # pragma: no cover
