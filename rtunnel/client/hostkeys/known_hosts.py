"""
known_hosts matching as OpenSSH does it, and fingerprints. Pure: files are read by the
caller-facing helpers only; matching works on text.

Covered here (the core): plain and hashed (``|1|salt|hash``) host fields, comma-separated
patterns, ``[host]:port`` for a non-default port, ``*``/``?`` wildcards, ``!`` negation and
several keys per host. Marker lines (``@cert-authority``, ``@revoked``) are kept apart so
they are never mistaken for a plain trusted key: CA lines are looked up for host
certificates (:mod:`rtunnel.client.hostkeys.certificates`), revoked lines refuse a key (or a CA)
whatever else matches.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FINGERPRINT_HASHES",
    "HostKeyCheck",
    "KnownHostEntry",
    "KnownHosts",
    "fingerprint",
    "fingerprint_matches",
    "fingerprint_sha256",
    "hash_host_name",
    "host_key_line",
    "host_lookup_name",
    "lookup_names",
]

#: The fingerprint hash algorithms rtunnel computes (the reference's
#: SSHFingerprintHashAlgorithm values, OpenSSH's ``FingerprintHash``).
FINGERPRINT_HASHES = ("sha256", "sha1", "md5")


def fingerprint_sha256(blob: bytes) -> str:
    """The key's fingerprint in OpenSSH's default form: ``SHA256:`` + unpadded base64."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint(blob: bytes, algorithm: str = "sha256", *, form: str = "openssh") -> str:
    """
    A key fingerprint.

    :param blob: the public key in wire form.
    :param algorithm: ``"sha256"``, ``"sha1"`` or ``"md5"``.
    :param form: ``"openssh"`` for OpenSSH's display (``SHA256:`` + unpadded base64, or
        ``MD5:`` + colon hex for MD5, as ``ssh -o FingerprintHash=md5`` shows it), or
        ``"hex"`` for the reference's colon-hex form (``0a:1b:2c:...``).
    """
    if algorithm not in FINGERPRINT_HASHES:
        raise ValueError(f"Unknown fingerprint hash {algorithm!r}: use sha256, sha1 or md5.")
    digest = hashlib.new(algorithm, blob).digest()
    hex_form = ":".join(f"{b:02x}" for b in digest)
    if form == "hex":
        return hex_form
    if algorithm == "md5":
        return "MD5:" + hex_form
    return algorithm.upper() + ":" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint_matches(blob: bytes, accepted: str) -> bool:
    """
    Whether ``accepted`` is a fingerprint of ``blob``. Understood forms: OpenSSH's
    ``SHA256:<base64>`` / ``SHA1:<base64>`` (padding optional) and ``MD5:<hex>``, and
    colon-hex (or plain hex) SHA256, SHA1 or MD5, told apart by length (32, 20 or 16
    bytes), case-insensitive. Anything else never matches.
    """
    text = accepted.strip()
    prefix, _, rest = text.partition(":")
    upper = prefix.upper()
    if upper in ("SHA256", "SHA1") and rest and not _is_hex(rest):
        algorithm = upper.lower()
        padded = rest + "=" * (-len(rest) % 4)
        try:
            wanted = base64.b64decode(padded, validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(wanted, hashlib.new(algorithm, blob).digest())
    if upper in ("MD5", "SHA1", "SHA256") and rest:
        text = rest
    try:
        wanted = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return False
    by_length = {16: "md5", 20: "sha1", 32: "sha256"}
    if len(wanted) not in by_length:
        return False
    algorithm = by_length[len(wanted)]
    return hmac.compare_digest(wanted, hashlib.new(algorithm, blob).digest())


def _is_hex(text: str) -> bool:
    return bool(text) and re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})+", text) is not None


