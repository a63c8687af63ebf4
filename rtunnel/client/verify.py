"""
Deciding whether to trust the server's host key: known_hosts files and a policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rtunnel.client.hostkeys import (
    HostKeyCheck,
    KnownHosts,
    fingerprint_sha256,
    host_key_line,
    host_lookup_name,
)
from rtunnel.errors import HostKeyError, RTunnelError

__all__ = ["HostKeyPolicy", "HostKeyVerifier"]

HostKeyPolicy = Literal["strict", "accept-new", "accept-any"]

_log = Logger()


class HostKeyVerifier:
    """
    Checks one server's host key.

    :param host: the server name as the user gave it (looked up in known_hosts).
    :param port: its port (``[host]:port`` entries off port 22).
    :param known_hosts: the files to read; ``accept-new`` appends to the first.
    :param policy: ``strict``, ``accept-new`` or ``accept-any``.
    """

    def __init__(
        self, host: str, port: int, known_hosts: Sequence[Path], policy: HostKeyPolicy
    ) -> None:
        self.host = host
        self.port = port
        self.known_hosts = list(known_hosts)
        self.policy: HostKeyPolicy = policy

    def verify(self, blob: bytes) -> Deferred[bool]:
        """Fire True to accept the key in ``blob``; fail with HostKeyError to refuse."""
        try:
            return defer.succeed(self.check(blob))
        except RTunnelError as e:
            return defer.fail(e)

    def check(self, blob: bytes) -> bool:
        """Decide synchronously; raise HostKeyError to refuse."""
        key = keys.Key.fromString(blob)
        key_type = key.sshType().decode("ascii")
        fingerprint = fingerprint_sha256(blob)
        name = host_lookup_name(self.host, self.port)
        if self.policy == "accept-any":
            _log.warn(
                "Warning: not checking the host key of {name} ({key_type} {fingerprint}): "
                "host_key_policy is accept-any.",
                name=name,
                key_type=key_type,
                fingerprint=fingerprint,
            )
            return True
        known = KnownHosts.from_files(self.known_hosts)
        outcome, entry = known.check(self.host, self.port, key_type, blob)
        if outcome is HostKeyCheck.MATCH:
            return True
        if outcome is HostKeyCheck.REVOKED:
            assert entry is not None
            raise HostKeyError(
                f"The {key_type} host key for {name} ({fingerprint}) is marked as revoked "
                f"in {entry.path}:{entry.line}. Host key verification failed.",
                fingerprint,
            )
        if outcome is HostKeyCheck.CHANGED:
            assert entry is not None
            raise HostKeyError(
                f"WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! The {key_type} host key "
                f"for {name} is now {fingerprint}, but {entry.path}:{entry.line} holds "
                "another. If the change is expected, remove that line. "
                "Host key verification failed.",
                fingerprint,
            )
        if self.policy == "accept-new" and self.known_hosts:
            path = self.known_hosts[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(host_key_line(self.host, self.port, key_type, blob) + "\n")
            _log.warn(
                "Warning: Permanently added '{name}' ({key_type}) to the list of known hosts.",
                name=name,
                key_type=key_type,
            )
            return True
        files = ", ".join(str(p) for p in self.known_hosts) or "(none)"
        raise HostKeyError(
            f"No {key_type} host key is known for {name} (fingerprint {fingerprint}) in "
            f"{files}. If you trust this key, add it there or allow new keys "
            "(policy accept-new). Host key verification failed.",
            fingerprint,
        )
