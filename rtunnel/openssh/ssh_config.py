"""
``ssh_config`` files read as OpenSSH's ``ssh`` reads them, and the options they give one
destination, resolved as ``ssh -G`` resolves them.

The reference is OpenSSH 9.2p1 (Debian 12's ``ssh``, which ``tests/pure/test_ssh_config.py``
compares against): ``readconf.c`` (``process_config_line``, ``read_config_file_depth``,
``match_cfg_line``, ``parse_forward``), ``ssh.c`` (``process_config_files`` and the two
passes in ``main``), ``misc.c`` (``strdelim``, ``argv_split``, ``percent_expand``,
``convtime``, ``a2port``) and ``match.c`` (``match_pattern``). Quirks of that code are kept
on purpose and say so where they are.

What it does: the files in ssh's order (``-o`` lines, the user's file or ``-F FILE``, the
system file), ``Host`` and ``Match`` blocks, ``Include``, first value wins or accumulation
as ssh does for each keyword, the second pass a ``Match final`` asks for, ``HostName`` with
``%h``, and every value checked with ssh's message for a mistake. A keyword ssh knows is
returned whatever it is; which of them rtunnel implements is the option table's business,
not this module's (:meth:`ResolvedConfig.not_in`).

What it does not do: look anything up in the DNS (``CanonicalizeHostname`` canonicalises
nothing here, its second pass still happens, as in ssh; ``CanonicalizePermittedCNAMEs``
follows no CNAME; a host without a dot is not replaced by the resolver's canonical name
as ``ssh -G`` prints it), check the names in algorithm lists (they depend on how ssh was
built), or run a ``Match exec`` command unless given a ``run`` callable
(:func:`run_in_shell` runs one as ssh does). A bad ``%`` token or ``${VAR}`` is named
with its file and line, where ssh says only ``percent_expand: failed``.

Pure: no reactor, no network. It reads the files it is pointed at, and the password
database for the defaults of ``home`` and ``local_user``.
"""

from __future__ import annotations

import errno
import glob as _glob
import hashlib
import os
import re
import socket
import stat
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from rtunnel.errors import SpecError

__all__ = [
    "KEYWORDS",
    "ConfigEntry",
    "Forward",
    "IgnoredLine",
    "Keyword",
    "ResolvedConfig",
    "SSHConfigError",
    "format_like_ssh_G",
    "resolve",
    "run_in_shell",
]

#: The OpenSSH release whose ``ssh`` this module reads configuration files like.
OPENSSH_VERSION: Final = "9.2p1"

_WHITESPACE: Final = " \t\r\n"
# readconf.c, READCONF_MAX_DEPTH.
_MAX_INCLUDE_DEPTH: Final = 16
# ssh.h SSH_MAX_IDENTITY_FILES / SSH_MAX_CERTIFICATE_FILES, readconf.h SSH_MAX_HOSTS_FILES
# and MAX_CANON_DOMAINS.
_MAX_IDENTITY_FILES: Final = 100
_MAX_CERTIFICATE_FILES: Final = 100
_MAX_HOSTS_FILES: Final = 32
_MAX_CANON_DOMAINS: Final = 32
_INT_MAX: Final = 2**31 - 1
_LLONG_MAX: Final = 2**63 - 1
# misc.h PORT_STREAMLOCAL: the port of a forward's Unix-socket end.
_PORT_STREAMLOCAL: Final = -2
# NI_MAXHOST, and sizeof(sun_path) on Linux (readconf.h PATH_MAX_SUN).
_NI_MAXHOST: Final = 1025
_PATH_MAX_SUN: Final = 108
_SSH_DIR: Final = "/etc/ssh"


class SSHConfigError(SpecError):
    """
    A configuration file ``ssh`` would refuse. The message is ssh's: each bad line as
    ``FILE line N: what is wrong``, and, when lines were bad, ssh's closing
    ``FILE: terminating, N bad configuration options``.

    :ivar problems: the bad lines as (file, line number, message), in reading order.
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, int, str]] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class _Fatal(Exception):
    """ssh's ``fatal()`` while reading: reading stops at once."""


class _BadLine(Exception):
    """A bad line (``error()`` then ``goto out`` in readconf.c): counted, reading goes on."""


# --------------------------------------------------------------------------------------
# The keywords


@dataclass(frozen=True)
class Keyword:
    """
    One ``ssh_config`` keyword as ``ssh`` 9.2 knows it.

    :ivar name: the lower-case name ``ssh -G`` prints for it (readconf.c
        ``lookup_opcode_name``: the first name in ``keywords[]`` for its opcode).
    :ivar kind: how its arguments are read and when a value takes effect (the cases of
        ``process_config_line``).
    :ivar aliases: other names for the same keyword.
    :ivar multistate: for ``kind == "multistate"``, the words and their values in
        readconf.c's table order (``ssh -G`` prints the first word with the value).
    :ivar ignored_by_ssh: why ssh itself ignores it (deprecated, unsupported), if it does.
    """

    name: str
    kind: str
    aliases: tuple[str, ...] = ()
    multistate: tuple[tuple[str, int], ...] = ()
    ignored_by_ssh: str = ""


# readconf.c's multistate tables, in their order.
_FLAG: Final = (("true", 1), ("false", 0), ("yes", 1), ("no", 0))
_YESNOASK: Final = (*_FLAG, ("ask", 2))
_STRICT_HOSTKEY: Final = (
    ("true", 2),
    ("false", 0),
    ("yes", 2),
    ("no", 0),
    ("ask", 3),
    ("off", 0),
    ("accept-new", 1),
)
_YESNOASKCONFIRM: Final = (*_FLAG, ("ask", 2), ("confirm", 3))
_ADDRESS_FAMILY: Final = (("inet", 2), ("inet6", 10), ("any", 0))
_CONTROL_MASTER: Final = (
    ("true", 1),
    ("yes", 1),
    ("false", 0),
    ("no", 0),
    ("auto", 2),
    ("ask", 3),
    ("autoask", 4),
)
_TUNNEL: Final = (
    ("ethernet", 2),
    ("point-to-point", 1),
    ("true", 1),
    ("yes", 1),
    ("false", 0),
    ("no", 0),
)
_REQUEST_TTY: Final = (
    ("true", 2),
    ("yes", 2),
    ("false", 1),
    ("no", 1),
    ("force", 3),
    ("auto", 0),
)
_SESSION_TYPE: Final = (("none", 0), ("subsystem", 1), ("default", 2))
_CANONICALIZE_HOSTNAME: Final = (
    ("true", 1),
    ("false", 0),
    ("yes", 1),
    ("no", 0),
    ("always", 2),
)
_PUBKEY_AUTH: Final = (
    ("true", 3),
    ("false", 0),
    ("yes", 3),
    ("no", 0),
    ("unbound", 1),
    ("host-bound", 2),
)
# Built with zlib, as every distribution builds it.
_COMPRESSION: Final = (("yes", 1), ("no", 0))


def _kw(
    name: str,
    kind: str,
    *aliases: str,
    multistate: tuple[tuple[str, int], ...] = (),
    ignored: str = "",
) -> Keyword:
    if kind == "flag":
        kind, multistate = "multistate", _FLAG
    return Keyword(name, kind, aliases, multistate, ignored)


_DEPRECATED: Final = "Deprecated option"
_UNSUPPORTED: Final = "Unsupported option"

#: Every keyword ``ssh`` 9.2 accepts (readconf.c ``keywords[]``, built with GSSAPI and
#: PKCS#11 as Debian builds it), plus the ones Debian's and Fedora's patches add (the
#: GSSAPI key exchange patch; ``ProtocolKeepAlives`` and ``SetupTimeOut``, Debian's old
#: names for ``ServerAliveInterval``), so a file written for those ``ssh`` builds reads.
KEYWORDS: Final[tuple[Keyword, ...]] = (
    # Deprecated and unsupported: ssh accepts the line and ignores it.
    _kw("protocol", "ignore", ignored="Ignored option"),
    *(
        _kw(name, "ignore", ignored=_DEPRECATED)
        for name in (
            "cipher",
            "fallbacktorsh",
            "globalknownhostsfile2",
            "rhostsauthentication",
            "userknownhostsfile2",
            "useroaming",
            "usersh",
            "useprivilegedport",
        )
    ),
    *(
        _kw(name, "ignore", ignored=_UNSUPPORTED)
        for name in (
            "afstokenpassing",
            "kerberosauthentication",
            "kerberostgtpassing",
            "rsaauthentication",
            "rhostsrsaauthentication",
            "compressionlevel",
        )
    ),
    _kw("gssapiauthentication", "flag"),
    _kw("gssapidelegatecredentials", "flag"),
    _kw("pkcs11provider", "string", "smartcarddevice"),
    # Debian's GSSAPI key exchange patch (also Fedora's).
    _kw("gssapikeyexchange", "flag"),
    _kw("gssapiclientidentity", "string"),
    _kw("gssapiserveridentity", "string"),
    _kw("gssapirenewalforcesrekey", "flag"),
    _kw("gssapitrustdns", "flag"),
    _kw("gssapikexalgorithms", "algorithms"),
    _kw("forwardagent", "forwardagent"),
    _kw("forwardx11", "flag"),
    _kw("forwardx11trusted", "flag"),
    _kw("forwardx11timeout", "time"),
    _kw("exitonforwardfailure", "flag"),
    _kw("xauthlocation", "string"),
    _kw("gatewayports", "flag"),
    _kw("passwordauthentication", "flag"),
    _kw(
        "kbdinteractiveauthentication",
        "flag",
        "challengeresponseauthentication",
        "skeyauthentication",
        "tisauthentication",
    ),
    _kw("kbdinteractivedevices", "string"),
    _kw("pubkeyauthentication", "multistate", "dsaauthentication", multistate=_PUBKEY_AUTH),
    _kw("hostbasedauthentication", "flag"),
    _kw("identityfile", "identityfile", "identityfile2"),
    _kw("identitiesonly", "flag"),
    _kw("certificatefile", "certificatefile"),
    _kw("addkeystoagent", "addkeystoagent"),
    _kw("identityagent", "agentpath"),
    _kw("hostname", "string"),
    _kw("hostkeyalias", "string"),
    _kw("proxycommand", "proxycommand"),
    _kw("port", "port"),
    _kw("ciphers", "algorithms"),
    _kw("macs", "algorithms"),
    _kw("remoteforward", "forward"),
    _kw("localforward", "forward"),
    _kw("permitremoteopen", "permitremoteopen"),
    _kw("user", "string"),
    _kw("host", "host"),
    _kw("match", "match"),
    _kw("escapechar", "escapechar"),
    _kw("globalknownhostsfile", "hostfiles"),
    _kw("userknownhostsfile", "hostfiles"),
    _kw("connectionattempts", "int"),
    _kw("batchmode", "flag"),
    _kw("checkhostip", "flag"),
    _kw("stricthostkeychecking", "multistate", multistate=_STRICT_HOSTKEY),
    _kw("compression", "multistate", multistate=_COMPRESSION),
    _kw("tcpkeepalive", "flag", "keepalive"),
    _kw("numberofpasswordprompts", "int"),
    _kw("syslogfacility", "syslogfacility"),
    _kw("loglevel", "loglevel"),
    _kw("logverbose", "logverbose"),
    _kw("dynamicforward", "forward"),
    _kw("preferredauthentications", "string"),
    _kw("hostkeyalgorithms", "algorithms"),
    _kw("casignaturealgorithms", "algorithms"),
    _kw("bindaddress", "string"),
    _kw("bindinterface", "string"),
    _kw("clearallforwardings", "flag"),
    _kw("enablesshkeysign", "flag"),
    _kw("verifyhostkeydns", "multistate", multistate=_YESNOASK),
    _kw("nohostauthenticationforlocalhost", "flag"),
    _kw("rekeylimit", "rekeylimit"),
    _kw("connecttimeout", "time"),
    _kw("addressfamily", "multistate", multistate=_ADDRESS_FAMILY),
    _kw("serveraliveinterval", "time", "protocolkeepalives", "setuptimeout"),
    _kw("serveralivecountmax", "int"),
    _kw("sendenv", "sendenv"),
    _kw("setenv", "setenv"),
    _kw("controlpath", "string"),
    _kw("controlmaster", "multistate", multistate=_CONTROL_MASTER),
    _kw("controlpersist", "controlpersist"),
    _kw("hashknownhosts", "flag"),
    _kw("include", "include"),
    _kw("tunnel", "multistate", multistate=_TUNNEL),
    _kw("tunneldevice", "tunneldevice"),
    _kw("localcommand", "command"),
    _kw("permitlocalcommand", "flag"),
    _kw("remotecommand", "command"),
    _kw("visualhostkey", "flag"),
    _kw("kexalgorithms", "algorithms"),
    _kw("ipqos", "ipqos"),
    _kw("requesttty", "multistate", multistate=_REQUEST_TTY),
    _kw("sessiontype", "multistate", multistate=_SESSION_TYPE),
    _kw("stdinnull", "flag"),
    _kw("forkafterauthentication", "flag"),
    _kw("proxyusefdpass", "flag"),
    _kw("canonicaldomains", "canonicaldomains"),
    _kw("canonicalizefallbacklocal", "flag"),
    _kw("canonicalizehostname", "multistate", multistate=_CANONICALIZE_HOSTNAME),
    _kw("canonicalizemaxdots", "int"),
    _kw("canonicalizepermittedcnames", "permittedcnames"),
    _kw("streamlocalbindmask", "streamlocalbindmask"),
    _kw("streamlocalbindunlink", "flag"),
    _kw("revokedhostkeys", "string"),
    _kw("fingerprinthash", "fingerprinthash"),
    _kw("updatehostkeys", "multistate", multistate=_YESNOASK),
    _kw("hostbasedacceptedalgorithms", "algorithms", "hostbasedkeytypes"),
    _kw("pubkeyacceptedalgorithms", "algorithms", "pubkeyacceptedkeytypes"),
    _kw("ignoreunknown", "string"),
    _kw("proxyjump", "proxyjump"),
    _kw("securitykeyprovider", "string"),
    _kw("knownhostscommand", "command"),
    _kw("requiredrsasize", "int"),
    _kw("enableescapecommandline", "flag"),
)

