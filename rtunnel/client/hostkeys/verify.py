"""
Deciding whether to trust the server's host key: known_hosts files, keys, CA keys and
fingerprints given directly, an application callback, and a policy.

The order of the checks (each later one only runs when the earlier ones did not decide):

1. A key marked ``@revoked`` in any known_hosts file is refused, whatever else says; for
   a host certificate, also the key it certifies and the CA that signed it.
2. A host certificate (``*-cert-v01@openssh.com``) signed by a CA trusted for the host (a
   ``@cert-authority`` line naming it, or ``accepted_ca_keys``: the reference's
   SSHAcceptServerCAKey) is trusted when it passes OpenSSH's checks: a host certificate,
   valid now, listing the host name among its principals (or listing none), with no
   critical options and a CA signature algorithm OpenSSH allows. A certificate that fails
   is not ignored: the reason is logged and named in any refusal, and the key it certifies
   goes through 3-5 as a plain key, as OpenSSH does ("No matching CA found. Retry with
   plain key").
3. A key given in ``accepted_keys``, or whose fingerprint is in ``accepted_fingerprints``
   (the reference's SSHAcceptServerHostKey / SSHAcceptServerHostKeyFingerPrint), is
   trusted.
4. ``accept-any`` trusts every key, with a warning.
5. The known_hosts files: a match is trusted; a changed key is refused; an unknown key is
   refused, or under ``accept-new`` trusted and written to the first user file. Off port
   22 a key unknown for ``[host]:port`` that is known for plain ``host`` is trusted
   (OpenSSH: "checking without port identifier").
6. A callback, when given, sees the outcome of 1-5 (:class:`HostKeyInfo`) and has the last
   word, except over a revoked key (the reference's SSHServerAuthentication event, with its
   ``Accept`` flag pre-set).

:meth:`HostKeyVerifier.host_key_algorithms` orders the host key algorithms to offer after
the keys known for the host, as OpenSSH's client does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import inspect
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from twisted.conch.ssh import keys
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rtunnel._core.text import printable
from rtunnel.client.hostkeys.certificates import (
    CertificateError,
    SSHCertificate,
    certificate_algorithms,
    check_host_certificate,
    is_certificate,
    is_certificate_algorithm,
    key_type_of_algorithm,
    parse_certificate,
)
from rtunnel.client.hostkeys.known_hosts import (
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
    "check_fingerprint_hash",
    "host_key_blob",
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
    :ivar key: the public host key (for a host certificate, the key it certifies).
    :ivar blob: the key in wire form as the server sent it (the reference's ``HostKey``;
        for a host certificate, the certificate).
    :ivar algorithm: the key's type, e.g. ``ssh-ed25519``, or
        ``ssh-ed25519-cert-v01@openssh.com`` for a host certificate (the reference's
        ``KeyAlgorithm``).
    :ivar fingerprint: the fingerprint in the configured hash and form (the reference's
        ``Fingerprint``; by default OpenSSH's ``SHA256:...``). For a host certificate, the
        certified key's, as OpenSSH shows it.
    :ivar fingerprints: every fingerprint: keys ``sha256``, ``sha1``, ``md5`` (OpenSSH
        form) and ``sha256-hex``, ``sha1-hex``, ``md5-hex`` (colon hex).
    :ivar known: what the known_hosts files (and accepted CA keys) say;
        :attr:`~rtunnel.client.hostkeys.known_hosts.HostKeyCheck.CERTIFIED` for a host certificate a
        trusted CA signed and that is valid for this host now.
    :ivar accepted: what rtunnel decided without the callback (the reference's
        ``Accept`` as the event starts).
    :ivar status: why, in words: the error message when ``accepted`` is false.
    :ivar certificate: the host certificate, when the server presented one: its
        ``key_id`` (the reference's CertSubject), ``principals``, ``valid_after``,
        ``valid_before``, ``serial`` and CA (``ca_blob``, ``ca_fingerprint``: the
        reference's CertIssuer); None for a plain key.
    :ivar certificate_problem: why the certificate was not enough on its own (OpenSSH's
        words, e.g. ``Certificate invalid: expired``), or ``""``.
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
    certificate: SSHCertificate | None = None
    certificate_problem: str = ""


#: Decides on a host key: returns (or fires, or awaits to) True to accept.
HostKeyCallback = Callable[[HostKeyInfo], "bool | Deferred[bool] | Awaitable[bool]"]


def check_fingerprint_hash(name: str) -> None:
    """:raises SpecError: unless ``name`` is a fingerprint hash rtunnel shows (OpenSSH's
    ``FingerprintHash``, plus sha1)."""
    if name not in FINGERPRINT_HASHES:
        from rtunnel.errors import SpecError

        raise SpecError(f"Unknown fingerprint hash {name!r}: use sha256, sha1 or md5.")


def host_key_blob(key: keys.Key | str | bytes) -> bytes:
    """
    The wire blob of a host key given directly: a Key, an OpenSSH public key line (or a
    known_hosts line) or its wire blob.

    :raises SpecError: for anything else.
    """
    if isinstance(key, keys.Key):
        return bytes(key.public().blob())
    data = key.encode("ascii") if isinstance(key, str) else key
    try:
        return bytes(keys.Key.fromString(data).public().blob())
    except (keys.BadKeyError, ValueError, IndexError):
        pass
    fields = data.split()
    if fields and fields[0].startswith(b"@"):
        # "@cert-authority host ssh-ed25519 AAAA...": the marker goes too.
        fields = fields[1:]
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

    :param host: the server name as the user gave it (looked up in known_hosts; for a host
        certificate, the principal it must list).
    :param port: its port (``[host]:port`` entries off port 22).
    :param known_hosts: the user files to read; ``accept-new`` appends to the first.
    :param policy: ``strict``, ``accept-new`` or ``accept-any``.
    :param global_known_hosts: files read but never written (OpenSSH's
        ``GlobalKnownHostsFile``; default ``/etc/ssh/ssh_known_hosts`` and
        ``/etc/ssh/ssh_known_hosts2``).
    :param accepted_keys: host keys trusted for this server whatever known_hosts says
        (``Key`` objects, OpenSSH public key lines or wire blobs).
    :param accepted_fingerprints: fingerprints trusted likewise, in any form
        :func:`~rtunnel.client.hostkeys.known_hosts.fingerprint_matches` reads.
    :param accepted_ca_keys: CA keys trusted to sign this server's host certificate, as if
        known_hosts had a ``@cert-authority`` line for it (the reference's
        SSHAcceptServerCAKey): ``Key`` objects, public key lines or wire blobs.
    :param callback: decides last, seeing a :class:`HostKeyInfo`; may return a Deferred or
        an awaitable.
    :param fingerprint_hash: ``sha256`` (default), ``sha1`` or ``md5``: the hash shown in
        messages and in :attr:`HostKeyInfo.fingerprint` (OpenSSH's ``FingerprintHash``).
    :param hash_known_hosts: write ``accept-new`` entries with the host name hashed
        (OpenSSH's ``HashKnownHosts``).
    :param now: the clock certificates are checked against (seconds since the epoch;
        default ``time.time``).
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
        accepted_ca_keys: Sequence[keys.Key | str | bytes] = (),
        callback: HostKeyCallback | None = None,
        fingerprint_hash: str = "sha256",
        hash_known_hosts: bool = False,
        now: Callable[[], float] = time.time,
    ) -> None:
        check_fingerprint_hash(fingerprint_hash)
        self.host = host
        self.port = port
        self.known_hosts = list(known_hosts)
        self.global_known_hosts = list(
            DEFAULT_GLOBAL_KNOWN_HOSTS if global_known_hosts is None else global_known_hosts
        )
        self.policy: HostKeyPolicy = policy
        self.accepted_blobs = [host_key_blob(k) for k in accepted_keys]
        self.accepted_fingerprints = [f for f in accepted_fingerprints if f.strip()]
        self.accepted_ca_blobs = [host_key_blob(k) for k in accepted_ca_keys]
        self.callback = callback
        self.fingerprint_hash = fingerprint_hash
        self.hash_known_hosts = hash_known_hosts
        self._now = now

    def _known(self) -> KnownHosts:
        return KnownHosts.from_files([*self.known_hosts, *self.global_known_hosts])

    def host_key_algorithms(
        self, algorithms: Sequence[str], *, follow_known_hosts: bool = True
    ) -> list[str]:
        """
        The host key algorithms to offer, in order, as OpenSSH's client picks them
        (sshconnect2.c, ``order_hostkeyalgs``), so that the server presents a key we know:

        - when a CA is trusted for the host (a ``@cert-authority`` line naming
          ``[host]:port`` or ``host``, or ``accepted_ca_keys``) and ``algorithms`` has no
          certificate algorithm, the certificate forms of its algorithms go in front
          (``ssh-ed25519-cert-v01@openssh.com`` for ``ssh-ed25519``, ...), as OpenSSH's
          default list has them;
        - if known_hosts holds a plain key of the first algorithm's type for the host, the
          list is used as it is; otherwise the algorithms with a known key (and, when a CA
          is trusted, the certificate algorithms) move to the front, each group keeping
          its order.

        :param algorithms: the configured list (``host_key_algorithms=``).
        :param follow_known_hosts: False when the user gave the list outright (OpenSSH
            reorders only its default, or a list given as ``+...`` or ``-...``): then it is
            used as given.
        """
        algs = list(algorithms)
        if not follow_known_hosts:
            return algs
        known = self._known()
        has_ca = bool(self.accepted_ca_blobs or known.certificate_authorities(self.host, self.port))
        if has_ca and not any(is_certificate_algorithm(a) for a in algs):
            algs = certificate_algorithms(algs) + algs
        types = known.key_types(self.host, self.port)
        if not algs or key_type_of_algorithm(algs[0]) in types:
            return algs
        first = [
            a
            for a in algs
            if (is_certificate_algorithm(a) and has_ca) or key_type_of_algorithm(a) in types
        ]
        return first + [a for a in algs if a not in first]

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
                # What rtunnel itself found wrong, if anything, is kept in the message.
                why = info.status if not info.accepted else "Host key verification failed."
                raise HostKeyError(
                    f"The {info.algorithm} host key {info.fingerprint} of "
                    f"{host_lookup_name(self.host, self.port)} was refused by the host key "
                    f"callback. {why}",
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
        cert: SSHCertificate | None = None
        plain = blob
        if is_certificate(blob):
            try:
                cert = parse_certificate(blob)
            except CertificateError as e:
                raise HostKeyError(
                    f"The server sent a host certificate rtunnel cannot accept: {e} "
                    "Host key verification failed."
                ) from None
            plain = cert.public_blob
        try:
            key = keys.Key.fromString(plain)
        except (keys.BadKeyError, ValueError, IndexError) as e:
            raise HostKeyError(
                f"The server sent a host key rtunnel cannot read ({e}). "
                "Host key verification failed."
            ) from None
        key_type = key.sshType().decode("ascii")
        algorithm = cert.cert_type if cert is not None else key_type
        prints = {name: fingerprint(plain, name) for name in FINGERPRINT_HASHES}
        prints.update({f"{n}-hex": fingerprint(plain, n, form="hex") for n in FINGERPRINT_HASHES})
        shown = prints[self.fingerprint_hash]
        name = host_lookup_name(self.host, self.port)
        known = self._known()
        problem = ""

        def info(outcome: HostKeyCheck, accepted: bool, status: str) -> HostKeyInfo:
            if problem and not accepted:
                status = f"The host certificate of {name} was not accepted: {problem}. {status}"
            return HostKeyInfo(
                self.host,
                self.port,
                key,
                blob,
                algorithm,
                shown,
                prints,
                outcome,
                accepted,
                status,
                cert,
                problem,
            )

        if cert is not None:
            revoked = known.revoked(self.host, self.port, [cert.public_blob, cert.ca_blob])
            if revoked is not None:
                what = (
                    f"certificate authority {cert.ca_key_type} {cert.ca_fingerprint} of the"
                    if revoked.blob == cert.ca_blob
                    else "key of the"
                )
                return info(
                    HostKeyCheck.REVOKED,
                    False,
                    f"The {what} {algorithm} host certificate for {name} ({shown}) is marked "
                    f"as revoked in {revoked.path}:{revoked.line}. Host key verification failed.",
                ), False
            where, problem = self._check_certificate(cert, known)
            if not problem:
                return info(
                    HostKeyCheck.CERTIFIED,
                    True,
                    f"Host certificate '{printable(cert.key_id)}' signed by the CA in {where}.",
                ), False
            _log.warn(
                "The host certificate of {name} is not enough on its own: {problem}. "
                "Checking the key it certifies ({fingerprint}) as a plain host key.",
                name=name,
                problem=problem,
                fingerprint=shown,
            )

        outcome, entry = known.check_host(self.host, self.port, key_type, plain)
        if outcome is HostKeyCheck.REVOKED:
            assert entry is not None
            return info(
                outcome,
                False,
                f"The {key_type} host key for {name} ({shown}) is marked as revoked in "
                f"{entry.path}:{entry.line}. Host key verification failed.",
            ), False
        if any(b in self.accepted_blobs for b in {blob, plain}) or any(
            fingerprint_matches(plain, f) for f in self.accepted_fingerprints
        ):
            return info(
                outcome, True, f"The {key_type} host key {shown} is in the accepted keys."
            ), False
        if self.policy == "accept-any":
            _log.warn(
                "Warning: not checking the host key of {name} ({key_type} {fingerprint}): "
                "host_key_policy is accept-any.",
                name=name,
                key_type=algorithm,
                fingerprint=shown,
            )
            return info(outcome, True, "host_key_policy is accept-any"), False
        if outcome is HostKeyCheck.MATCH:
            assert entry is not None
            return info(outcome, True, f"Matches {entry.path}:{entry.line}."), False
        if outcome is HostKeyCheck.CHANGED:
            assert entry is not None
            return info(outcome, False, _changed_message(key_type, name, shown, entry)), False
        if self.policy == "accept-new" and self.known_hosts:
            return info(
                outcome, True, f"New key; accept-new writes it to {self.known_hosts[0]}."
            ), True
        files = ", ".join(str(p) for p in self.known_hosts) or "(none)"
        unread = f" ({'; '.join(known.problems)})" if known.problems else ""
        return info(
            outcome,
            False,
            f"No {key_type} host key is known for {name} (fingerprint {shown}) in "
            f"{files}{unread}. If you trust this key, add it there or allow new keys "
            "(policy accept-new). Host key verification failed.",
        ), False

    def _check_certificate(self, cert: SSHCertificate, known: KnownHosts) -> tuple[str, str]:
        """
        (where the trusted CA is, why the certificate is not enough or ``""``), as
        OpenSSH's check_host_key and check_host_cert decide.
        """
        name = host_lookup_name(self.host, self.port)
        cas = [
            (f"{e.path}:{e.line}", e.blob)
            for e in known.certificate_authorities(self.host, self.port)
        ]
        cas += [("the accepted CA keys", b) for b in self.accepted_ca_blobs]
        if not cas:
            return "", (f"no @cert-authority line names {name} and no accepted CA key was given")
        where = next((w for w, b in cas if b == cert.ca_blob), "")
        if not where:
            listed = ", ".join(dict.fromkeys(w for w, _ in cas))
            return "", (
                f"it is signed by {cert.ca_key_type} CA {cert.ca_fingerprint}, which is not "
                f"a certificate authority for {name} (those are in {listed})"
            )
        reason = check_host_certificate(cert, self.host, self._now())
        return where, reason or ""

    def _write(self, info: HostKeyInfo) -> None:
        # The plain key, also for a host certificate accepted as one (as OpenSSH writes it).
        key_type = info.key.sshType().decode("ascii")
        blob = info.certificate.public_blob if info.certificate is not None else info.blob
        path = self.known_hosts[0]
        line = host_key_line(self.host, self.port, key_type, blob, hashed=self.hash_known_hosts)
        try:
            append_private(path, line + "\n")
        except OSError as e:
            # OpenSSH's words (sshconnect.c); it connects all the same, and so do we.
            _log.warn(
                "Failed to add the host to the list of known hosts ({path}): {why}.",
                path=str(path),
                why=e.strerror or str(e),
            )
            return
        _log.warn(
            "Warning: Permanently added '{name}' ({key_type}) to the list of known hosts.",
            name=host_lookup_name(self.host, self.port),
            key_type=key_type,
        )


def append_private(path: Path, text: str) -> None:
    """
    Add ``text`` at the end of ``path``, a file of the user's own such as
    ``~/.ssh/known_hosts`` (RELIABILITY.md G1): missing directories are created 0700 (as
    OpenSSH creates ``~/.ssh``), and the file is written atomically, whatever the umask:
    a new file with the old contents and ``text``, mode 0600, renamed over the old one,
    so that a crash leaves the old file or the new one, never half of one. rtunnels
    writing at the same time take turns (``flock`` on the directory, which the rename
    leaves in place). A symbolic link is followed and kept; what is not a regular file
    (``/dev/null`` for ``UserKnownHostsFile=none``) is appended to as it is.

    :raises OSError: when it cannot be written (a directory in the way, no permission).
    """
    target = Path(os.path.realpath(path))
    _make_private_dirs(target.parent)
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        try:
            # O_NONBLOCK: opening a FIFO to look at it must not wait for a writer.
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            _replace_with(target, b"", text)
            return
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
            if not stat.S_ISREG(mode):
                with open(target, "a", encoding="utf-8") as f:
                    f.write(text)
                return
            with os.fdopen(os.dup(fd), "rb") as f:
                old = f.read()
        finally:
            os.close(fd)
        _replace_with(target, old, text)
    finally:
        os.close(directory)


def _replace_with(target: Path, old: bytes, text: str) -> None:
    """Write ``old`` + ``text`` to a new 0600 file and rename it over ``target``."""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(old + text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents with mode 0700, whatever the umask."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            d.chmod(0o700)


def _changed_message(algorithm: str, name: str, shown: str, entry: KnownHostEntry) -> str:
    # OpenSSH's banner (sshconnect.c), then the file and line of the old key as it names them.
    return (
        f"WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! The {algorithm} host key "
        f"for {name} is now {shown}, but {entry.path}:{entry.line} holds "
        "another. If the change is expected, remove that line. "
        "Host key verification failed."
    )
