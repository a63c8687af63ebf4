"""
Custom authentication in tests: the user-auth packets a ``CustomAuth`` hook builds and
reads (RFC 4252 section 5), field by field with rtunnel's packet helpers.
"""

from __future__ import annotations

from rtunnel import CustomAuthStep, read_ssh_params, set_ssh_param

USERAUTH_REQUEST = 50
USERAUTH_FAILURE = 51
INFO_REQUEST = 60
INFO_RESPONSE = 61


def request(step: CustomAuthStep, method: str, *fields: tuple[str, object]) -> bytes:
    """A USERAUTH_REQUEST (RFC 4252 section 5) built field by field."""
    packet = set_ssh_param(b"", "b", USERAUTH_REQUEST)
    packet = set_ssh_param(packet, "s", step.user)
    packet = set_ssh_param(packet, "s", step.service)
    packet = set_ssh_param(packet, "s", method)
    for kind, value in fields:
        packet = set_ssh_param(packet, kind, value)  # type: ignore[arg-type]
    return packet


def failure_methods(step: CustomAuthStep) -> tuple[list[str], bool]:
    _number, methods, partial = read_ssh_params(step.packet, "b,s,f")
    return str(methods).split(","), bool(partial)