def hash_host_name(name: str, salt: bytes | None = None) -> str:
    """
    The hashed form of a known_hosts host field (``|1|salt|hash``, HMAC-SHA1 of the name
    keyed with a random 20-byte salt), as ``ssh -o HashKnownHosts=yes`` writes it.
    """
    if salt is None:
        salt = os.urandom(20)
    digest = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def host_lookup_name(host: str, port: int) -> str:
    """The name OpenSSH looks a host up by: ``host``, or ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def host_key_line(host: str, port: int, key_type: str, blob: bytes, *, hashed: bool = False) -> str:
    """A known_hosts line for one key; ``hashed`` hides the host name (``|1|...``)."""
    b64 = base64.b64encode(blob).decode("ascii")
    name = host_lookup_name(host, port)
    return f"{hash_host_name(name) if hashed else name} {key_type} {b64}"


class HostKeyCheck(enum.Enum):
    """The outcome of looking a host's key up."""

    MATCH = "match"
    CHANGED = "changed"  # the host is known with other keys of the same type
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    #: A host certificate signed by a CA trusted for the host, valid for it now.
    CERTIFIED = "certified"


@dataclass(frozen=True)
class KnownHostEntry:
    """
    One line of a known_hosts file.

    :ivar patterns: the host field, split on commas (hashed fields are kept whole).
    :ivar key_type: e.g. ``ssh-ed25519``.
    :ivar blob: the public key in wire form.
    :ivar marker: ``""``, ``"cert-authority"`` or ``"revoked"``.
    :ivar path: the file the line came from.
    :ivar line: its line number (1-based).
    """

    patterns: tuple[str, ...]
    key_type: str
    blob: bytes
    marker: str = ""
    path: str = ""
    line: int = 0

    def matches_host(self, name: str) -> bool:
        """
        Whether this line's host field names ``name`` (already in ``[host]:port`` form when
        the port is not 22). A matching negated pattern excludes the host whatever else
        matches (OpenSSH ``match_hostname``).
        """
        positive = False
        for pattern in self.patterns:
            if pattern.startswith("|1|"):
                if _hashed_matches(pattern, name):
                    positive = True
                continue
            negated = pattern.startswith("!")
            if negated:
                pattern = pattern[1:]
            # Host names compare case-insensitively (OpenSSH lowercases before matching).
            if _wildcard_match(name.lower(), pattern.lower()):
                if negated:
                    return False
                positive = True
        return positive


def _wildcard_match(name: str, pattern: str) -> bool:
    """
    OpenSSH ``match_pattern``: ``*`` and ``?`` are the only wildcards. (``fnmatch`` would
    read the brackets of ``[host]:port`` as a character class.)
    """
    if "*" not in pattern and "?" not in pattern:
        return name == pattern
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _hashed_matches(field: str, name: str) -> bool:
    parts = field.split("|")
    # "|1|salt|hash" splits into ["", "1", salt, hash].
    if len(parts) != 4:
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        expected = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return False
    actual = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(actual, expected)


