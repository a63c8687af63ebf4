"""
Values on ``ssh``'s command line: ports, times, and the user and host names of the
destination, read and refused with OpenSSH's words.
"""

from __future__ import annotations

import re
from typing import Final

from rtunnel._core.syntax import to_port
from rtunnel.errors import SpecError

__all__ = ["check_host_name", "check_user_name", "parse_port", "parse_time"]


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
