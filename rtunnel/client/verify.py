"""
Deciding whether to trust the server's host key: known_hosts files, keys and fingerprints
given directly, an application callback, and a policy.

The order of the checks (each later one only runs when the earlier ones did not decide):

1. A key marked ``@revoked`` in any known_hosts file is refused, whatever else says.
2. A key given in ``accepted_keys``, or whose fingerprint is in ``accepted_fingerprints``
   (the reference's SSHAcceptServerHostKey / SSHAcceptServerHostKeyFingerPrint), is
   trusted.
3. ``accept-any`` trusts every key, with a warning.
4. The known_hosts files: a match is trusted; a changed key is refused; an unknown key is
   refused, or under ``accept-new`` trusted and written to the first user file.
5. A callback, when given, sees the outcome of 1-4 (:class:`HostKeyInfo`) and has the last
   word, except over a revoked key (the reference's SSHServerAuthentication event, with its
   ``Accept`` flag pre-set).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from twisted.conch.ssh import keys
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rtunnel.client.hostkeys import (
    FINGERPRINT_HASHES,
    HostKeyCheck,
    KnownHostEntry,
    KnownHosts,
    fingerprint,
    fingerprint_matches,
    host_key_line,
    host_lookup_name,
)
from rtunnel.errors import HostKeyError

__all__ = [
    "DEFAULT_GLOBAL_KNOWN_HOSTS",
    "HostKeyCallback",
    "HostKeyInfo",
    "HostKeyPolicy",
    "HostKeyVerifier",
]

HostKeyPolicy = Literal["strict", "accept-new", "accept-any"]

#: OpenSSH's default GlobalKnownHostsFile (pathnames.h, _PATH_SSH_SYSTEM_HOSTFILE{,2}).
DEFAULT_GLOBAL_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))

_log = Logger()


@dataclass(frozen=True)
class HostKeyInfo:
    """
    What a host key callback sees (the reference's SSHServerAuthentication event).

    :ivar host: the server name as given.
    :ivar port: its port.
    :ivar key: the public host key.
    :ivar blob: the key in wire form (the reference's ``HostKey``).
    :ivar algorithm: the key's type, e.g. ``ssh-ed25519`` (the reference's
        ``KeyAlgorithm``).
    :ivar fingerprint: the fingerprint in the configured hash and form (the reference's
        ``Fingerprint``; by default OpenSSH's ``SHA256:...``).
    :ivar fingerprints: every fingerprint: keys ``sha256``, ``sha1``, ``md5`` (OpenSSH
        form) and ``sha256-hex``, ``sha1-hex``, ``md5-hex`` (colon hex).
    :ivar known: what the known_hosts files say.
    :ivar accepted: what rtunnel decided without the callback (the reference's
        ``Accept`` as the event starts).
    :ivar status: why, in words: the error message when ``accepted`` is false.
    """

    host: str
    port: int
    key: keys.Key
    blob: bytes
    algorithm: str
    fingerprint: str
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    known: HostKeyCheck = HostKeyCheck.UNKNOWN
    accepted: bool = False
    status: str = ""


#: Decides on a host key: returns (or fires, or awaits to) True to accept.
HostKeyCallback = Callable[[HostKeyInfo], "bool | Deferred[bool] | Awaitable[bool]"]


def _as_blob(key: keys.Key | str | bytes) -> bytes:
    """A host key given directly: a Key, an OpenSSH public key line or its wire blob."""
    if isinstance(key, keys.Key):
        return bytes(key.public().blob())
    data = key.encode("ascii") if isinstance(key, str) else key
    try:
        return bytes(keys.Key.fromString(data).public().blob())
    except (keys.BadKeyError, ValueError, IndexError):
        pass
    fields = data.split()
    if len(fields) >= 2:
        # "host ssh-ed25519 AAAA..." (a known_hosts line): the key is after the host.
        try:
            return bytes(keys.Key.fromString(b" ".join(fields[1:3])).public().blob())
        except (keys.BadKeyError, ValueError, IndexError):
            pass
    try:
        return bytes(keys.Key.fromString(data, type="blob").public().blob())
    except (keys.BadKeyError, ValueError, IndexError):
        from rtunnel.errors import SpecError

        raise SpecError(
            f"Not a public key: {data[:40]!r}...; give an OpenSSH public key line "
            "('ssh-ed25519 AAAA...') or a Key."
        ) from None


class HostKeyVerifier:
    """
    Checks one server's host key.

    :param host: the server name as the user gave it (looked up in known_hosts).
    :param port: its port (``[host]:port`` entries off port 22).
    :param known_hosts: the user files to read; ``accept-new`` appends to the first.
    :param policy: ``strict``, ``accept-new`` or ``accept-any``.
    :param global_known_hosts: files read but never written (OpenSSH's
        ``GlobalKnownHostsFile``; default ``/etc/ssh/ssh_known_hosts`` and
        ``/etc/ssh/ssh_known_hosts2``).
    :param accepted_keys: host keys trusted for this server whatever known_hosts says
        (``Key`` objects, OpenSSH public key lines or wire blobs).
    :param accepted_fingerprints: fingerprints trusted likewise, in any form
        :func:`~rtunnel.client.hostkeys.fingerprint_matches` reads.
    :param callback: decides last, seeing a :class:`HostKeyInfo`; may return a Deferred or
        an awaitable.
    :param fingerprint_hash: ``sha256`` (default), ``sha1`` or ``md5``: the hash shown in
        messages and in :attr:`HostKeyInfo.fingerprint` (OpenSSH's ``FingerprintHash``).
    :param hash_known_hosts: write ``accept-new`` entries with the host name hashed
        (OpenSSH's ``HashKnownHosts``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        known_hosts: Sequence[Path],
        policy: HostKeyPolicy,
        *,
        global_known_hosts: Sequence[Path] | None = None,
        accepted_keys: Sequence[keys.Key | str | bytes] = (),
        accepted_fingerprints: Sequence[str] = (),
        callback: HostKeyCallback | None = None,
        fingerprint_hash: str = "sha256",
        hash_known_hosts: bool = False,
    ) -> None:
        if fingerprint_hash not in FINGERPRINT_HASHES:
            from rtunnel.errors import SpecError

            raise SpecError(
                f"Unknown fingerprint hash {fingerprint_hash!r}: use sha256, sha1 or md5."
            )
        self.host = host
        self.port = port
        self.known_hosts = list(known_hosts)
        self.global_known_hosts = list(
            DEFAULT_GLOBAL_KNOWN_HOSTS if global_known_hosts is None else global_known_hosts
        )
        self.policy: HostKeyPolicy = policy
        self.accepted_blobs = [_as_blob(k) for k in accepted_keys]
        self.accepted_fingerprints = [f for f in accepted_fingerprints if f.strip()]
        self.callback = callback
        self.fingerprint_hash = fingerprint_hash
        self.hash_known_hosts = hash_known_hosts

    def verify(self, blob: bytes) -> Deferred[bool]:
        """Fire True to accept the key in ``blob``; fail with HostKeyError to refuse."""
        return Deferred.fromCoroutine(self._verify(blob))

    async def _verify(self, blob: bytes) -> bool:
        info, write = self.assess(blob)
        accepted = info.accepted
        if self.callback is not None and info.known is not HostKeyCheck.REVOKED:
            try:
                answer = self.callback(info)
                if isinstance(answer, Deferred) or inspect.isawaitable(answer):
                    answer = await cast(Awaitable[bool], answer)
            except Exception as e:
                raise HostKeyError(
                    f"The host key callback failed for {info.algorithm} key "
                    f"{info.fingerprint} of {host_lookup_name(self.host, self.port)}: {e!r}. "
                    "Host key verification failed.",
                    info.fingerprints["sha256"],
                ) from e
            accepted = bool(answer)
            if not accepted:
                raise HostKeyError(
                    f"The {info.algorithm} host key {info.fingerprint} of "
                    f"{host_lookup_name(self.host, self.port)} was refused by the host key "
                    "callback. Host key verification failed.",
                    info.fingerprints["sha256"],
                )
        if not accepted:
            raise HostKeyError(info.status, info.fingerprints["sha256"])
        if write and (info.known is HostKeyCheck.UNKNOWN):
            self._write(info)
        return True

    def check(self, blob: bytes) -> bool:
        """
        Decide synchronously, without the callback; raise HostKeyError to refuse (writes
        the key under ``accept-new``).
        """
        info, write = self.assess(blob)
        if not info.accepted:
            raise HostKeyError(info.status, info.fingerprints["sha256"])
        if write:
            self._write(info)
        return True

    def assess(self, blob: bytes) -> tuple[HostKeyInfo, bool]:
        """
        Everything but the callback: the :class:`HostKeyInfo` (with ``accepted`` and
        ``status`` filled in) and whether accepting means writing the key (``accept-new``).
        """
        try:
            key = keys.Key.fromString(blob)
        except (keys.BadKeyError, ValueError, IndexError) as e:
            raise HostKeyError(
                f"The server sent a host key rtunnel cannot read ({e}). "
                "Host key verification failed."
            ) from None
        algorithm = key.sshType().decode("ascii")
        prints = {name: fingerprint(blob, name) for name in FINGERPRINT_HASHES}
        prints.update({f"{n}-hex": fingerprint(blob, n, form="hex") for n in FINGERPRINT_HASHES})
        shown = prints[self.fingerprint_hash]
        name = host_lookup_name(self.host, self.port)
        known = KnownHosts.from_files([*self.known_hosts, *self.global_known_hosts])
        outcome, entry = known.check(self.host, self.port, algorithm, blob)

        def info(accepted: bool, status: str) -> HostKeyInfo:
            return HostKeyInfo(
                self.host, self.port, key, blob, algorithm, shown, prints, outcome, accepted, status
            )

        if outcome is HostKeyCheck.REVOKED:
            assert entry is not None
            return info(
                False,
                f"The {algorithm} host key for {name} ({shown}) is marked as revoked in "
                f"{entry.path}:{entry.line}. Host key verification failed.",
            ), False
        if blob in self.accepted_blobs or any(
            fingerprint_matches(blob, f) for f in self.accepted_fingerprints
        ):
            return info(True, f"The {algorithm} host key {shown} is in the accepted keys."), False
        if self.policy == "accept-any":
            _log.warn(
                "Warning: not checking the host key of {name} ({key_type} {fingerprint}): "
                "host_key_policy is accept-any.",
                name=name,
                key_type=algorithm,
                fingerprint=shown,
            )
            return info(True, "host_key_policy is accept-any"), False
        if outcome is HostKeyCheck.MATCH:
            assert entry is not None
            return info(True, f"Matches {entry.path}:{entry.line}."), False
        if outcome is HostKeyCheck.CHANGED:
            assert entry is not None
            return info(False, _changed_message(algorithm, name, shown, entry)), False
        if self.policy == "accept-new" and self.known_hosts:
            return info(True, f"New key; accept-new writes it to {self.known_hosts[0]}."), True
        files = ", ".join(str(p) for p in self.known_hosts) or "(none)"
        return info(
            False,
            f"No {algorithm} host key is known for {name} (fingerprint {shown}) in "
            f"{files}. If you trust this key, add it there or allow new keys "
            "(policy accept-new). Host key verification failed.",
        ), False

    def _write(self, info: HostKeyInfo) -> None:
        path = self.known_hosts[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        line = host_key_line(
            self.host, self.port, info.algorithm, info.blob, hashed=self.hash_known_hosts
        )
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        _log.warn(
            "Warning: Permanently added '{name}' ({key_type}) to the list of known hosts.",
            name=host_lookup_name(self.host, self.port),
            key_type=info.algorithm,
        )


def _changed_message(algorithm: str, name: str, shown: str, entry: KnownHostEntry) -> str:
    # OpenSSH's banner (sshconnect.c), then the file and line of the old key as it names them.
    return (
        f"WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! The {algorithm} host key "
        f"for {name} is now {shown}, but {entry.path}:{entry.line} holds "
        "another. If the change is expected, remove that line. "
        "Host key verification failed."
    )
