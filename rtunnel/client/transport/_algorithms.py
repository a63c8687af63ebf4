"""
Algorithm lists: what rtunnel supports, what it offers by default, and OpenSSH's list
syntax (``ssh_config(5)`` Ciphers, MACs, KexAlgorithms, HostKeyAlgorithms): a plain list
replaces the default, ``+list`` appends to it, ``-list`` removes from it, ``^list`` puts
in front of it; ``*`` and ``?`` wildcards match supported names. Also the legacy names
that earn a warning, OpenSSH's group-exchange sizes, the RFC 4344 rekey limits and the
version-line rules (RFC 4253 §4.2). Pure: no I/O (the processor's AES instructions come
from :mod:`rtunnel.client.transport._cpu`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from rtunnel.client.transport._cpu import HAS_AES_INSTRUCTIONS
from rtunnel.errors import SpecError

__all__ = [
    "CERT_HOST_KEY_ALGORITHMS",
    "DEFAULT_CIPHERS",
    "DEFAULT_HOST_KEY_ALGORITHMS",
    "DEFAULT_KEX",
    "DEFAULT_MACS",
    "DEFAULT_REKEY_BYTES",
    "DEFAULT_VERSION_PATTERN",
    "DH_GROUP_MAX",
    "DH_GROUP_MIN",
    "HAS_DECREPIT",
    "HAS_MLKEM",
    "KINDS",
    "LEGACY",
    "REKEY_MAX_PACKETS",
    "STRICT_KEX_CLIENT",
    "STRICT_KEX_SERVER",
    "SUPPORTED_CIPHERS",
    "SUPPORTED_HOST_KEY_ALGORITHMS",
    "SUPPORTED_KEX",
    "SUPPORTED_MACS",
    "apply_modifiers",
    "check_client_version",
    "check_dh_group_bits",
    "default_ciphers",
    "dh_estimate",
    "dh_group_request",
    "kex_need_bytes",
    "legacy_names",
    "parse_version_pattern",
    "rekey_byte_limit",
    "rekey_limit",
    "resolve",
    "version_accepted",
]

try:  # ML-KEM arrived in cryptography 48.
    from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem  # noqa: F401
except ImportError:  # pragma: no cover (older cryptography)
    HAS_MLKEM = False
else:
    HAS_MLKEM = True

try:  # 3DES, Blowfish, CAST5 and RC4 live in cryptography.hazmat.decrepit (43+).
    from cryptography.hazmat.decrepit.ciphers import algorithms as _decrepit  # noqa: F401
except ImportError:  # pragma: no cover (older cryptography)
    HAS_DECREPIT = False
else:
    HAS_DECREPIT = True

#: Rekey after this many bytes either way (the seed's KeyRenegotiationThreshold default,
#: 1 GB; well inside RFC 4344 §3.2's 2^32 blocks for AES).
DEFAULT_REKEY_BYTES = 1 << 30

#: Strict key exchange markers (OpenSSH 9.6, the Terrapin fix, CVE-2023-48795).
STRICT_KEX_CLIENT = "kex-strict-c-v00@openssh.com"
STRICT_KEX_SERVER = "kex-strict-s-v00@openssh.com"


def default_ciphers(aes_instructions: bool) -> tuple[str, ...]:
    """
    Security first, then speed: the AEAD ciphers, then CTR (which the MAC list pairs with
    encrypt-then-MAC first); CBC only when asked for. Of the AEAD ciphers AES-GCM leads
    where the processor has AES instructions (it costs a third of ChaCha20-Poly1305 there),
    ChaCha20-Poly1305 elsewhere, as in OpenSSH (see :mod:`rtunnel.client.transport._cpu`).
    """
    chacha = ("chacha20-poly1305@openssh.com",)
    gcm = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    aead = gcm + chacha if aes_instructions else chacha + gcm
    return (*aead, "aes128-ctr", "aes192-ctr", "aes256-ctr")


DEFAULT_CIPHERS: tuple[str, ...] = default_ciphers(HAS_AES_INSTRUCTIONS)
SUPPORTED_CIPHERS: tuple[str, ...] = (
    *DEFAULT_CIPHERS,
    "aes128-cbc",
    "aes192-cbc",
    "aes256-cbc",
    *(
        ("3des-cbc", "blowfish-cbc", "cast128-cbc", "arcfour256", "arcfour128", "arcfour")
        if HAS_DECREPIT
        else ()
    ),
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

# OpenSSH 9.9's default order: the post-quantum hybrid first (when cryptography has
# ML-KEM), then curve25519, the NIST curves, group exchange and the big fixed groups
# (RFC 8268). sntrup761x25519-sha512 is not offered: no maintained Python library has it.
DEFAULT_KEX: tuple[str, ...] = (
    *(("mlkem768x25519-sha256",) if HAS_MLKEM else ()),
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
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
#: OpenSSH host certificates (PROTOCOL.certkeys). Offered in front of the default list
#: when a CA is trusted for the host (rtunnel.client.hostkeys.verify orders them per connection).
CERT_HOST_KEY_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
)
SUPPORTED_HOST_KEY_ALGORITHMS: tuple[str, ...] = (
    *DEFAULT_HOST_KEY_ALGORITHMS,
    *CERT_HOST_KEY_ALGORITHMS,
    "ssh-rsa",
    "ssh-dss",
)

#: kind -> (default, supported). The ssh_config keywords for these lists are in
#: rtunnel/openssh/keywords.py.
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cipher": (DEFAULT_CIPHERS, SUPPORTED_CIPHERS),
    "mac": (DEFAULT_MACS, SUPPORTED_MACS),
    "kex": (DEFAULT_KEX, SUPPORTED_KEX),
    "host key": (DEFAULT_HOST_KEY_ALGORITHMS, SUPPORTED_HOST_KEY_ALGORITHMS),
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
    default, supported = KINDS[kind]
    if value is None:
        return list(default)
    if isinstance(value, str):
        return apply_modifiers(kind, value, default, supported)
    result = _expand(kind, list(value), supported)
    if not result:
        raise SpecError(f"Empty {kind} algorithm list.")
    return result


# -- legacy algorithms: offered only when asked for by name, with a warning

#: Names that are weak or obsolete (CBC modes, 64-bit block ciphers, RC4, SHA-1 and MD5,
#: 1024-bit-era groups and SHA-1 signatures): never in a default list.
LEGACY: dict[str, frozenset[str]] = {
    "cipher": frozenset(
        {
            "aes128-cbc",
            "aes192-cbc",
            "aes256-cbc",
            "3des-cbc",
            "blowfish-cbc",
            "cast128-cbc",
            "arcfour",
            "arcfour128",
            "arcfour256",
        }
    ),
    "mac": frozenset(
        {"hmac-sha1", "hmac-sha1-etm@openssh.com", "hmac-md5", "hmac-md5-etm@openssh.com"}
    ),
    "kex": frozenset({"diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1"}),
    "host key": frozenset({"ssh-rsa", "ssh-dss"}),
}


def legacy_names(kind: str, names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are legacy algorithms of ``kind`` (see :data:`LEGACY`)."""
    weak = LEGACY.get(kind, frozenset())
    return [name for name in names if name in weak]


