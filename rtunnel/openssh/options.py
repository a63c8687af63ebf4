"""
OpenSSH's ``-o`` lines as ``ssh`` reads them (readconf.c, ``process_config_line``): the
keyword and its arguments split as OpenSSH splits them, the keyword looked up in the one
table (:mod:`rtunnel.openssh.keywords`), refused with OpenSSH's words when rtunnel does not
implement it, ignored when OpenSSH ignores it.

Nothing here touches the network, the reactor or the file system, so all of it is tested
as plain functions.
"""

from __future__ import annotations

from typing import Any, Final

from rtunnel.errors import SpecError
from rtunnel.openssh.keywords import (
    KEYWORDS,
    LOG_LEVELS,
    WHERE,
    Keyword,
    keyword_named,
    parse_channel_timeout,
    parse_rekey_limit,
)

__all__ = [
    "LOG_LEVELS",
    "SUPPORTED_OPTIONS",
    "parse_channel_timeout",
    "parse_keyword",
    "parse_option",
    "parse_rekey_limit",
    "split_arguments",
]

_WHERE: Final = WHERE


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


#: The ``-o`` keywords rtunnel understands, by lower-case name (OpenSSH matches keywords
#: case-insensitively, readconf.c ``lowercase(keyword)``): the table's, less the aliases.
SUPPORTED_OPTIONS: Final = {row.name.lower(): row.name for row in KEYWORDS}

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
    hostkeyalias ignoreunknown
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


def parse_option(text: str) -> tuple[str, Any] | None:
    """
    Parse one ``-o`` option, ``Key=Value`` or ``Key Value``, as ``ssh`` does
    (readconf.c, ``process_config_line``): the key is case-insensitive, the arguments
    are split by :func:`split_arguments`.

    :return: the keyword's name (as in :data:`SUPPORTED_OPTIONS`) and the value its row
        reads (:attr:`~rtunnel.openssh.keywords.Keyword.parse`); or None for a line
        OpenSSH ignores: blank, a ``#`` comment, or a deprecated option such as
        ``Protocol``.
    :raises SpecError: with OpenSSH's message for the mistake, e.g.
        ``command-line: line 0: Bad configuration option: foo`` for an unknown key and
        ``command-line line 0: Unsupported option "forwardagent"`` for an OpenSSH option
        rtunnel does not implement.
    """
    parsed = parse_keyword(text)
    return None if parsed is None else (parsed[0].name, parsed[1])


def parse_keyword(text: str) -> tuple[Keyword[Any], Any] | None:
    """:func:`parse_option`, giving the keyword's row rather than its name."""
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
    row = keyword_named(keyword)
    if row is None:
        if keyword in _IGNORED:
            return None
        if keyword in _OPENSSH_ONLY:
            raise SpecError(f'{_WHERE}: Unsupported option "{keyword}"')
        raise SpecError(f"command-line: line 0: Bad configuration option: {keyword}")
    args = split_arguments(rest.lstrip(_WHITESPACE))
    return row, row.parse(keyword, args)