def parse_known_hosts(text: str, path: str = "") -> list[KnownHostEntry]:
    """
    Parse known_hosts text. Blank lines, comments and lines that cannot be parsed are
    skipped, as OpenSSH skips them.
    """
    entries: list[KnownHostEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = ""
        if fields[0].startswith("@"):
            marker = fields[0][1:]
            fields = fields[1:]
        if len(fields) < 3:
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except ValueError:
            continue
        entries.append(
            KnownHostEntry(
                patterns=tuple(fields[0].split(",")),
                key_type=fields[1],
                blob=blob,
                marker=marker,
                path=path,
                line=number,
            )
        )
    return entries


class KnownHosts:
    """
    The entries of one or more known_hosts files.

    :ivar entries: every parsed line, in file order.
    """

    def __init__(self, entries: Iterable[KnownHostEntry], problems: Iterable[str] = ()) -> None:
        self.entries = list(entries)
        #: Files that exist but could not be read, with why (``"PATH: Is a directory"``).
        self.problems = list(problems)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> KnownHosts:
        """
        Read the files that exist; a missing file is simply empty (as in OpenSSH), and so
        is one that cannot be read (a directory, no permission), which :attr:`problems`
        names so that a refusal can say why.
        """
        entries: list[KnownHostEntry] = []
        problems: list[str] = []
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            except OSError as e:
                problems.append(f"{path}: {e.strerror or e}")
                continue
            entries.extend(parse_known_hosts(text, str(path)))
        return cls(entries, problems)

    def check(
        self, host: str, port: int, key_type: str, blob: bytes
    ) -> tuple[HostKeyCheck, KnownHostEntry | None]:
        """
        Look up ``host:port`` and compare ``blob``.

        :return: the outcome and, for ``MATCH``, ``CHANGED`` and ``REVOKED``, the entry
            that decided it (for ``CHANGED`` the line of the old key, to name in the error).
        """
        name = host_lookup_name(host, port)
        changed: KnownHostEntry | None = None
        matched: KnownHostEntry | None = None
        for entry in self.entries:
            if entry.marker == "revoked":
                # @revoked lines apply whatever host they name (OpenSSH checks the key
                # against revoked entries for every host pattern that matches).
                if entry.blob == blob and entry.matches_host(name):
                    return HostKeyCheck.REVOKED, entry
                continue
            if entry.marker or not entry.matches_host(name):
                continue
            if entry.blob == blob:
                matched = matched or entry
            elif entry.key_type == key_type and changed is None:
                changed = entry
        if matched is not None:
            return HostKeyCheck.MATCH, matched
        if changed is not None:
            return HostKeyCheck.CHANGED, changed
        return HostKeyCheck.UNKNOWN, None

    def check_host(
        self, host: str, port: int, key_type: str, blob: bytes
    ) -> tuple[HostKeyCheck, KnownHostEntry | None]:
        """
        :meth:`check` as OpenSSH's client decides (sshconnect.c, check_host_key): off port
        22 a host unknown as ``[host]:port`` is looked up again as plain ``host``, and only
        a match (or a revoked key) there counts.
        """
        outcome, entry = self.check(host, port, key_type, blob)
        if outcome is HostKeyCheck.UNKNOWN and port != 22:
            again, found = self.check(host, 22, key_type, blob)
            if again in (HostKeyCheck.MATCH, HostKeyCheck.REVOKED):
                return again, found
        return outcome, entry

    def certificate_authorities(self, host: str, port: int) -> list[KnownHostEntry]:
        """
        The ``@cert-authority`` lines for ``host:port`` (``[host]:port`` first, then, off
        port 22 and when none names that, plain ``host``, as OpenSSH looks CAs up).
        """
        for name in lookup_names(host, port):
            found = [
                e for e in self.entries if e.marker == "cert-authority" and e.matches_host(name)
            ]
            if found:
                return found
        return []

    def revoked(self, host: str, port: int, blobs: Iterable[bytes]) -> KnownHostEntry | None:
        """
        The first ``@revoked`` line naming ``[host]:port`` or ``host`` that holds one of
        ``blobs`` (a certificate's key or its CA: OpenSSH's check_key_not_revoked).
        """
        wanted = set(blobs)
        names = lookup_names(host, port)
        for entry in self.entries:
            if (
                entry.marker == "revoked"
                and entry.blob in wanted
                and any(entry.matches_host(n) for n in names)
            ):
                return entry
        return None

    def key_types(self, host: str, port: int) -> set[str]:
        """The types of the plain keys known for ``host:port`` (``[host]:port`` or ``host``)."""
        names = lookup_names(host, port)
        return {
            e.key_type
            for e in self.entries
            if not e.marker and any(e.matches_host(n) for n in names)
        }


def lookup_names(host: str, port: int) -> list[str]:
    """The names OpenSSH tries for ``host:port``: ``[host]:port``, then ``host``; or ``host``."""
    name = host_lookup_name(host, port)
    return [name] if name == host else [name, host]