# -- Diffie-Hellman group exchange sizes (RFC 4419 §3)

#: OpenSSH's bounds for the group size it asks for (dh.h DH_GRP_MIN / DH_GRP_MAX).
DH_GROUP_MIN = 2048
DH_GROUP_MAX = 8192


def dh_estimate(bits: int) -> int:
    """
    A group size (bits of p) as hard to break as a ``bits``-bit symmetric key: OpenSSH's
    ``dh_estimate`` (NIST SP 800-57 part 1, capped at RFC 4419's 8192).
    """
    if bits <= 112:
        return 2048
    if bits <= 128:
        return 3072
    if bits <= 192:
        return 7680
    return 8192


def dh_group_request(preferred: int | None, need_bytes: int) -> tuple[int, int, int]:
    """
    (min, preferred, max) for SSH_MSG_KEX_DH_GEX_REQUEST. ``preferred`` None follows
    OpenSSH (kexgex_client: ``dh_estimate`` of the negotiated keys' strength,
    ``need_bytes``); a number is the seed's PreferredDHGroupBits (1024-8192), which also
    lowers the minimum when it is below OpenSSH's 2048.
    """
    if preferred is None:
        preferred = dh_estimate(need_bytes * 8)
    return min(DH_GROUP_MIN, preferred), preferred, DH_GROUP_MAX


