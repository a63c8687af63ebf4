"""
The pieces of OpenSSH's syntax the library itself reads, as pure functions: a port
number, a destination (``[user@]host``, ``ssh://[user@]host[:port]``), ProxyJump's hops
(``[user@]host[:port][,...]``) and PermitRemoteOpen's rules. The command line's grammar
(:mod:`rtunnel.openssh`) builds on these; the library never imports that grammar.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, NamedTuple
from urllib.parse import unquote

from rtunnel.errors import SpecError

__all__ = [
    "Destination",
    "parse_destination",
    "parse_permit_remote_open",
    "parse_proxy_jump",
    "remote_open_permitted",
    "to_port",
]

_DIGITS: Final = re.compile(r"[0-9]+")


def to_port(text: str) -> int | None:
    """
    OpenSSH's ``a2port`` (misc.c) without the ``getservbyname`` fallback (a lookup in
    ``/etc/services`` is I/O, and a service name as a forwarding port is rare): decimal
    digits only, 0-65535. Returns None when ``text`` is not a port.
    """
    if _DIGITS.fullmatch(text) is None:
        return None
    # Strip leading zeros before int(): "0000…0080" is 80 to strtonum, and int() of a
    # very long digit string is slow or (over sys.get_int_max_str_digits) an error.
    digits = text.lstrip("0") or "0"
    if len(digits) > 5:
        return None
    value = int(digits)
    return value if value <= 65535 else None


# --------------------------------------------------------------------------------------
# Destinations: [user@]host and ssh://[user@]host[:port]


class Destination(NamedTuple):
    """
    Where to log on, from the command line's destination argument.

    :ivar user: the user name, or None when the destination gave none.
    :ivar host: the host name or address (IPv6 without brackets).
    :ivar port: the port from an ``ssh://`` URI, else None.
    """

    user: str | None
    host: str
    port: int | None


def _unbracket(host: str) -> str:
    if len(host) > 2 and host[0] == "[" and host[-1] == "]":
        return host[1:-1]
    return host


def parse_destination(text: str) -> Destination:
    """
    Parse ``ssh``'s destination: ``[user@]host`` (split at the last ``@``, as ssh.c
    does, so a user name may contain ``@``) or ``ssh://[user@]host[:port]`` (misc.c,
    ``parse_uri``: the user is percent-decoded, ``;`` parameters are ignored, an IPv6
    host is in brackets, no path is allowed).

    A bracketed IPv6 host in the plain form (``user@[::1]``) is accepted too, and the
    brackets are removed.

    :raises SpecError: if there is no host, the user is empty, or the URI is malformed.
    """
    if text.lower().startswith("ssh://"):
        return _parse_ssh_uri(text)
    user: str | None = None
    host = text
    if "@" in text:
        user, _, host = text.rpartition("@")
        if not user:
            raise SpecError(f"Bad destination '{text}': empty user name")
    host = _unbracket(host)
    if not host:
        raise SpecError(f"Bad destination '{text}': missing host")
    return Destination(user, host, None)


def parse_proxy_jump(spec: str) -> list[Destination]:
    """
    The hops of a ``-J`` / ``ProxyJump`` value, first hop first: each ``[user@]host[:port]``
    or ``ssh://[user@]host[:port]``, separated by commas (ssh_config(5)).

    :raises SpecError: for an empty hop, user or host, or a bad port.
    """
    hops = [hop.strip() for hop in spec.split(",")]
    if not spec.strip() or any(not hop for hop in hops):
        raise SpecError(f"Bad ProxyJump '{spec}': give [user@]host[:port][,...].")
    return [_jump_hop(hop, spec) for hop in hops]


def _jump_hop(hop: str, spec: str) -> Destination:
    if hop.lower().startswith("ssh://"):
        return parse_destination(hop)
    user: str | None = None
    rest = hop
    if "@" in hop:
        user, _, rest = hop.rpartition("@")
        if not user:
            raise SpecError(f"Bad ProxyJump '{spec}': empty user name in '{hop}'.")
    port: int | None = None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise SpecError(f"Bad ProxyJump '{spec}': bad address in '{hop}'.")
        port_text = after[1:] if after else None
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, None
    if port_text is not None:
        port = to_port(port_text)
        if not port:
            raise SpecError(f"Bad ProxyJump '{spec}': bad port in '{hop}'.")
    if not host:
        raise SpecError(f"Bad ProxyJump '{spec}': missing host in '{hop}'.")
    return Destination(user, host, port)


def _parse_ssh_uri(text: str) -> Destination:
    rest = text[len("ssh://") :]
    authority, slash, path = rest.partition("/")
    if slash and path:
        raise SpecError(f"Bad destination '{text}': a path is not allowed in an ssh:// URI")
    user: str | None = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user = unquote(userinfo.split(";", 1)[0])
        if not user:
            raise SpecError(f"Bad destination '{text}': empty user name")
    port: int | None = None
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise SpecError(f"Bad destination '{text}': unmatched '['")
        host = authority[1:end]
        tail = authority[end + 1 :]
        if tail and not tail.startswith(":"):
            raise SpecError(f"Bad destination '{text}': junk after ']'")
        port_text = tail[1:] if tail else None
    else:
        host, colon, after = authority.partition(":")
        port_text = after if colon else None
    if port_text is not None:
        port = to_port(port_text)
        if port is None or port == 0:
            raise SpecError(f"Bad destination '{text}': bad port '{port_text}'")
    if not host:
        raise SpecError(f"Bad destination '{text}': missing host")
    return Destination(user, host, port)


# --------------------------------------------------------------------------------------
# PermitRemoteOpen


def parse_permit_remote_open(
    spec: str | Sequence[str] | None,
) -> tuple[tuple[str, str], ...] | None:
    """
    OpenSSH's ``PermitRemoteOpen`` (ssh_config(5)): ``host:port`` entries (``[v6]:port``),
    ``*`` for any host or any port, ``any`` (no restriction: None) or ``none`` (nothing:
    an empty tuple). Names are not resolved or pattern-matched, as in OpenSSH.

    :raises SpecError: for an entry that is not ``host:port``.
    """
    if spec is None:
        return None
    entries = spec.split() if isinstance(spec, str) else [e for e in spec if e.strip()]
    if [e.lower() for e in entries] == ["any"]:
        return None
    if [e.lower() for e in entries] == ["none"]:
        return ()
    rules: list[tuple[str, str]] = []
    for entry in entries:
        if entry.startswith("["):
            host, bracket, rest = entry[1:].partition("]")
            port = rest[1:] if bracket and rest.startswith(":") else ""
        else:
            host, _, port = entry.rpartition(":")
        if (
            not host
            or not port
            or (port != "*" and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536))
        ):
            raise SpecError(
                f"Bad PermitRemoteOpen entry '{entry}': give host:port (* for any host or "
                "port), any or none."
            )
        rules.append((host.lower(), port))
    return tuple(rules)


def remote_open_permitted(rules: tuple[tuple[str, str], ...] | None, host: str, port: int) -> bool:
    """Whether a SOCKS request for ``host:port`` may be connected (None: no rules)."""
    if rules is None:
        return True
    name = host.lower()
    return any(h in ("*", name) and p in ("*", str(port)) for h, p in rules)
