"""
Algorithm lists: what rtunnel supports, what it offers by default, and OpenSSH's list
syntax (``ssh_config(5)`` Ciphers, MACs, KexAlgorithms, HostKeyAlgorithms): a plain list
replaces the default, ``+list`` appends to it, ``-list`` removes from it, ``^list`` puts
in front of it; ``*`` and ``?`` wildcards match supported names. Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from rtunnel.errors import SpecError

__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_HOST_KEY_ALGORITHMS",
    "DEFAULT_KEX",
    "DEFAULT_MACS",
    "DEFAULT_REKEY_BYTES",
    "KINDS",
    "STRICT_KEX_CLIENT",
    "STRICT_KEX_SERVER",
    "SUPPORTED_CIPHERS",
    "SUPPORTED_HOST_KEY_ALGORITHMS",
    "SUPPORTED_KEX",
    "SUPPORTED_MACS",
    "apply_modifiers",
    "resolve",
]

#: Rekey after this many bytes either way (the seed's KeyRenegotiationThreshold default,
#: 1 GB; well inside RFC 4344 §3.2's 2^32 blocks for AES).
DEFAULT_REKEY_BYTES = 1 << 30

#: Strict key exchange markers (OpenSSH 9.6, the Terrapin fix, CVE-2023-48795).
STRICT_KEX_CLIENT = "kex-strict-c-v00@openssh.com"
STRICT_KEX_SERVER = "kex-strict-s-v00@openssh.com"

# Security first, then speed: the AEAD ciphers, then CTR (which the MAC list pairs with
# encrypt-then-MAC first). CBC only when asked for.
DEFAULT_CIPHERS: tuple[str, ...] = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
SUPPORTED_CIPHERS: tuple[str, ...] = (
    *DEFAULT_CIPHERS,
    "aes128-cbc",
    "aes192-cbc",
    "aes256-cbc",
)

DEFAULT_MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
SUPPORTED_MACS: tuple[str, ...] = (
    *DEFAULT_MACS,
    "hmac-sha1-etm@openssh.com",
    "hmac-sha1",
    "hmac-md5-etm@openssh.com",
    "hmac-md5",
)

# What Conch's client implements (twisted.conch.ssh._kex, less the PQ hybrids its client
# does not do yet), modern first.
DEFAULT_KEX: tuple[str, ...] = (
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
)
SUPPORTED_KEX: tuple[str, ...] = (
    *DEFAULT_KEX,
    "diffie-hellman-group-exchange-sha1",
    "diffie-hellman-group14-sha1",
)

DEFAULT_HOST_KEY_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
SUPPORTED_HOST_KEY_ALGORITHMS: tuple[str, ...] = (
    *DEFAULT_HOST_KEY_ALGORITHMS,
    "ssh-rsa",
    "ssh-dss",
)

#: kind -> (the option's name in ssh_config, default, supported)
KINDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "cipher": ("Ciphers", DEFAULT_CIPHERS, SUPPORTED_CIPHERS),
    "mac": ("MACs", DEFAULT_MACS, SUPPORTED_MACS),
    "kex": ("KexAlgorithms", DEFAULT_KEX, SUPPORTED_KEX),
    "host key": ("HostKeyAlgorithms", DEFAULT_HOST_KEY_ALGORITHMS, SUPPORTED_HOST_KEY_ALGORITHMS),
}


def _split(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _expand(kind: str, patterns: Sequence[str], supported: Sequence[str]) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?"):
            matches = [name for name in supported if fnmatch.fnmatchcase(name, pattern)]
        elif pattern in supported:
            matches = [pattern]
        else:
            raise SpecError(
                f"Unsupported {kind} algorithm {pattern!r}; supported: {', '.join(supported)}."
            )
        out.extend(name for name in matches if name not in out)
    return out


def apply_modifiers(
    kind: str, spec: str, default: Sequence[str], supported: Sequence[str]
) -> list[str]:
    """
    The list ``spec`` means, OpenSSH-style (``kex_assemble_names`` in OpenSSH's kex.c):
    ``a,b`` replaces ``default``; ``+a,b`` appends; ``-a,b`` removes (wildcards allowed);
    ``^a,b`` puts first. Names are checked against ``supported``; raises
    :class:`~rtunnel.errors.SpecError` for an unknown name or an empty result.
    """
    spec = spec.strip()
    if not spec:
        raise SpecError(f"Empty {kind} algorithm list.")
    head, rest = spec[0], spec[1:]
    if head == "+":
        result = list(default) + [
            n for n in _expand(kind, _split(rest), supported) if n not in default
        ]
    elif head == "-":
        patterns = _split(rest)
        result = [
            name
            for name in default
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        ]
    elif head == "^":
        first = _expand(kind, _split(rest), supported)
        result = first + [name for name in default if name not in first]
    else:
        result = _expand(kind, _split(spec), supported)
    if not result:
        raise SpecError(f"The {kind} algorithm list {spec!r} leaves nothing to offer.")
    return result


def resolve(kind: str, value: str | Sequence[str] | None) -> list[str]:
    """
    The list to offer for ``kind`` (a key of :data:`KINDS`): the default for None, a
    sequence of names as given (checked), a string through :func:`apply_modifiers`.
    """
    _option, default, supported = KINDS[kind]
    if value is None:
        return list(default)
    if isinstance(value, str):
        return apply_modifiers(kind, value, default, supported)
    result = _expand(kind, list(value), supported)
    if not result:
        raise SpecError(f"Empty {kind} algorithm list.")
    return result