def check_dh_group_bits(bits: int | None) -> int | None:
    """``bits`` if it is None or 1024-8192 (the seed's PreferredDHGroupBits range)."""
    if bits is not None and not 1024 <= bits <= DH_GROUP_MAX:
        raise SpecError(f"Preferred DH group size {bits} bits: give 1024 to {DH_GROUP_MAX}.")
    return bits


# -- version identity (RFC 4253 §4.2)

#: The seed's SSHVersionPattern default: SSH 2.0 servers and 1.99 (SSH-1 and -2 capable).
DEFAULT_VERSION_PATTERN = "*SSH-1.99-*,*SSH-2.0-*"


def check_client_version(version: str) -> str:
    """
    ``version`` if it can be sent as our identification line (RFC 4253 §4.2:
    ``SSH-2.0-softwareversion[ SP comments]``, printable US-ASCII, at most 255 bytes with
    CR LF); raises :class:`~rtunnel.errors.SpecError` otherwise.
    """
    if not version.startswith("SSH-2.0-") or len(version) == len("SSH-2.0-"):
        raise SpecError(
            f"Client version string {version[:80]!r} must start with 'SSH-2.0-' and name "
            "the software, e.g. 'SSH-2.0-MyApp_1.0'."
        )
    if len(version) > 253 or not all(" " <= c <= "~" for c in version):
        raise SpecError(
            "Client version string must be printable ASCII of at most 253 characters "
            "(RFC 4253 section 4.2)."
        )
    software = version[len("SSH-2.0-") :].split(" ", 1)[0]
    if not software or "-" in software:
        raise SpecError(
            f"Client version string {version!r}: the software version after 'SSH-2.0-' "
            "must not be empty or contain '-' (RFC 4253 section 4.2)."
        )
    return version


def parse_version_pattern(pattern: str | Sequence[str]) -> tuple[str, ...]:
    """
    The seed's SSHVersionPattern, a comma-separated list of patterns (``*``, ``?``,
    ``[...]``), as a tuple; raises :class:`~rtunnel.errors.SpecError` when empty.
    """
    patterns = _split(pattern) if isinstance(pattern, str) else [p.strip() for p in pattern]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise SpecError("Empty server version pattern: give e.g. '*SSH-2.0-*'.")
    return tuple(patterns)


def version_accepted(version_line: str, patterns: Sequence[str]) -> bool:
    """Whether the server's identification line matches one of ``patterns``."""
    return any(fnmatch.fnmatchcase(version_line, pattern) for pattern in patterns)


# -- limits that force a rekey (RFC 4344 §3)

#: RFC 4344 §3.1 asks for new keys before 2^32 packets either way; OpenSSH rekeys after
#: 2^31 (packet.c, MAX_PACKETS).
REKEY_MAX_PACKETS = 1 << 31


def rekey_byte_limit(kind: str, block_size: int) -> int:
    """
    Bytes one direction may carry under one key before a rekey is due (0: no limit).
    Block ciphers (CTR, CBC, GCM): RFC 4344 §3.2's 2^(L/4) blocks of L bits, so 64 GiB
    for AES and 512 KiB for 64-bit blocks (3DES, Blowfish, CAST). Stream ciphers
    (chacha20-poly1305, arcfour), which have no such bound: OpenSSH's 1 GiB (packet.c,
    ssh_set_newkeys, where their 8-byte "block" gives 2^30 bytes).
    """
    if kind == "none":
        return 0
    if kind in ("chacha", "stream"):
        return 1 << 30
    return (1 << (block_size * 8 // 4)) * block_size


def rekey_limit(rekey_bytes: int, kind: str, block_size: int) -> int:
    """
    Bytes one direction may carry before a rekey is due: ``rekey_bytes`` (RekeyLimit; 0:
    none) capped by :func:`rekey_byte_limit` of that direction's cipher, as OpenSSH sets
    max_blocks_in and max_blocks_out (packet.c, ssh_set_newkeys). 0: no limit.
    """
    return min((x for x in (rekey_bytes, rekey_byte_limit(kind, block_size)) if x), default=0)


def kex_need_bytes(sizes: Sequence[int]) -> int:
    """
    OpenSSH's ``dh_need`` (kex.c, kex_choose_conf): the largest of the negotiated ciphers'
    key, block and IV sizes and the MACs' key sizes, in bytes.
    """
    return max(sizes, default=0)