_BY_NAME: Final[dict[str, Keyword]] = {
    name: keyword for keyword in KEYWORDS for name in (keyword.name, *keyword.aliases)
}

# ssh's expansions at run time, by keyword (ssh.c main, load_public_identity_files;
# sshconnect.c expand_proxy_command; ssh_config(5) TOKENS and ENVIRONMENT VARIABLES):
# "~" first, then the "%" tokens, then "${VAR}".
_TILDE_PERCENT_DOLLAR: Final = frozenset(
    {"identityfile", "certificatefile", "controlpath", "identityagent", "userknownhostsfile"}
)
# The tokens of ProxyCommand (and so of ProxyJump's implied command).
_PROXY_TOKENS: Final = frozenset("hknpr")


# --------------------------------------------------------------------------------------
# Lexing, as misc.c does it


def _ascii_lower(text: str) -> str:
    """C's ``tolower`` over a string: ASCII letters only."""
    return text.translate(_LOWER)


def _ascii_upper(text: str) -> str:
    return text.translate(_UPPER)


_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _span(text: str, start: int, chars: str) -> int:
    """``start`` plus C's ``strspn(text + start, chars)``."""
    while start < len(text) and text[start] in chars:
        start += 1
    return start


def _strdelim(text: str | None, split_equals: bool = True) -> tuple[str | None, str | None]:
    """
    misc.c ``strdelim``: the next token of a configuration line and the rest after it
    (None when there is no rest). Splits on white space or one ``=``; a ``"`` starts a
    quoted part that runs to the next ``"``. An unclosed quote gives (None, None).
    """
    if text is None:
        return None, None
    delimiters = _WHITESPACE + '"' + ("=" if split_equals else "")
    at = next((i for i, char in enumerate(text) if char in delimiters), -1)
    if at < 0:
        return text, None
    if text[at] == '"':
        text = text[:at] + text[at + 1 :]
        close = text.find('"', at)
        if close < 0:
            return None, None
        return text[:close], text[_span(text, close + 1, _WHITESPACE) :]
    equals = split_equals and text[at] == "="
    token = text[:at]
    rest_at = _span(text, at + 1, _WHITESPACE)
    if split_equals and not equals and text[rest_at : rest_at + 1] == "=":
        rest_at = _span(text, rest_at + 1, _WHITESPACE)
    return token, text[rest_at:]


def _argv_split(text: str, terminate_on_comment: bool = True) -> list[str] | None:
    """
    misc.c ``argv_split``: split on spaces and tabs; single or double quotes group; a
    backslash escapes a quote, a backslash or (outside quotes) a space, and is kept before
    anything else; a ``#`` starting an argument ends the line. None if a quote is open.
    """
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if terminate_on_comment and text[i] == "#":
            break
        quote = ""
        arg: list[str] = []
        while i < n:
            char = text[i]
            following = text[i + 1] if i + 1 < n else ""
            if char == "\\":
                if following in ("'", '"', "\\") or (not quote and following == " "):
                    i += 1
                    arg.append(following)
                else:
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
        if i >= n and quote:
            return None
        args.append("".join(arg))
    return args


_STRTONUM: Final = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _strtonum(text: str, low: int, high: int) -> tuple[int | None, str]:
    """OpenBSD's ``strtonum``: (value, "") or (None, "invalid" / "too small" / "too large")."""
    match = _STRTONUM.fullmatch(text)
    if match is None:
        return None, "invalid"
    digits = match.group(1)
    negative = digits.startswith("-")
    digits = digits.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 20:
        return None, "too small" if negative else "too large"
    value = -int(digits) if negative else int(digits)
    if value < low:
        return None, "too small"
    if value > high:
        return None, "too large"
    return value, ""


def _a2port(text: str) -> int:
    """misc.c ``a2port``: 0-65535, or a TCP service name from ``/etc/services``; -1 if neither."""
    value, _ = _strtonum(text, 0, 65535)
    if value is not None:
        return value
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError):
        return -1


_TIME_PART: Final = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_TIME_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _convtime(text: str) -> int:
    """misc.c ``convtime``: seconds, from ``90``, ``1h30m``, ``2d`` ...; -1 if invalid."""
    if not text:
        return -1
    total, at = 0, 0
    while at < len(text):
        match = _TIME_PART.match(text, at)
        if match is None:
            return -1
        sign, digits = match.groups()
        digits = digits.lstrip("0") or "0"
        if len(digits) > 19:
            return -1
        seconds = int(digits)
        if sign == "-" and seconds:
            return -1
        at = match.end()
        unit = text[at : at + 1].lower()
        multiplier = 1
        if unit:
            if unit not in _TIME_UNITS:
                return -1
            multiplier = _TIME_UNITS[unit]
            at += 1
        if seconds > _INT_MAX // multiplier:
            return -1
        total += seconds * multiplier
        if total > _INT_MAX:
            return -1
    return total


_SCALE: Final = "BKMGTPE"


def _scan_scaled(text: str) -> tuple[int | None, str]:
    """
    OpenBSD's ``scan_scaled`` (``RekeyLimit 1G``): (bytes, "") or (None, the
    ``strerror`` ssh prints).
    """
    invalid, out_of_range = "Invalid argument", "Numerical result out of range"
    at = _span(text, 0, " \t\n\v\f\r")
    sign = 0
    while text[at : at + 1] in ("-", "+") and at < len(text):
        if sign:
            return None, invalid
        sign = -1 if text[at] == "-" else 1
        at += 1
    whole, fraction, fraction_digits, digits = 0, 0, 0, 0
    while at < len(text) and ((text[at].isdigit() and text[at].isascii()) or text[at] == "."):
        if text[at] == ".":
            if fraction_digits:
                return None, invalid
            fraction_digits = 1
        elif fraction_digits:
            if fraction_digits < 20:
                fraction_digits += 1
                fraction = fraction * 10 + int(text[at])
        else:
            digits += 1
            if digits >= 21:
                return None, out_of_range
            whole = whole * 10 + int(text[at])
            if whole > _LLONG_MAX:
                return None, out_of_range
        at += 1
    if sign:
        whole *= sign
    if at == len(text):
        return whole, ""
    unit = text[at].upper()
    if unit not in _SCALE or (text[at + 1 : at + 2].isalnum() and text[at + 1].isascii()):
        return None, invalid
    factor = 1024 ** _SCALE.index(unit)
    if abs(whole) > _LLONG_MAX // factor:
        return None, out_of_range
    whole *= factor
    while fraction >= _LLONG_MAX // factor:
        fraction //= 10
        fraction_digits -= 1
    fraction *= factor
    for _ in range(fraction_digits - 1):
        fraction //= 10
    return (whole - fraction if sign == -1 else whole + fraction), ""


# --------------------------------------------------------------------------------------
# Patterns, as match.c matches them


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def match_pattern(text: str, pattern: str) -> bool:
    """match.c ``match_pattern``: ``*`` and ``?`` wildcards, case-sensitive, whole string."""
    return _pattern_regex(pattern).fullmatch(text) is not None


def match_pattern_list(text: str, patterns: str, lower: bool) -> int:
    """
    match.c ``match_pattern_list``: comma-separated patterns, each possibly ``!``-negated.
    1 if one matched, -1 if a negated one matched (which decides), 0 if none matched.
    """
    positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= 1023:
            # match.c copies each subpattern into a 1,024-byte buffer: longer is "no match".
            return 0
        if match_pattern(text, _ascii_lower(sub) if lower else sub):
            if negated:
                return -1
            positive = 1
    return positive


def _match_hostname(host: str, patterns: str) -> bool:
    """match.c ``match_hostname``, as ``Match host`` uses it: both sides lower-cased."""
    return match_pattern_list(_ascii_lower(host), patterns, True) == 1


# --------------------------------------------------------------------------------------
# Expansions: ~, %tokens and ${VAR}


def _percent_expand(
    text: str, tokens: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> str:
    """
    misc.c ``vdollar_percent_expand``: ``%x`` from ``tokens`` (``%%`` is ``%``), and, when
    ``environ`` is given, ``${VAR}``.

    :raises ValueError: with misc.c's words, for an unknown token, a ``%`` at the end, or
        a missing, empty or unclosed ``${VAR}``.
    """
    out: list[str] = []
    missing: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if environ is not None and text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise ValueError(f"environment variable '{text[i + 2 :]}' missing closing '}}'")
            name = text[i + 2 : end]
            if not name:
                raise ValueError("zero-length environment variable")
            if name in environ:
                out.append(environ[name])
            else:
                missing.append(name)
            i = end + 1
            continue
        if char != "%" or not tokens:
            out.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "%":
            out.append("%")
        elif not following:
            raise ValueError("invalid format")
        elif following in tokens:
            out.append(tokens[following])
        else:
            raise ValueError(f"unknown key %{following}")
        i += 2
    if missing:
        raise ValueError(f"env var ${{{missing[0]}}} has no value")
    return "".join(out)


def _dollar_expand(text: str, environ: Mapping[str, str]) -> str:
    return _percent_expand(text, {}, environ)


def _tilde_expand(path: str, home: str) -> str:
    """
    misc.c ``tilde_expand``: ``~`` and ``~/...`` from ``home`` (ssh takes the password
    database's home, not ``$HOME``), ``~user/...`` from the password database.

    :raises ValueError: ``No such user``.
    """
    if not path.startswith("~"):
        return path
    rest = path[1:]
    if not rest or rest.startswith("/"):
        directory, tail = home, rest.lstrip("/")
    else:
        user, _, tail = rest.partition("/")
        tail = tail.lstrip("/")
        try:
            import pwd

            directory = pwd.getpwnam(user).pw_dir
        except (KeyError, ImportError):
            raise ValueError(f"No such user {user}") from None
    slash = "" if directory.endswith("/") else "/"
    return f"{directory}{slash}{tail}"


# --------------------------------------------------------------------------------------
# Forwards, as readconf.c parse_forward reads them


class Forward(NamedTuple):
    """
    One ``LocalForward``, ``RemoteForward`` or ``DynamicForward`` as ``ssh`` holds it
    (``struct Forward``). A port is -2 (``PORT_STREAMLOCAL``) where that end is a Unix
    socket path; a dynamic forward's ``connect_host`` is ``"socks"``.
    """

    listen_host: str | None
    listen_port: int
    listen_path: str | None
    connect_host: str | None
    connect_port: int
    connect_path: str | None


def _fwd_fields(spec: str) -> list[tuple[str, bool]] | None:
    """readconf.c ``parse_fwd_field``, up to 4 fields: (text, looks like a path)."""
    fields: list[tuple[str, bool]] = []
    at: int | None = 0
    while at is not None and len(fields) < 4:
        if at >= len(spec):
            at = None
            break
        if spec[at] == "[":
            end = spec.find("]", at + 1)
            if end < 0 or spec[end + 1 : end + 2] not in (":", ""):
                break
            text = spec[at + 1 : end]
            fields.append((text, "/" in text))
            at = end + 2 if end + 1 < len(spec) else len(spec)
            continue
        chars: list[str] = []
        is_path = False
        i = at
        while i < len(spec):
            char = spec[i]
            if char == "\\":
                if i + 1 >= len(spec):
                    return None
                chars.append(spec[i + 1])
                i += 2
                continue
            if char == ":":
                break
            if char == "/":
                is_path = True
            chars.append(char)
            i += 1
        fields.append(("".join(chars), is_path))
        at = i + 1 if i < len(spec) else len(spec)
    if at is not None and at < len(spec):
        return None  # trailing garbage: parse_forward fails
    return fields


def parse_forward(
    spec: str, *, dynamic: bool, remote: bool, environ: Mapping[str, str]
) -> Forward | None:
    """
    readconf.c ``parse_forward``: ``[listen_host:]port:host:hostport``, the Unix-socket
    forms, and (``dynamic``) ``[listen_host:]port``; ``${VAR}`` expanded first. None when
    ssh would say "Bad forwarding specification".
    """
    try:
        text = _dollar_expand(spec, environ)
    except ValueError:
        return None
    text = text[_span(text, 0, " \t\n\v\f\r") :]
    fields = _fwd_fields(text)
    if fields is None:
        return None
    count = len(fields)
    listen_host = listen_path = connect_host = connect_path = None
    listen_port = connect_port = 0
    if count == 1:
        ((arg0, path0),) = fields
        if path0:
            listen_path, listen_port = arg0, _PORT_STREAMLOCAL
        else:
            listen_port = _a2port(arg0)
        connect_host = "socks"
    elif count == 2:
        (arg0, path0), (arg1, path1) = fields
        if path0 and path1:
            listen_path, listen_port = arg0, _PORT_STREAMLOCAL
            connect_path, connect_port = arg1, _PORT_STREAMLOCAL
        elif path1:
            listen_port = _a2port(arg0)
            connect_path, connect_port = arg1, _PORT_STREAMLOCAL
        else:
            listen_host, listen_port, connect_host = arg0, _a2port(arg1), "socks"
    elif count == 3:
        (arg0, path0), (arg1, _), (arg2, path2) = fields
        if path0:
            listen_path, listen_port = arg0, _PORT_STREAMLOCAL
            connect_host, connect_port = arg1, _a2port(arg2)
        elif path2:
            listen_host, listen_port = arg0, _a2port(arg1)
            connect_path, connect_port = arg2, _PORT_STREAMLOCAL
        else:
            listen_port = _a2port(arg0)
            connect_host, connect_port = arg1, _a2port(arg2)
    elif count == 4:
        listen_host, listen_port = fields[0][0], _a2port(fields[1][0])
        connect_host, connect_port = fields[2][0], _a2port(fields[3][0])
    else:
        return None
    if dynamic:
        if count not in (1, 2):
            return None
    else:
        if count not in (3, 4) and connect_path is None and listen_path is None:
            return None
        if connect_port <= 0 and connect_path is None:
            return None
    if (listen_port < 0 and listen_path is None) or (not remote and listen_port == 0):
        return None
    for host in (connect_host, listen_host):
        if host is not None and len(host.encode("utf-8", "surrogateescape")) >= _NI_MAXHOST:
            return None
    for path in (connect_path, listen_path):
        if path is not None and len(path.encode("utf-8", "surrogateescape")) >= _PATH_MAX_SUN:
            return None
    return Forward(listen_host, listen_port, listen_path, connect_host, connect_port, connect_path)


# --------------------------------------------------------------------------------------
# Host and port syntax (misc.c hpdelim, parse_user_host_port, parse_uri)


def _hpdelim(text: str) -> tuple[str | None, str | None]:
    """misc.c ``hpdelim``: (host part, rest or None); (None, None) on a syntax error."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None, None
        at = end + 1
    else:
        at = next((i for i, c in enumerate(text) if c in ":/"), len(text))
    if at == len(text):
        return text, None
    if text[at] == ":":
        return text[:at], text[at + 1 :]
    return None, None


def _clean_hostname(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _valid_domain(name: str, lower: bool) -> tuple[str | None, str]:
    """
    misc.c ``valid_domain``: (the name, lower-cased if asked, without a final dot), or
    (None, why not).
    """
    if not name:
        return None, "empty domain name"
    if not (name[0].isascii() and name[0].isalnum()):
        return None, f'domain name "{name[:100]}" starts with invalid character'
    checked = _ascii_lower(name)
    if ".." in checked:
        shown = checked if lower else name
        return None, f'domain name "{shown[:100]}" contains consecutive separators'
    if any(not (c.isascii() and (c.isalnum() or c in ".-_")) for c in checked):
        shown = checked if lower else name
        return None, f'domain name "{shown[:100]}" contains invalid characters'
    result = checked if lower else name
    return (result[:-1] if result.endswith(".") else result), ""


def _urldecode(text: str) -> str | None:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "+":
            out.append(" ")
        elif char == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) < 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                return None
            out.append(chr(int(pair, 16)))
            i += 2
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _parse_ssh_uri(uri: str) -> tuple[int, str | None, str | None, int]:
    """
    misc.c ``parse_ssh_uri``: (0, user, host, port) for ``ssh://[user@]host[:port]``
    (port -1 when absent), 1 when ``uri`` is no ssh URI, -1 when it is a bad one.
    """
    if not uri.startswith("ssh://"):
        return 1, None, None, -1
    rest = uri[len("ssh://") :]
    user = None
    at = rest.find("@")
    if at >= 0:
        user_part = rest[:at].split(";", 1)[0]
        if not user_part:
            return -1, None, None, -1
        user = _urldecode(user_part)
        if user is None:
            return -1, None, None, -1
        rest = rest[at + 1 :]
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return -1, None, None, -1
        cut = end + 1
    else:
        cut = next((i for i, c in enumerate(rest) if c in ":/"), len(rest))
    host_part, delimiter, tail = rest[:cut], rest[cut : cut + 1], rest[cut + 1 :]
    if delimiter not in ("", ":", "/") or not host_part:
        return -1, None, None, -1
    host = _clean_hostname(host_part)
    if _valid_domain(host, False)[0] is None:
        return -1, None, None, -1
    port = -1
    if tail and delimiter == ":":
        port_text, slash, tail = tail.partition("/")
        port = _a2port(port_text)
        if port <= 0:
            return -1, None, None, -1
        if not slash:
            tail = ""
    if tail:
        return -1, None, None, -1  # a path is not allowed
    return 0, user, host, port


def _parse_user_host_port(text: str) -> bool:
    """misc.c ``parse_user_host_port``, as a syntax check of one ProxyJump hop."""
    user, at, host_port = text.rpartition("@")
    if at and not user:
        return False
    host, port = _hpdelim(host_port)
    if not host:
        return False
    return not port or _a2port(port) > 0


def _jump_parts(spec: str) -> tuple[str | None, str | None, int, str | None] | None:
    """
    readconf.c ``parse_jump``: the last hop of a ProxyJump list (ssh connects to it
    first) as (user, host, port, the earlier hops), or None if any hop is malformed.
    """
    text = spec.split("#", 1)[0].rstrip(_WHITESPACE + "\f\v")
    hops = text.split(",")
    first: tuple[str | None, str | None, int] | None = None
    for hop in reversed(hops):
        status, user, host, port = _parse_ssh_uri(hop)
        if status == -1 or (status == 1 and not _parse_user_host_port(hop)):
            return None
        if first is None:
            if status == 1:
                user_text, at, host_port = hop.rpartition("@")
                host_text, port_text = _hpdelim(host_port)
                user = user_text if at else None
                host = _clean_hostname(host_text or "")
                port = _a2port(port_text) if port_text else -1
            first = (user, host, port)
    assert first is not None
    comma = spec.rfind(",")
    extra = spec[:comma] if comma > 0 else None
    return first[0], first[1], first[2], extra


# --------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class ConfigEntry:
    """
    One line that gave a keyword its value (or, for the keywords that accumulate, added
    to it), in the order ``ssh`` applied them.

    :ivar keyword: the keyword's lower-case name as ``ssh -G`` prints it (an alias such
        as ``ChallengeResponseAuthentication`` becomes its keyword,
        ``kbdinteractiveauthentication``).
    :ivar values: the arguments as ssh split them (quotes removed), not yet expanded;
        for ``ProxyCommand``, ``LocalCommand``, ``RemoteCommand`` and
        ``KnownHostsCommand`` the rest of the line as written.
    :ivar file: the file (``command-line`` for a ``-o`` option).
    :ivar line: its line number (0 for a ``-o`` option).
    :ivar written: the keyword as the file spells it.
    """

    keyword: str
    values: tuple[str, ...]
    file: str
    line: int
    written: str

    @property
    def where(self) -> str:
        """``FILE line N``, as ssh names a line."""
        return f"{self.file} line {self.line}"


@dataclass(frozen=True)
class IgnoredLine:
    """
    A line ``ssh`` accepts and ignores: a deprecated or unsupported keyword, or an unknown
    one that ``IgnoreUnknown`` covers.

    :ivar reason: ssh's words (``Deprecated option``, ``Unsupported option``,
        ``Ignored unknown option``).
    """

    keyword: str
    file: str
    line: int
    reason: str

    @property
    def message(self) -> str:
        """The line ssh logs for it (at ``-v`` for a deprecated or unknown-ignored one)."""
        return f'{self.file} line {self.line}: {self.reason} "{self.keyword}"'


@dataclass(frozen=True)
class ResolvedConfig:
    """
    What the configuration files give one destination, as ``ssh`` resolves it.

    :ivar destination: the destination as given.
    :ivar original_host: the host name from the destination (ssh's ``%n``).
    :ivar host: the host ssh connects to: ``HostName`` with ``%h`` expanded, lower-cased
        unless it is an address (ssh's ``%h``, what ``ssh -G`` prints as ``hostname``).
    :ivar user: the remote user (``User``, the destination's, else the local user).
    :ivar port: the port (``Port``, the destination's, else 22).
    :ivar entries: the lines that took effect, in the order ssh applied them.
    :ivar ignored: the lines ssh ignores (deprecated, unsupported, ``IgnoreUnknown``).
    :ivar files: the files read, in order (the second pass's files again when there was
        one).
    :ivar final_pass: whether a second pass ran (``Match final``, or
        ``CanonicalizeHostname`` not ``no``).
    """

    destination: str
    original_host: str
    host: str
    user: str
    port: int
    entries: tuple[ConfigEntry, ...]
    ignored: tuple[IgnoredLine, ...]
    files: tuple[str, ...]
    final_pass: bool
    home: str
    local_user: str
    uid: int
    local_hostname: str
    environ: Mapping[str, str] = field(repr=False)

    def get_all(self, keyword: str) -> tuple[ConfigEntry, ...]:
        """Every entry for ``keyword`` (any spelling, any case), in order."""
        name = _canonical(keyword)
        return tuple(entry for entry in self.entries if entry.keyword == name)

    def get(self, keyword: str) -> ConfigEntry | None:
        """The first entry for ``keyword``: for a single-valued keyword, its value."""
        found = self.get_all(keyword)
        return found[0] if found else None

    def value(self, keyword: str) -> str | None:
        """The first argument of the first entry for ``keyword``, or None when unset."""
        entry = self.get(keyword)
        return entry.values[0] if entry is not None and entry.values else None

    def values(self, keyword: str) -> tuple[str, ...]:
        """
        ``keyword``'s values as ssh ends up with them: a single-valued keyword's arguments;
        for one that accumulates (``IdentityFile``, ``CertificateFile``, the forwards,
        ``SendEnv``) every entry's, with ``SendEnv -PATTERN`` removing what came before.
        """
        name = _canonical(keyword)
        found = self.get_all(name)
        if not found:
            return ()
        if name == "sendenv":
            names: list[str] = []
            for entry in found:
                for value in entry.values:
                    if value.startswith("-"):
                        names = [n for n in names if not match_pattern(n, value[1:])]
                    else:
                        names.append(value)
            return tuple(names)
        if _BY_NAME[name].kind == "forward":
            # As ssh reads two arguments: "8080 localhost:80" is -R's 8080:localhost:80.
            return tuple(_forward_spec(entry.values) for entry in found)
        if _BY_NAME[name].kind in _ACCUMULATING:
            return tuple(value for entry in found for value in entry.values)
        return found[0].values

    def not_in(self, known: Collection[str]) -> tuple[ConfigEntry, ...]:
        """
        The entries whose keyword is not in ``known`` (lower-case names): for a caller that
        implements some keywords, the ones ssh would apply and it ignores.
        """
        wanted = {_canonical(name) for name in known}
        return tuple(entry for entry in self.entries if entry.keyword not in wanted)

    def tokens(self, keyword: str = "") -> dict[str, str]:
        """
        The ``%`` tokens as ssh sets them after reading the configuration (ssh.c
        ``DEFAULT_CLIENT_PERCENT_EXPAND_ARGS``): ``%C %L %i %k %l %n %p %d %h %r %u``; for
        ``ProxyCommand`` and ``ProxyJump`` only ``%h %k %n %p %r`` (sshconnect.c).
        """
        alias = self.value("hostkeyalias")
        full = {
            "C": _connection_hash(self.local_hostname, self.host, str(self.port), self.user),
            "L": self.local_hostname.split(".", 1)[0],
            "i": str(self.uid),
            "k": _ascii_lower(alias) if alias is not None else self.original_host,
            "l": self.local_hostname,
            "n": self.original_host,
            "p": str(self.port),
            "d": self.home,
            "h": self.host,
            "r": self.user,
            "u": self.local_user,
        }
        if _canonical(keyword) in ("proxycommand", "proxyjump"):
            return {key: value for key, value in full.items() if key in _PROXY_TOKENS}
        return full

    def expanded(self, keyword: str, *, tun_device: str = "NONE") -> tuple[str, ...]:
        """
        ``keyword``'s values with the expansions ssh applies to that keyword before using
        them: ``~``, ``%`` tokens and ``${VAR}`` for ``IdentityFile``,
        ``CertificateFile``, ``ControlPath``, ``IdentityAgent``, ``UserKnownHostsFile``
        and a ``ForwardAgent`` path; ``%`` tokens for ``RemoteCommand``, ``LocalCommand``
        (with ``%T``, ``tun_device``), ``ProxyCommand`` and ``ProxyJump``; ``~`` for
        ``GlobalKnownHostsFile``. Other keywords come back as they are.

        :raises SSHConfigError: naming the line, for an unknown ``%`` token or an unset
            ``${VAR}`` (ssh stops there too: "invalid environment variable expansion").
        """
        name = _canonical(keyword)
        if name == "sendenv" or _BY_NAME[name].kind == "forward":
            return self.values(name)
        found = self.get_all(name)
        if _BY_NAME[name].kind not in _ACCUMULATING:
            found = found[:1]
        return tuple(
            self.expand_value(entry, value, tun_device=tun_device)
            for entry in found
            for value in entry.values
        )

    def expand_value(self, entry: ConfigEntry, value: str, *, tun_device: str = "NONE") -> str:
        """One value of ``entry`` expanded as :meth:`expanded` expands its keyword's."""
        name = entry.keyword
        try:
            if name in _TILDE_PERCENT_DOLLAR or (name == "forwardagent" and not _is_flag(value)):
                return _percent_expand(
                    _tilde_expand(value, self.home), self.tokens(name), self.environ
                )
            if name in ("remotecommand", "proxycommand", "proxyjump"):
                return _percent_expand(value, self.tokens(name))
            if name == "localcommand":
                return _percent_expand(value, {**self.tokens(name), "T": tun_device})
            if name == "globalknownhostsfile":
                return _tilde_expand(value, self.home)
        except ValueError as error:
            raise SSHConfigError(_vis(f"{entry.where}: {entry.written}: {error}")) from None
        return value

    def forwards(self, keyword: str) -> tuple[Forward, ...]:
        """
        ``LocalForward``, ``RemoteForward`` or ``DynamicForward`` as ssh parsed them, a
        Unix socket path with its ``%`` tokens expanded (ssh.c main). ``ClearAllForwardings
        yes`` is the caller's to apply, as ssh applies it to command-line forwards too.
        """
        name = _canonical(keyword)
        result: list[Forward] = []
        for entry in self.get_all(name):
            forward = _entry_forward(entry, self.environ)
            if forward is None:  # pragma: no cover - checked when the line was read
                continue
            tokens = self.tokens(name)
            try:
                forward = forward._replace(
                    listen_path=_maybe_expand(forward.listen_path, tokens),
                    connect_path=_maybe_expand(forward.connect_path, tokens),
                )
            except ValueError as error:
                message = _vis(f"{entry.where}: {entry.written}: {error}")
                raise SSHConfigError(message) from None
            result.append(forward)
        return tuple(result)


def _maybe_expand(path: str | None, tokens: Mapping[str, str]) -> str | None:
    return None if path is None else _percent_expand(path, tokens)


def _entry_forward(entry: ConfigEntry, environ: Mapping[str, str]) -> Forward | None:
    dynamic = entry.keyword == "dynamicforward" or len(entry.values) == 1
    return parse_forward(
        _forward_spec(entry.values),
        dynamic=dynamic,
        remote=entry.keyword == "remoteforward",
        environ=environ,
    )


def _forward_spec(values: Sequence[str]) -> str:
    # readconf.c builds "arg:arg2" in a 256-byte buffer (snprintf truncates).
    spec = values[0] if len(values) == 1 else f"{values[0]}:{values[1]}"
    return spec.encode("utf-8", "surrogateescape")[:255].decode("utf-8", "surrogateescape")


def _vis(message: str) -> str:
    """
    A message as ssh's log shows it (log.c, strnvis with ``VIS_SAFE | VIS_OCTAL``): a
    backslash doubled, other bytes outside printable ASCII as ``\\ooo``. Unlike ssh, a
    backspace, bell or carriage return is escaped too, so none reaches the terminal.
    """
    out: list[str] = []
    for byte in message.encode("utf-8", "surrogateescape"):
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F or byte in (0x09, 0x0A):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def _is_flag(value: str) -> bool:
    return _ascii_lower(value) in dict(_FLAG)


def _is_true(value: str) -> bool:
    return dict(_FLAG).get(_ascii_lower(value)) == 1


def _canonical(keyword: str) -> str:
    name = _ascii_lower(keyword)
    found = _BY_NAME.get(name)
    if found is None:
        raise KeyError(f"{keyword!r} is no ssh_config keyword ssh {OPENSSH_VERSION} knows")
    return found.name


def _connection_hash(local_host: str, host: str, port: str, user: str) -> str:
    """readconf.c ``ssh_connection_hash``: ``%C``, SHA-1 of ``%l%h%p%r`` in hex."""
    data = (local_host + host + port + user).encode("utf-8", "surrogateescape")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


_ACCUMULATING: Final = frozenset({"identityfile", "certificatefile", "forward", "sendenv"})


# --------------------------------------------------------------------------------------
# Reading


@dataclass
class _Context:
    """What ``ssh`` knows before reading: the user, the destination, the environment."""

    host_arg: str
    home: str
    local_user: str
    uid: int
    local_hostname: str
    environ: Mapping[str, str]
    system_dir: str
    run: Callable[[str], int] | None


class _Active:
    """readconf.c's ``*activep``: shared by a file and the files it includes."""

    def __init__(self, value: bool) -> None:
        self.value = value


# Bits of read_config_file's flags (readconf.h SSHCONF_*).
_CHECKPERM: Final = 1
_USERCONF: Final = 2
_FINAL: Final = 4
_NEVERMATCH: Final = 8


class _Reader:
    """
    One run of ssh's configuration reading: ``process_config_line`` and
    ``read_config_file_depth`` with ``Options`` reduced to what was set and by which line.
    """

    def __init__(self, context: _Context) -> None:
        self.context = context
        self.entries: list[ConfigEntry] = []
        self.ignored: list[IgnoredLine] = []
        self.files: list[str] = []
        self.problems: list[tuple[str, int, str]] = []
        # What is set, by slot: a keyword's name, or "name/part" for the keywords whose
        # parts are set independently (readconf.c keeps them in separate fields).
        self.set: set[str] = set()
        self.ignored_unknown: str | None = None
        # Values kept the way ssh keeps them, for first-wins and de-duplication.
        self.hostname: str | None = None
        self.user: str | None = None
        self.port: int = -1
        self.host_key_alias: str | None = None
        self.identity_files: list[tuple[str, bool]] = []
        self.certificate_files: list[tuple[str, bool]] = []
        self.local_forwards: list[Forward] = []
        self.remote_forwards: list[Forward] = []
        self.want_final_pass = False
        self.canonicalize_hostname = 0

    # -- files

    def read_file(
        self, path: str, host: str, flags: int, active: _Active, depth: int, *, final: bool
    ) -> OSError | None:
        """readconf.c ``read_config_file_depth``: the error if the file cannot be opened."""
        if depth < 0 or depth > _MAX_INCLUDE_DEPTH:
            raise _Fatal("Too many recursive configuration includes")
        try:
            # os.open, not open(): ssh's fopen() opens a directory, which then reads as
            # an empty file (getline fails), where Python's open() refuses it.
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            return error
        try:
            info = os.fstat(descriptor)
            if flags & _CHECKPERM and (info.st_uid not in (0, os.getuid()) or info.st_mode & 0o022):
                raise _Fatal(f"Bad owner or permissions on {path}")
            data = b"" if stat.S_ISDIR(info.st_mode) else _read_all(descriptor)
        finally:
            os.close(descriptor)
        self.files.append(path)
        text = data.decode("utf-8", "surrogateescape")
        bad = 0
        # getline() splits on "\n" only; a NUL ends the line for the C string functions.
        for number, line in enumerate(text.split("\n"), start=1):
            line = line.split("\0", 1)[0]
            try:
                self.process_line(line, path, number, host, flags, active, depth, final=final)
            except _BadLine as problem:
                bad += 1
                self.problems.append((path, number, str(problem)))
        if bad:
            raise _Fatal(f"{path}: terminating, {bad} bad configuration options")
        return None

    # -- one line

    def process_line(
        self,
        line: str,
        filename: str,
        linenum: int,
        host: str,
        flags: int,
        active: _Active | None,
        depth: int,
        *,
        final: bool,
    ) -> None:
        """readconf.c ``process_config_line_depth``; ``active`` None for a ``-o`` option."""
        command_line = active is None
        if active is None:
            active = _Active(True)
        where = f"{filename} line {linenum}"
        # Strip trailing white space (and \f); C's loop never looks at the first character.
        if not line:
            return
        line = line[0] + line[1:].rstrip(_WHITESPACE + "\f")
        keyword, rest = _strdelim(line)
        if keyword is None:
            return
        if keyword == "":
            keyword, rest = _strdelim(rest)
        if keyword is None or not keyword or keyword[0] in "\n#":
            return
        written = keyword
        keyword = _ascii_lower(keyword)
        if rest is not None:
            rest = rest[_span(rest, 0, _WHITESPACE) :]
        if not rest:
            raise _BadLine(f'{where}: no argument after keyword "{keyword}"')
        found = _BY_NAME.get(keyword)
        unknown_ignored = False
        if found is None:
            if (
                self.ignored_unknown is not None
                and match_pattern_list(keyword, self.ignored_unknown, True) == 1
            ):
                unknown_ignored = True
            else:
                # The one message with a colon after the file name (readconf.c parse_token).
                message = f"{filename}: line {linenum}: Bad configuration option: {keyword}"
                if _argv_split(rest) is None:
                    message += f"\n{where}: invalid quotes"
                raise _BadLine(message)
        args = _argv_split(rest)
        if args is None:
            raise _BadLine(f"{where}: invalid quotes")
        if unknown_ignored:
            self.ignored.append(IgnoredLine(keyword, filename, linenum, "Ignored unknown option"))
            return
        assert found is not None
        state = _LineState(self, found, keyword, written, args, rest, filename, linenum)
        state.active = active.value
        state.user_conf = bool(flags & _USERCONF)
        if found.kind in ("host", "match", "include"):
            if command_line:
                what = "Include" if found.kind == "include" else "Host"
                raise _BadLine(f"{what} directive not supported as a command-line option")
            if found.kind == "host":
                self.host_line(state, host, flags, active)
            elif found.kind == "match":
                self.match_line(state, host, flags, active, final=final)
            else:
                self.include_line(state, host, flags, active, depth, final=final)
        else:
            _HANDLERS[found.kind](state)
        if state.remaining():
            raise _BadLine(f"{where}: keyword {keyword} extra arguments at end of line")

    # -- Host, Match, Include

    def host_line(self, state: _LineState, host: str, flags: int, active: _Active) -> None:
        """readconf.c, ``case oHost``: first match wins, a matching ``!pattern`` vetoes."""
        active.value = False
        while (arg := state.next()) is not None:
            if not arg:
                raise _BadLine(f"{state.where}: keyword {state.keyword} empty argument")
            if flags & _NEVERMATCH:
                state.consume()
                break
            negated = arg.startswith("!")
            if match_pattern(host, arg[1:] if negated else arg):
                if negated:
                    active.value = False
                    state.consume()
                    break
                active.value = True

    def match_line(
        self, state: _LineState, host_arg: str, flags: int, active: _Active, *, final: bool
    ) -> None:
        """readconf.c, ``case oMatch`` and ``match_cfg_line``."""
        try:
            result, rest = self.match_criteria(state, host_arg, final=final)
        except _BadLine as problem:
            # ssh logs the reason, then "FILE line N: Bad Match condition".
            raise _BadLine(f"{state.where}: Bad Match condition: {problem}") from None
        active.value = False if flags & _NEVERMATCH else result
        if not rest:
            state.consume()

    def match_criteria(
        self, state: _LineState, host_arg: str, *, final: bool
    ) -> tuple[bool, str | None]:
        context = self.context
        port = self.port if self.port > 0 else 22
        ruser = self.user if self.user is not None else context.local_user
        if final:
            host = self.hostname or host_arg
        elif self.hostname is not None:
            host = _percent_expand(self.hostname, {"h": host_arg})
        else:
            host = host_arg
        rest: str | None = state.rest
        result = True
        attributes = 0
        while True:
            attrib, rest = _strdelim(rest)
            if attrib is None or not attrib:
                break
            if attrib.startswith("#"):
                rest = None
                break
            original = attrib
            negate = attrib.startswith("!")
            if negate:
                attrib = attrib[1:]
            name = _ascii_lower(attrib)
            if name == "all":
                following, after = _strdelim(rest)
                if attributes > 1 or (following and not following.startswith("#")):
                    raise _BadLine(f"'{original}' cannot be combined with other Match attributes")
                rest = None if following is not None and following.startswith("#") else after
                if result:
                    result = not negate
                return result, rest
            attributes += 1
            if name in ("canonical", "final"):
                if name == "final":
                    self.want_final_pass = True
                if final == negate:
                    result = False
                continue
            arg, rest = _strdelim(rest)
            if arg is None or not arg or arg.startswith("#"):
                raise _BadLine(f"Missing Match criteria for {attrib}")
            matched: bool | None
            if name == "host":
                matched = _match_hostname(host, arg)
            elif name == "originalhost":
                matched = _match_hostname(context.host_arg, arg)
            elif name == "user":
                matched = match_pattern_list(ruser, arg, False) == 1
            elif name == "localuser":
                matched = match_pattern_list(context.local_user, arg, False) == 1
            elif name == "exec":
                matched = self.match_exec(state, arg, host, port, ruser, skip=not result)
                if matched is None:
                    continue
            else:
                raise _BadLine(f"Unsupported Match attribute {attrib}")
            if matched == negate:
                result = False
        if attributes == 0:
            raise _BadLine("One or more attributes required for Match")
        return result, rest

    def match_exec(
        self, state: _LineState, command: str, host: str, port: int, ruser: str, *, skip: bool
    ) -> bool | None:
        """``Match exec``: None when skipped (a criterion before it already failed)."""
        context = self.context
        tokens = {
            "C": _connection_hash(context.local_hostname, host, str(port), ruser),
            "L": context.local_hostname.split(".", 1)[0],
            "d": context.home,
            "h": host,
            "k": self.host_key_alias if self.host_key_alias is not None else host,
            "l": context.local_hostname,
            "n": context.host_arg,
            "p": str(port),
            "r": ruser,
            "u": context.local_user,
            "i": str(context.uid),
        }
        try:
            expanded = _percent_expand(command, tokens)
        except ValueError as error:
            raise _Fatal(f"{state.where}: Match exec: percent_expand: {error}") from None
        if skip:
            return None
        if context.run is None:
            raise _Fatal(
                f'{state.where}: Match exec "{expanded[:100]}" needs a command runner: '
                "pass run=run_in_shell to run it as ssh would"
            )
        status = context.run(expanded)
        if status == -1:
            raise _Fatal(f"{state.where}: match exec '{expanded[:100]}' error")
        return status == 0

    def include_line(
        self,
        state: _LineState,
        host: str,
        flags: int,
        active: _Active,
        depth: int,
        *,
        final: bool,
    ) -> None:
        """readconf.c, ``case oInclude``: globs, read with the including line's state."""
        context = self.context
        while (arg := state.next()) is not None:
            if not arg:
                raise _BadLine(f"{state.where}: keyword {state.keyword} empty argument")
            if arg.startswith("~") and not flags & _USERCONF:
                raise _BadLine(f"{state.where}: bad include path {arg}.")
            if not arg.startswith("/") and not arg.startswith("~"):
                base = "~/.ssh" if flags & _USERCONF else context.system_dir
                arg = f"{base}/{arg}"
            paths = _glob_tilde(arg, context)
            if not paths:
                continue  # "include ... matched no files", at -v
            outer = active.value
            for path in paths:
                inner = flags | _CHECKPERM | (0 if outer else _NEVERMATCH)
                error = self.read_file(path, host, inner, active, depth + 1, final=final)
                # "don't let Match in includes clobber the containing file's Match state"
                active.value = outer
                # A file gone since the glob (or a dangling link) is skipped: ENOENT.
                if error is not None and error.errno != errno.ENOENT:
                    why = error.strerror or str(error)
                    raise _BadLine(f"Can't open user config file {path}: {why}")


def _read_all(descriptor: int) -> bytes:
    """The file's bytes; a read error ends it, as a failing getline() ends ssh's loop."""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def _glob_tilde(pattern: str, context: _Context) -> list[str]:
    """glob(3) with ``GLOB_TILDE``: ``~`` is ``$HOME`` (else the home directory), sorted."""
    if pattern.startswith("~"):
        user, slash, tail = pattern[1:].partition("/")
        if not user:
            directory = context.environ.get("HOME") or context.home
        else:
            try:
                import pwd

                directory = pwd.getpwnam(user).pw_dir
            except (KeyError, ImportError):
                return []
        pattern = directory + slash + tail
    if not _glob.has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    # glob(3) sorts by strcoll; ssh leaves LC_COLLATE at "C": by bytes.
    return sorted(_glob.glob(pattern), key=lambda p: p.encode("utf-8", "surrogateescape"))


class _LineState:
    """The arguments of one line and the reader, as a keyword handler sees them."""

    def __init__(
        self,
        reader: _Reader,
        keyword: Keyword,
        lowered: str,
        written: str,
        args: list[str],
        rest: str,
        filename: str,
        linenum: int,
    ) -> None:
        self.reader = reader
        self.kw = keyword
        # ssh's messages name the keyword lower-cased; an entry keeps it as written.
        self.keyword = lowered
        self.written = written
        self.args = args
        self.at = 0
        self.rest = rest
        self.filename = filename
        self.linenum = linenum
        self.where = f"{filename} line {linenum}"
        self.active = True
        # Whether a user file (not the system file) holds the line: add_identity_file.
        self.user_conf = False

    def next(self) -> str | None:
        if self.at >= len(self.args):
            return None
        self.at += 1
        return self.args[self.at - 1]

    def consume(self) -> None:
        self.at = len(self.args)

    def remaining(self) -> int:
        return len(self.args) - self.at

    def bad(self, message: str) -> _BadLine:
        return _BadLine(f"{self.where}: {message}")

    def record(self, values: Sequence[str], slot: str | None = None) -> None:
        """Set the keyword (or its ``slot``) from this line, if active and not yet set."""
        key = self.kw.name if slot is None else f"{self.kw.name}/{slot}"
        if self.active and key not in self.reader.set:
            self.reader.set.add(key)
            self.append(values)

    def append(self, values: Sequence[str]) -> None:
        self.reader.entries.append(
            ConfigEntry(self.kw.name, tuple(values), self.filename, self.linenum, self.written)
        )

    def required(self, message: str = "Missing argument.") -> str:
        arg = self.next()
        if arg is None or not arg:
            raise self.bad(message)
        return arg


# -- keyword handlers (the cases of process_config_line_depth)


def _multistate(state: _LineState) -> None:
    arg = state.next()
    if arg is None or not arg:
        raise state.bad("missing argument.")
    words = dict(state.kw.multistate)
    value = words.get(_ascii_lower(arg))
    if value is None:
        raise state.bad(f'unsupported option "{arg}".')
    if (
        state.kw.name == "canonicalizehostname"
        and state.active
        and "canonicalizehostname" not in state.reader.set
    ):
        state.reader.canonicalize_hostname = value
    state.record([arg])


def _time(state: _LineState) -> None:
    arg = state.next()
    if arg is None or not arg:
        raise state.bad("missing time value.")
    if arg != "none" and _convtime(arg) == -1:
        raise state.bad("invalid time value.")
    # "none" is -1, which is also "unset": a later line can still set the value.
    if arg != "none":
        state.record([arg])


def _int(state: _LineState) -> None:
    arg = state.next()
    if arg is None or not arg:
        raise state.bad("integer value missing.")
    _, error = _strtonum(arg, 0, _INT_MAX)
    if error:
        raise state.bad(f"integer value {error}.")
    state.record([arg])


def _string(state: _LineState) -> None:
    arg = state.required()
    reader = state.reader
    if state.active and state.kw.name not in reader.set:
        if state.kw.name == "hostname":
            reader.hostname = arg
        elif state.kw.name == "user":
            reader.user = arg
        elif state.kw.name == "hostkeyalias":
            reader.host_key_alias = arg
        elif state.kw.name == "ignoreunknown":
            reader.ignored_unknown = arg
    state.record([arg])


def _algorithms(state: _LineState) -> None:
    # The algorithm names are not checked: they depend on the ssh build.
    state.record([state.required()])


def _port(state: _LineState) -> None:
    arg = state.required()
    port = _a2port(arg)
    if port <= 0:
        raise state.bad(f"Bad port '{arg}'.")
    if state.active and "port" not in state.reader.set:
        state.reader.port = port
    state.record([arg])


def _command(state: _LineState) -> None:
    """``parse_command``: the rest of the line after white space and ``=``, as written."""
    value = state.rest[_span(state.rest, 0, _WHITESPACE + "=") :]
    state.consume()
    state.record([value])


def _proxycommand(state: _LineState) -> None:
    # readconf.c: "Ignore ProxyCommand if ProxyJump already specified"; ssh 9.2 does not
    # count "ProxyJump none" (checked against its ssh -G: the ProxyCommand is kept).
    value = state.rest[_span(state.rest, 0, _WHITESPACE + "=") :]
    state.consume()
    jump = next((e for e in state.reader.entries if e.keyword == "proxyjump"), None)
    if jump is None or _ascii_lower(jump.values[0]) == "none":
        state.record([value])


def _proxyjump(state: _LineState) -> None:
    value = state.rest[_span(state.rest, 0, _WHITESPACE + "=") :]
    if _ascii_lower(value) != "none" and _jump_parts(value) is None:
        raise state.bad(f'Invalid ProxyJump "{value}"')
    state.consume()
    # parse_jump: only when neither ProxyCommand nor ProxyJump is set yet.
    if "proxycommand" not in state.reader.set:
        state.record([value])


def _identityfile(state: _LineState) -> None:
    arg = state.required()
    if not state.active:
        return
    files = (
        state.reader.identity_files
        if state.kw.name == "identityfile"
        else state.reader.certificate_files
    )
    limit = _MAX_IDENTITY_FILES if state.kw.name == "identityfile" else _MAX_CERTIFICATE_FILES
    if len(files) >= limit:
        what = "identity" if state.kw.name == "identityfile" else "certificate"
        raise state.bad(f"Too many {what} files specified (max {limit}).")
    # add_identity_file: a duplicate from the same kind of file (user or system) is skipped.
    key = (arg, state.user_conf)
    if key in files:
        return
    files.append(key)
    state.append([arg])


def _hostfiles(state: _LineState) -> None:
    """``parse_char_array``: the first line's whole list."""
    values = _none_alone_list(state)
    if len(values) > _MAX_HOSTS_FILES and state.active and state.kw.name not in state.reader.set:
        raise state.bad(f"too many {state.keyword} entries.")
    # An empty list ("UserKnownHostsFile # none") leaves it unset, as in readconf.c.
    if values:
        state.record(values)


def _none_alone_list(state: _LineState) -> list[str]:
    values: list[str] = []
    while (arg := state.next()) is not None:
        if not arg:
            raise state.bad(f"keyword {state.keyword} empty argument")
        if _ascii_lower(arg) == "none" and (values or state.remaining()):
            raise state.bad(f'keyword {state.keyword} "none" argument must appear alone.')
        values.append(arg)
    return values


def _logverbose(state: _LineState) -> None:
    values = _none_alone_list(state)
    # ssh 9.2 keeps only the first argument: its loop stops adding once the list holds
    # one (readconf.c, oLogVerbose; its ssh -G prints "logverbose a" for "a b").
    if values:
        state.record(values[:1])


def _canonicaldomains(state: _LineState) -> None:
    values: list[str] = []
    while (arg := state.next()) is not None:
        if not arg:
            raise state.bad(f"keyword {state.keyword} empty argument")
        if _ascii_lower(arg) == "none" and (values or state.remaining()):
            raise state.bad(f'keyword {state.keyword} "none" argument must appear alone.')
        domain, why = _valid_domain(arg, True)
        if domain is None:
            raise state.bad(why)
        values.append(domain)
    if (
        len(values) > _MAX_CANON_DOMAINS
        and state.active
        and "canonicaldomains" not in state.reader.set
    ):
        raise state.bad("too many hostname suffixes.")
    if values:
        state.record(values)


def _permittedcnames(state: _LineState) -> None:
    values: list[str] = []
    while (arg := state.next()) is not None:
        if _ascii_lower(arg) == "none":
            if values or state.remaining():
                raise state.bad(f'keyword {state.keyword} "none" argument must appear alone.')
            values.append("none:")
        elif arg == "*":
            values.append("*:*")
        else:
            lowered = _ascii_lower(arg)
            _, colon, target = lowered.partition(":")
            if not colon or not target:
                raise state.bad(f'Invalid permitted CNAME "{lowered}"')
            values.append(lowered)
    if (
        len(values) > _MAX_CANON_DOMAINS
        and state.active
        and "canonicalizepermittedcnames" not in state.reader.set
    ):
        raise state.bad("too many permitted CNAMEs.")
    if values:
        state.record(values)


def _permitremoteopen(state: _LineState) -> None:
    values: list[str] = []
    while (arg := state.next()) is not None:
        if _ascii_lower(arg) in ("none", "any"):
            if values or state.remaining():
                raise state.bad(f'keyword {state.keyword} "{arg}" argument must appear alone.')
        else:
            host, port = _hpdelim(arg)
            if host is None:
                raise _Fatal(f"{state.where}: missing host in permitremoteopen")
            if port is None or (port != "*" and _a2port(port) <= 0):
                raise _Fatal(f"{state.where}: bad port number in permitremoteopen")
        values.append(arg)
    if not values:
        raise _Fatal(f"{state.where}: missing permitremoteopen specification")
    state.record(values)


def _forward(state: _LineState) -> None:
    arg = state.required()
    remote = state.kw.name == "remoteforward"
    dynamic = state.kw.name == "dynamicforward"
    values = [arg]
    if not dynamic:
        second = state.next()
        if second is None or not second:
            if remote:
                dynamic = True
            else:
                raise state.bad("Missing target argument.")
        else:
            values.append(second)
    forward = parse_forward(
        _forward_spec(values), dynamic=dynamic, remote=remote, environ=state.reader.context.environ
    )
    if forward is None:
        raise state.bad("Bad forwarding specification.")
    if not state.active:
        return
    # add_local_forward / add_remote_forward skip a forward equal to one already there;
    # LocalForward and DynamicForward share one list.
    known = state.reader.remote_forwards if remote else state.reader.local_forwards
    if forward in known:
        return
    known.append(forward)
    state.append(values)


def _sendenv(state: _LineState) -> None:
    values = []
    while (arg := state.next()) is not None:
        if not arg or "=" in arg:
            raise state.bad("Invalid environment name.")
        values.append(arg)
    if state.active and values:
        state.append(values)


def _setenv(state: _LineState) -> None:
    values: list[str] = []
    while (arg := state.next()) is not None:
        if "=" not in arg:
            raise state.bad("Invalid SetEnv.")
        # The first line wins as a whole; within it a repeated name is skipped.
        name = arg.split("=", 1)[0]
        if any(value.split("=", 1)[0] == name for value in values):
            continue
        values.append(arg)
    if values:
        state.record(values)


def _forwardagent(state: _LineState) -> None:
    arg = state.next()
    if arg is None or not arg:
        raise state.bad("missing argument.")
    is_path = not _is_flag(arg)
    if is_path:
        _check_agent_path(state, arg)
    if not state.active:
        return
    # A path means yes and names the socket; readconf.c sets the two independently, each
    # by the first line that gives it ("ForwardAgent no" then a path: the path is kept).
    changed = False
    for slot in ("forwardagent", "forwardagent/path") if is_path else ("forwardagent",):
        if slot not in state.reader.set:
            state.reader.set.add(slot)
            changed = True
    if changed:
        state.append([arg])


def _check_agent_path(state: _LineState, arg: str) -> None:
    try:
        _dollar_expand(arg, state.reader.context.environ)
    except ValueError:
        raise state.bad(f"Invalid environment expansion {arg}.") from None
    if arg.startswith("$") and not arg.startswith("${") and not _valid_env_name(arg[1:]):
        raise state.bad(f"Invalid environment name {arg}.")


def _valid_env_name(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c == "_") for c in name)


def _agentpath(state: _LineState) -> None:
    arg = state.required()
    _check_agent_path(state, arg)
    state.record([arg])


def _addkeystoagent(state: _LineState) -> None:
    arg = state.next()
    second = state.next()
    if arg is None or not arg:
        raise state.bad("missing argument.")
    value = dict(_YESNOASKCONFIRM).get(_ascii_lower(arg), -1)
    if value == 3 and second is not None:
        lifetime = _convtime(second)
        if lifetime == -1:
            raise state.bad("invalid time value.")
    elif value == -1 and second is None:
        if _convtime(arg) == -1:
            raise state.bad("unsupported option")
    elif value == -1 or second is not None:
        raise state.bad("unsupported option")
    state.record([arg] if second is None else [arg, second])


def _rekeylimit(state: _LineState) -> None:
    arg = state.next()
    if arg is None or not arg:
        raise state.bad("Missing argument.")
    if arg != "default":
        amount, why = _scan_scaled(arg)
        if amount is None:
            raise state.bad(f"Bad number '{arg}': {why}")
        if amount != 0 and amount < 16:
            raise state.bad("RekeyLimit too small")
    interval = state.next()
    if interval is not None:
        if not interval:
            raise state.bad("missing time value.")
        if interval != "none" and _convtime(interval) == -1:
            raise state.bad("invalid time value.")
    # The amount and the interval are set independently, each by its first line.
    if state.active and "rekeylimit" not in state.reader.set:
        state.reader.set.add("rekeylimit")
        if interval is not None and interval != "none":
            state.reader.set.add("rekeylimit/interval")
            state.append([arg, interval])
        else:
            state.append([arg])
    elif (
        state.active
        and interval is not None
        and interval != "none"
        and "rekeylimit/interval" not in state.reader.set
    ):
        state.reader.set.add("rekeylimit/interval")
        state.append([arg, interval])


def _escapechar(state: _LineState) -> None:
    arg = state.required()
    raw = arg.encode("utf-8", "surrogateescape")
    if not (
        arg == "none"
        or len(raw) == 1
        or (len(raw) == 2 and raw[0] == ord("^") and 64 <= raw[1] < 128)
    ):
        raise state.bad("Bad escape character.")
    state.record([arg])


def _controlpersist(state: _LineState) -> None:
    arg = state.required("Missing ControlPersist argument.")
    if arg not in ("yes", "no", "true", "false") and _convtime(arg) < 0:
        raise state.bad("Bad ControlPersist argument.")
    state.record([arg])


def _a2tun(text: str) -> bool:
    local, colon, remote = text.partition(":")
    parts = [local, remote] if colon else [local]
    for part in parts:
        if _ascii_lower(part) != "any" and _strtonum(part, 0, _INT_MAX - 2)[0] is None:
            return False
    return True


def _tunneldevice(state: _LineState) -> None:
    arg = state.required()
    if not _a2tun(arg):
        raise state.bad("Bad tun device.")
    state.record([arg])


_IPQOS: Final = {
    "none": _INT_MAX,
    **{f"af{c}{d}": (8 * c + 2 * d) << 2 for c in (1, 2, 3, 4) for d in (1, 2, 3)},
    **{f"cs{n}": n << 5 for n in range(8)},
    "ef": 0xB8,
    "le": 0x04,
    "lowdelay": 0x10,
    "throughput": 0x08,
    "reliability": 0x04,
}


def _parse_ipqos(text: str | None) -> int:
    """misc.c ``parse_ipqos``: a name, or a number 0-255 in C's notation; -1 if neither."""
    if text is None:
        return -1
    if _ascii_lower(text) in _IPQOS:
        return _IPQOS[_ascii_lower(text)]
    match = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if match is None or not text:
        return -1
    sign, digits = match.groups()
    value = int(digits, 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10)
    value = -value if sign == "-" else value
    return value if 0 <= value <= 255 else -1


def _ipqos(state: _LineState) -> None:
    first = state.next()
    if _parse_ipqos(first) == -1:
        raise state.bad(f"Bad IPQoS value: {first if first is not None else '(null)'}")
    second = state.next()
    if second is not None and _parse_ipqos(second) == -1:
        raise state.bad(f"Bad IPQoS value: {second}")
    assert first is not None
    state.record([first] if second is None else [first, second])


_LOG_LEVELS: Final = (
    # ssh 9.2 accepts SILENT and prints it for QUIET (checked with its ssh -G).
    ("SILENT", 0),
    ("QUIET", 0),
    ("FATAL", 1),
    ("ERROR", 2),
    ("INFO", 3),
    ("VERBOSE", 4),
    ("DEBUG", 5),
    ("DEBUG1", 5),
    ("DEBUG2", 6),
    ("DEBUG3", 7),
)
_FACILITIES: Final = (
    "DAEMON",
    "USER",
    "AUTH",
    "AUTHPRIV",
    *(f"LOCAL{n}" for n in range(8)),
)


def _loglevel(state: _LineState) -> None:
    arg = state.next()
    if arg is None or _ascii_upper(arg) not in dict(_LOG_LEVELS):
        shown = arg if arg is not None else "<NONE>"
        raise state.bad(f"unsupported log level '{shown}'")
    state.record([arg])


def _syslogfacility(state: _LineState) -> None:
    arg = state.next()
    if arg is None or _ascii_upper(arg) not in _FACILITIES:
        shown = arg if arg is not None else "<NONE>"
        raise state.bad(f"unsupported log facility '{shown}'")
    # readconf.c sets it whatever block the line is in: no test of *activep there.
    if "syslogfacility" not in state.reader.set:
        state.reader.set.add("syslogfacility")
        state.append([arg])


_STRTOL8: Final = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-7]+)")


def _streamlocalbindmask(state: _LineState) -> None:
    arg = state.required("Missing StreamLocalBindMask argument.")
    match = _STRTOL8.match(arg)
    value = -1
    if match is not None:
        digits = match.group(2).lstrip("0") or "0"
        value = int(digits, 8) if len(digits) < 12 else 0o1000
        if match.group(1) == "-":
            value = -value
    if match is None or value < 0 or value > 0o777:
        raise state.bad("Bad mask.")
    # readconf.c assigns it unconditionally: the last line read wins, in any block.
    state.reader.entries = [e for e in state.reader.entries if e.keyword != "streamlocalbindmask"]
    state.append([arg])


_DIGESTS: Final = ("MD5", "SHA1", "SHA256", "SHA384", "SHA512")


def _fingerprinthash(state: _LineState) -> None:
    arg = state.required()
    if _ascii_upper(arg) not in _DIGESTS:
        raise state.bad(f'Invalid hash algorithm "{arg}".')
    state.record([arg])


def _ignore(state: _LineState) -> None:
    state.consume()
    state.reader.ignored.append(
        IgnoredLine(state.keyword, state.filename, state.linenum, state.kw.ignored_by_ssh)
    )


_HANDLERS: Final[dict[str, Callable[[_LineState], None]]] = {
    "multistate": _multistate,
    "time": _time,
    "int": _int,
    "string": _string,
    "algorithms": _algorithms,
    "port": _port,
    "command": _command,
    "proxycommand": _proxycommand,
    "proxyjump": _proxyjump,
    "identityfile": _identityfile,
    "certificatefile": _identityfile,
    "hostfiles": _hostfiles,
    "logverbose": _logverbose,
    "canonicaldomains": _canonicaldomains,
    "permittedcnames": _permittedcnames,
    "permitremoteopen": _permitremoteopen,
    "forward": _forward,
    "sendenv": _sendenv,
    "setenv": _setenv,
    "forwardagent": _forwardagent,
    "agentpath": _agentpath,
    "addkeystoagent": _addkeystoagent,
    "rekeylimit": _rekeylimit,
    "escapechar": _escapechar,
    "controlpersist": _controlpersist,
    "tunneldevice": _tunneldevice,
    "ipqos": _ipqos,
    "loglevel": _loglevel,
    "syslogfacility": _syslogfacility,
    "streamlocalbindmask": _streamlocalbindmask,
    "fingerprinthash": _fingerprinthash,
    "ignore": _ignore,
}


# --------------------------------------------------------------------------------------
# Resolving one destination


def run_in_shell(command: str) -> int:
    """
    Run a ``Match exec`` command as ssh does (readconf.c ``execute_in_shell``): with
    ``$SHELL -c`` (``/bin/sh`` when unset), stdin and stdout on ``/dev/null``, stderr
    inherited. Returns its exit status, or -1 if a signal ended it.
    """
    shell = os.environ.get("SHELL") or "/bin/sh"
    completed = subprocess.run(
        [shell, "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=False,
    )
    return completed.returncode if completed.returncode >= 0 else -1


def _password_entry() -> tuple[str, str, int]:
    try:
        import pwd

        entry = pwd.getpwuid(os.getuid())
        return entry.pw_name, entry.pw_dir, entry.pw_uid
    except (KeyError, ImportError):
        return os.environ.get("USER", ""), os.path.expanduser("~"), os.getuid()


def _is_addr_fast(name: str) -> bool:
    """ssh.c ``is_addr_fast``."""
    return "%" in name or ":" in name or all(c in "0123456789." for c in name)


def _numeric_address(name: str) -> str | None:
    """
    ssh.c ``resolve_addr``: an address given as such (``AI_NUMERICHOST``, so no lookup),
    in the form ``getnameinfo`` prints; None if ``name`` is not one address.
    """
    try:
        found = socket.getaddrinfo(
            name, 22, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        )
    except (OSError, UnicodeError, ValueError):
        return None
    if len(found) != 1:
        return None
    try:
        host, _ = socket.getnameinfo(found[0][4], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    except OSError:
        return None
    return host


def _final_host(name: str) -> str:
    """ssh.c main after the first pass: an address in canonical form, a name lower-cased."""
    if _is_addr_fast(name) or _numeric_address(name) is not None:
        return _numeric_address(name) or name
    return _ascii_lower(name)


def resolve(
    destination: str,
    *,
    config_file: str | None = None,
    user_file: str | None = None,
    system_file: str = f"{_SSH_DIR}/ssh_config",
    system_dir: str = _SSH_DIR,
    command_line: Sequence[str] = (),
    local_user: str | None = None,
    home: str | None = None,
    uid: int | None = None,
    local_hostname: str | None = None,
    environ: Mapping[str, str] | None = None,
    run: Callable[[str], int] | None = None,
) -> ResolvedConfig:
    """
    Read the configuration files as ``ssh [-o ...] [-F config_file] destination`` does and
    resolve the options for ``destination`` (``[user@]host`` or
    ``ssh://[user@]host[:port]``).

    :param config_file: ``-F``: a file to read instead of the user's and the system's
        (an error if it cannot be opened), or ``"none"`` for no file at all.
    :param user_file: the user's file (default ``~/.ssh/config`` in ``home``); it must
        not be writable by others, as ssh requires.
    :param system_file: the system-wide file, read after the user's.
    :param system_dir: where a system file's relative ``Include`` looks (ssh's
        ``/etc/ssh``); a user file's relative ``Include`` looks in ``~/.ssh``.
    :param command_line: ``-o`` options (``Keyword=value`` or ``Keyword value``), in
        order; they come first, so they win. ``-l user`` is ``User user``.
    :param local_user: the local user name (``%u``, ``Match localuser``, the default
        ``User``); default: the password database's entry for this process.
    :param home: the local user's home directory (``~``, ``%d``); default: the password
        database's, as ssh takes it. ``Include`` globs take ``$HOME`` from ``environ``,
        as glob(3) does.
    :param uid: ``%i``; default: this process's.
    :param local_hostname: ``%l`` (``%L`` is its first label); default: gethostname().
    :param environ: the environment for ``${VAR}``; default ``os.environ``.
    :param run: runs a ``Match exec`` command and returns its exit status (-1: killed by
        a signal); :func:`run_in_shell` runs it as ssh does. Without it, a ``Match exec``
        that has to be evaluated is an error.
    :raises SSHConfigError: with ssh's message, for what ssh refuses: a bad line (each
        named by file and line number), a file that cannot be opened with ``-F``, unsafe
        permissions, includes nested deeper than 16, a bad destination.
    """
    default_user, default_home, default_uid = _password_entry()
    environ = os.environ if environ is None else environ
    context = _Context(
        host_arg="",
        home=home if home is not None else default_home,
        local_user=local_user if local_user is not None else default_user,
        uid=uid if uid is not None else default_uid,
        local_hostname=local_hostname if local_hostname is not None else socket.gethostname(),
        environ=environ,
        system_dir=system_dir,
        run=run,
    )
    reader = _Reader(context)
    try:
        return _resolve(
            reader, context, destination, config_file, user_file, system_file, command_line
        )
    except _BadLine as problem:  # a -o option: ssh exits at the first bad one
        message = _vis(str(problem))
        raise SSHConfigError(message, [("command-line", 0, message)]) from None
    except _Fatal as fatal:
        problems = [(path, line, _vis(message)) for path, line, message in reader.problems]
        message = "\n".join([*(m for _, _, m in problems), _vis(str(fatal))])
        raise SSHConfigError(message, problems) from None


def _resolve(
    reader: _Reader,
    context: _Context,
    destination: str,
    config_file: str | None,
    user_file: str | None,
    system_file: str,
    command_line: Sequence[str],
) -> ResolvedConfig:
    for option in command_line:
        reader.process_line(option, "command-line", 0, "", _USERCONF, None, 0, final=False)
    status, uri_user, uri_host, uri_port = _parse_ssh_uri(destination)
    if status == -1:
        raise _Fatal(f"invalid destination {destination!r}: not ssh://[user@]host[:port]")
    if status == 0:
        assert uri_host is not None
        host = uri_host
        dest_user: str | None = uri_user
        if uri_port != -1 and "port" not in reader.set:
            reader.port = uri_port
            reader.set.add("port")
    else:
        user_part, at, host = destination.rpartition("@")
        if at and not user_part:
            raise _Fatal(f"invalid destination {destination!r}: empty user name")
        dest_user = user_part if at else None
    if not host:
        raise _Fatal(f"invalid destination {destination!r}: no host name")
    if dest_user is not None and "user" not in reader.set:
        reader.user = dest_user
        reader.set.add("user")
    context.host_arg = host

    def read_all(host_now: str, final: bool) -> None:
        extra = _FINAL if final else 0
        if config_file is not None:
            if _ascii_lower(config_file) != "none":
                error = reader.read_file(
                    config_file, host_now, _USERCONF | extra, _Active(True), 0, final=final
                )
                if error is not None:
                    why = error.strerror or str(error)
                    raise _Fatal(f"Can't open user config file {config_file}: {why}")
            return
        path = user_file if user_file is not None else os.path.join(context.home, ".ssh/config")
        reader.read_file(
            path, host_now, _CHECKPERM | _USERCONF | extra, _Active(True), 0, final=final
        )
        reader.read_file(system_file, host_now, extra, _Active(True), 0, final=final)

    read_all(host, final=False)
    # ssh.c fill_default_options_for_canonicalization: between the passes these take
    # ssh's defaults when unset, so a second pass's lines for them change nothing.
    reader.set.update(("canonicalizehostname", "canonicalizemaxdots", "canonicalizefallbacklocal"))
    if reader.hostname is not None:
        try:
            host = _percent_expand(reader.hostname, {"h": host})
        except ValueError as error:
            entry = next(e for e in reader.entries if e.keyword == "hostname")
            raise _Fatal(f"{entry.where}: HostName: percent_expand: {error}") from None
    host = _final_host(host)
    final_pass = reader.want_final_pass or reader.canonicalize_hostname != 0
    if final_pass:
        # ssh sets HostName to the host before the second pass: HostName lines there
        # change nothing, and "Match host" sees this name.
        reader.hostname = host
        reader.set.add("hostname")
        reader.want_final_pass = False
        read_all(host, final=True)
    port = reader.port if reader.port > 0 else 22
    resolved = ResolvedConfig(
        destination=destination,
        original_host=context.host_arg,
        host=host,
        user=reader.user if reader.user is not None else context.local_user,
        port=port,
        entries=tuple(reader.entries),
        ignored=tuple(reader.ignored),
        files=tuple(reader.files),
        final_pass=final_pass,
        home=context.home,
        local_user=context.local_user,
        uid=context.uid,
        local_hostname=context.local_hostname,
        environ=context.environ,
    )
    _check_combined(resolved)
    return resolved


def _check_combined(config: ResolvedConfig) -> None:
    """
    What ``ssh`` refuses after reading, from the values together (ssh.c main, in its
    order). Left to the caller: "Cannot fork into background without a command", which
    depends on the command line, and the ``ForwardAgent`` socket that must exist with
    ``ExitOnForwardFailure``, which depends on the file system when connecting.
    """
    jump = config.value("proxyjump")
    if jump is not None and _ascii_lower(jump) != "none":
        parts = _jump_parts(jump)
        assert parts is not None  # checked when the line was read
        jump_user, jump_host, jump_port, _ = parts
        if (
            jump_host == config.host
            and (jump_port if jump_port > 0 else 22) == config.port
            and (jump_user if jump_user is not None else config.user) == config.user
        ):
            raise _Fatal(f"jumphost loop via {jump_host}")
    fdpass = config.value("proxyusefdpass")
    if config.value("proxycommand") == "-" and fdpass is not None and _is_true(fdpass):
        raise _Fatal("ProxyCommand=- and ProxyUseFDPass are incompatible")
    attempts = config.value("connectionattempts")
    if attempts is not None and _strtonum(attempts, 0, _INT_MAX)[0] == 0:
        raise _Fatal("Invalid number of ConnectionAttempts")


# --------------------------------------------------------------------------------------
# ssh -G


def _multistate_word(keyword: Keyword, value: str) -> str:
    number = dict(keyword.multistate)[_ascii_lower(value)]
    if keyword.multistate in (_FLAG, _COMPRESSION):
        return "yes" if number else "no"
    return next(word for word, n in keyword.multistate if n == number)


def _vis_char(byte: int) -> str:
    """vis(3) with ``VIS_WHITE`` of one byte, as ``ssh -G`` prints ``EscapeChar``."""
    prefix = ""
    if byte & 0x80:
        prefix, byte = "\\M-", byte & 0x7F
    if byte == 0x7F:
        return prefix + ("^?" if prefix else "\\^?")
    if byte < 0x20:
        return prefix + ("^" if prefix else "\\^") + chr(byte + 64)
    if byte == 0x20:
        return prefix + ("\\040" if not prefix else " ")
    if byte == ord("\\") and not prefix:
        return "\\\\"
    return prefix + chr(byte)


def _g_escapechar(value: str) -> str:
    if value == "none":
        return "none"
    raw = value.encode("utf-8", "surrogateescape")
    byte = raw[0] if len(raw) == 1 else raw[1] & 31
    return _vis_char(byte)


def _g_time(value: str) -> str:
    return str(_convtime(value))


def _g_jump(value: str) -> str | None:
    if _ascii_lower(value) == "none":
        return None
    parts = _jump_parts(value)
    assert parts is not None
    user, host, port, extra = parts
    assert host is not None
    numeric = ":" in host or all(c in "0123456789." for c in host)
    text = f"{extra}," if extra is not None else ""
    text += f"{user}@" if user is not None else ""
    text += f"[{host}]" if numeric else host
    text += f":{port}" if port > 0 else ""
    return text


def _g_forward(keyword: str, forward: Forward) -> str:
    if forward.listen_port == _PORT_STREAMLOCAL:
        text = f"{keyword} {forward.listen_path}"
    elif forward.listen_host is None:
        text = f"{keyword} {forward.listen_port}"
    else:
        text = f"{keyword} [{forward.listen_host}]:{forward.listen_port}"
    if keyword == "dynamicforward":
        return text
    if forward.connect_port == _PORT_STREAMLOCAL:
        return f"{text} {forward.connect_path}"
    if forward.connect_host is None:
        return f"{text} {forward.connect_port}"
    return f"{text} [{forward.connect_host}]:{forward.connect_port}"


# The order of readconf.c dump_client_config, for the keywords format_like_ssh_G prints.
_G_ORDER: Final = (  # noqa: SIM905 - a word list reads better than 97 string literals
    "addressfamily batchmode canonicalizefallbacklocal canonicalizehostname checkhostip "
    "compression controlmaster enablesshkeysign clearallforwardings exitonforwardfailure "
    "fingerprinthash forwardx11 forwardx11trusted gatewayports gssapiauthentication "
    "gssapikeyexchange gssapidelegatecredentials gssapitrustdns gssapirenewalforcesrekey "
    "gssapikexalgorithms gssapiclientidentity gssapiserveridentity hashknownhosts "
    "hostbasedauthentication "
    "identitiesonly kbdinteractiveauthentication nohostauthenticationforlocalhost "
    "passwordauthentication permitlocalcommand proxyusefdpass pubkeyauthentication "
    "requesttty sessiontype stdinnull forkafterauthentication streamlocalbindunlink "
    "stricthostkeychecking tcpkeepalive tunnel verifyhostkeydns visualhostkey "
    "updatehostkeys enableescapecommandline canonicalizemaxdots connectionattempts "
    "forwardx11timeout numberofpasswordprompts serveralivecountmax serveraliveinterval "
    "requiredrsasize bindaddress bindinterface ciphers controlpath hostkeyalgorithms "
    "hostkeyalias hostbasedacceptedalgorithms identityagent ignoreunknown "
    "kbdinteractivedevices kexalgorithms casignaturealgorithms localcommand remotecommand "
    "loglevel macs pkcs11provider securitykeyprovider preferredauthentications "
    "pubkeyacceptedalgorithms revokedhostkeys xauthlocation knownhostscommand "
    "dynamicforward localforward remoteforward identityfile canonicaldomains "
    "certificatefile globalknownhostsfile userknownhostsfile sendenv setenv logverbose "
    "permitremoteopen addkeystoagent forwardagent connecttimeout tunneldevice "
    "canonicalizepermittedcnames controlpersist escapechar ipqos rekeylimit "
    "streamlocalbindmask syslogfacility proxycommand proxyjump"
).split()

# Keywords whose value ssh drops when it is "none" (readconf.c CLEAR_ON_NONE).
_CLEAR_ON_NONE: Final = frozenset(
    {
        "localcommand",
        "remotecommand",
        "proxycommand",
        "controlpath",
        "revokedhostkeys",
        "pkcs11provider",
        "securitykeyprovider",
        "knownhostscommand",
    }
)


def format_like_ssh_G(config: ResolvedConfig) -> list[str]:  # noqa: N802 - ssh's flag
    """
    The lines ``ssh -G`` prints for what the configuration sets: ``host``, ``user``,
    ``hostname`` and ``port`` always, then each keyword the files (or ``-o``) set, in
    ssh's order and format (lower-case keyword, one line per value or ssh's one-line
    lists, yes/no words as ssh prints them, times in seconds, forwards as
    ``[host]:port``). Keywords left at ssh's defaults are not printed. Algorithm lists
    that modify ssh's defaults (``+``, ``-``, ``^``) or hold wildcards are left out:
    ssh prints them merged with its build's lists.
    """
    lines = [
        f"host {config.original_host}",
        f"user {config.user}",
        f"hostname {config.host}",
        f"port {config.port}",
    ]
    clear_forwards = (value := config.value("clearallforwardings")) is not None and _is_true(value)
    for name in _G_ORDER:
        keyword = _BY_NAME[name]
        # (A LocalForward can print as a dynamicforward too: _g_forwards.)
        shared = name == "dynamicforward" and config.get("localforward") is not None
        if config.get(name) is None and not shared:
            continue
        values = config.values(name)
        first = values[0] if values else ""
        if name in _CLEAR_ON_NONE and _ascii_lower(first) == "none":
            continue
        if name == "updatehostkeys" and _ask_disabled(config, first):
            lines.append(f"{name} false")
        elif (
            name == "proxyusefdpass" and _ascii_lower(config.value("proxyjump") or "none") != "none"
        ):
            lines.append(f"{name} no")  # ssh.c: "Never use FD passing for ProxyJump"
        elif keyword.kind == "multistate":
            lines.append(f"{name} {_multistate_word(keyword, first)}")
        elif keyword.kind == "time":
            lines.append(f"{name} {_g_time(first)}")
        elif keyword.kind == "int":
            lines.append(f"{name} {_strtonum(first, 0, _INT_MAX)[0]}")
        elif keyword.kind == "algorithms":
            if first[:1] not in ("+", "-", "^") and "*" not in first and "?" not in first:
                lines.append(f"{name} {first}")
        elif name == "hostkeyalias":
            lines.append(f"{name} {_ascii_lower(first)}")
        elif name in ("controlpath", "identityagent", "remotecommand"):
            lines.append(f"{name} {config.expanded(name)[0]}")
        elif keyword.kind in ("string", "command", "proxycommand"):
            lines.append(f"{name} {first}")
        elif keyword.kind == "forward":
            if not clear_forwards:
                lines.extend(_g_forward(name, f) for f in _g_forwards(config, name))
        elif name in ("identityfile", "certificatefile", "sendenv", "setenv"):
            lines.extend(f"{name} {value}" for value in values)
        elif name == "userknownhostsfile":
            shown = values if _ascii_lower(first) != "none" else ("none",)
            expanded = config.expanded(name) if _ascii_lower(first) != "none" else shown
            lines.append(f"{name} {' '.join(expanded)}")
        elif name in ("globalknownhostsfile", "canonicaldomains", "logverbose", "permitremoteopen"):
            lines.append(f"{name} {' '.join(values)}")
        elif name == "canonicalizepermittedcnames":
            if values != ("none:",):
                lines.append(f"canonicalizePermittedcnames {' '.join(values)}")
        elif name == "loglevel":
            number = dict(_LOG_LEVELS)[_ascii_upper(first)]
            lines.append(f"{name} {next(n for n, v in _LOG_LEVELS if v == number)}")
        elif name in ("syslogfacility", "fingerprinthash"):
            lines.append(f"{name} {_ascii_upper(first)}")
        elif name == "escapechar":
            lines.append(f"{name} {_g_escapechar(first)}")
        elif name == "streamlocalbindmask":
            match = _STRTOL8.match(first)
            assert match is not None
            lines.append(f"{name} 0{int(match.group(2), 8):o}")
        elif name == "tunneldevice":
            local, colon, remote = first.partition(":")
            parts = [local, remote if colon else "any"]
            devices = [
                "any" if _ascii_lower(p) == "any" else str(_strtonum(p, 0, _INT_MAX)[0])
                for p in parts
            ]
            lines.append(f"{name} {devices[0]}:{devices[1]}")
        elif name == "ipqos":
            numbers = [_parse_ipqos(v) for v in values]
            if len(numbers) == 1:
                numbers.append(numbers[0])
            names = {number: word for word, number in reversed(_IPQOS.items())}
            qos = [names.get(n, f"0x{n:02x}") for n in numbers]
            lines.append(f"{name} {qos[0]} {qos[1]}")
        elif name == "controlpersist":
            if first in ("yes", "true"):
                lines.append(f"{name} yes")
            elif first in ("no", "false"):
                lines.append(f"{name} no")
            else:
                seconds = _convtime(first)
                lines.append(f"{name} {seconds}" if seconds else f"{name} yes")
        elif name == "addkeystoagent":
            lines.append(_g_addkeystoagent(values))
        elif name == "forwardagent":
            lines.append(_g_forwardagent(config))
        elif name == "rekeylimit":
            lines.append(_g_rekeylimit(config))
        elif name == "proxyjump":
            shown_jump = _g_jump(first)
            if shown_jump is not None:
                lines.append(f"{name} {shown_jump}")
    return lines


def _ask_disabled(config: ResolvedConfig, value: str) -> bool:
    """
    ssh.c main turns ``UpdateHostKeys ask`` off with ``ControlPersist`` and a
    ``ControlPath``, with a remote command or ``RequestTTY no``, or below ``LogLevel
    INFO`` (as ``ssh -G`` without a command on its command line).
    """
    if _ascii_lower(value) != "ask":
        return False
    persist = config.value("controlpersist")
    path = config.value("controlpath")
    if persist not in (None, "no", "false") and path is not None and _ascii_lower(path) != "none":
        return True
    command = config.value("remotecommand")
    if command is not None and _ascii_lower(command) != "none":
        return True
    tty = config.value("requesttty")
    if tty is not None and dict(_REQUEST_TTY)[_ascii_lower(tty)] == 1:
        return True
    level = config.value("loglevel")
    return level is not None and dict(_LOG_LEVELS)[_ascii_upper(level)] < 3


def _g_forwards(config: ResolvedConfig, name: str) -> list[Forward]:
    """
    The forwards ``ssh -G`` prints under ``name``. LocalForward and DynamicForward share
    one list, which readconf.c dump_cfg_forwards splits by the target: "socks" is
    dynamic, and a Unix-socket target (no host) is printed under both (ssh 9.2).
    """
    if name == "remoteforward":
        return list(config.forwards(name))
    placed: list[tuple[int, Forward]] = []
    for keyword in ("localforward", "dynamicforward"):
        positions = [i for i, entry in enumerate(config.entries) if entry.keyword == keyword]
        placed.extend(zip(positions, config.forwards(keyword), strict=True))
    listed = [forward for _, forward in sorted(placed, key=lambda pair: pair[0])]
    if name == "dynamicforward":
        return [f for f in listed if f.connect_host in (None, "socks")]
    return [f for f in listed if f.connect_host != "socks"]


def _g_addkeystoagent(values: Sequence[str]) -> str:
    words = dict(_YESNOASKCONFIRM)
    if _ascii_lower(values[0]) in words:
        number = words[_ascii_lower(values[0])]
        lifetime = _convtime(values[1]) if len(values) == 2 else 0
    else:  # a lone time: yes, with that lifetime
        number, lifetime = 1, _convtime(values[0])
    # readconf.c dump_client_config: a lifetime of 0 is not printed.
    if lifetime > 0:
        return f"addkeystoagent{' confirm' if number == 3 else ''} {lifetime}"
    return f"addkeystoagent {next(w for w, n in _YESNOASKCONFIRM if n == number)}"


def _g_forwardagent(config: ResolvedConfig) -> str:
    entries = config.get_all("forwardagent")
    paths = [entry for entry in entries if not _is_flag(entry.values[0])]
    if paths:
        return f"forwardagent {config.expand_value(paths[0], paths[0].values[0])}"
    return f"forwardagent {'yes' if dict(_FLAG)[_ascii_lower(entries[0].values[0])] else 'no'}"


def _g_rekeylimit(config: ResolvedConfig) -> str:
    entries = config.get_all("rekeylimit")
    amount_text = entries[0].values[0]
    amount = 0 if amount_text == "default" else _scan_scaled(amount_text)[0] or 0
    interval = next((_convtime(e.values[1]) for e in entries if len(e.values) == 2), 0)
    return f"rekeylimit {amount} {interval}"
