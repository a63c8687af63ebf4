"""
User authentication: loading credentials and the ``ssh-userauth`` client.

Keys are loaded before connecting so that a missing, unreadable or undecryptable key file is
reported up front, naming the file, instead of as a vague refusal later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.service import SSHService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from typing_extensions import override

from rtunnel.client.credentials import Credential, Password, PrivateKeyFile
from rtunnel.errors import AuthenticationError, CredentialError

__all__ = ["CredentialError", "LoadedKey", "UserAuthClient", "load_credentials"]


@dataclass(frozen=True)
class LoadedKey:
    """A private key read from ``source``, ready to sign."""

    key: keys.Key
    source: str


def load_credentials(
    credentials: Sequence[Credential],
) -> tuple[list[LoadedKey], list[str]]:
    """
    Read every key file and collect the passwords.

    :raises CredentialError: naming the file and what is wrong with it.
    """
    loaded: list[LoadedKey] = []
    passwords: list[str] = []
    for credential in credentials:
        if isinstance(credential, Password):
            passwords.append(credential.password)
            continue
        loaded.append(_load_key_file(credential))
    return loaded, passwords


def _load_key_file(credential: PrivateKeyFile) -> LoadedKey:
    path = credential.path
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialError(f"Identity file {path} not accessible: {e.strerror or e}.") from None
    passphrase = credential.passphrase.encode("utf-8") if credential.passphrase else None
    try:
        key = keys.Key.fromString(data, passphrase=passphrase)
    except keys.EncryptedKeyError:
        raise CredentialError(f"Identity file {path} is encrypted: give its passphrase.") from None
    except (keys.BadKeyError, ValueError) as e:
        if passphrase is not None and "passphrase" in str(e).lower():
            raise CredentialError(f"Identity file {path}: incorrect passphrase.") from None
        raise CredentialError(
            f"Identity file {path} is not a private key rtunnel can read: {e}."
        ) from None
    if key.isPublic():
        raise CredentialError(
            f"Identity file {path} holds a public key; give the private key file."
        )
    return LoadedKey(key, str(path))


def signature_algorithm(key: keys.Key, server_sig_algs: bytes | None) -> bytes:
    """
    The public-key algorithm to sign with. RSA keys use SHA-2 (RFC 8332): OpenSSH 8.8 and
    later refuse SHA-1 ``ssh-rsa`` signatures. When the server listed ``server-sig-algs``
    (RFC 8308 §3.1) we pick from it; without the list we still use rsa-sha2-512, as OpenSSH
    does against any server it cannot ask.
    """
    if key.type() != "RSA":
        return bytes(key.sshType())
    if server_sig_algs is not None:
        offered = server_sig_algs.split(b",")
        for candidate in (b"rsa-sha2-512", b"rsa-sha2-256"):
            if candidate in offered:
                return candidate
        if b"ssh-rsa" in offered:
            return b"ssh-rsa"
    return b"rsa-sha2-512"


class UserAuthClient(userauth.SSHUserAuthClient):
    """
    Tries each key (signing straight away: the key is already in memory, so OpenSSH's
    "query first" round trip buys nothing), then each password.

    :ivar failure: set when the server has refused everything, for the transport to report.
    """

    preferredOrder = [b"publickey", b"password"]  # noqa: N815 (Conch attribute)

    def __init__(
        self,
        user: str,
        instance: SSHService,
        keys_to_try: Sequence[LoadedKey],
        passwords: Sequence[str],
    ) -> None:
        super().__init__(user.encode("utf-8"), instance)
        self._keys = list(keys_to_try)
        self._passwords = list(passwords)
        self._methods_left: tuple[str, ...] = ()
        self.failure: AuthenticationError | None = None

    @override
    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Deferred[None] | None:
        methods, _ = getNS(packet)
        self._methods_left = tuple(m for m in methods.decode("ascii", "replace").split(",") if m)
        # OpenSSH's wording (sshconnect2.c), so scripts that grep for it keep working.
        self.failure = AuthenticationError(
            f"Permission denied ({','.join(self._methods_left)}).", self._methods_left
        )
        result: Deferred[None] | None = super().ssh_USERAUTH_FAILURE(packet)
        return result

    @override
    def auth_publickey(self) -> Deferred[bool]:
        if not self._keys:
            return defer.succeed(False)
        loaded = self._keys.pop(0)
        key = loaded.key
        assert self.transport is not None
        algorithm = signature_algorithm(key, self.transport.peerExtensions.get(b"server-sig-algs"))
        public = key.public()
        self.lastPublicKey = public
        # RFC 4252 §7: the signed data is the session id followed by the request.
        session_id: bytes = self.transport.sessionID  # type: ignore[assignment]
        to_sign = (
            NS(session_id)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + NS(algorithm)
            + NS(public.blob())
        )
        signature = key.sign(to_sign, signatureType=algorithm)
        self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(public.blob()) + NS(signature))
        return defer.succeed(True)

    @override
    def getPassword(self, prompt: bytes | None = None) -> Deferred[bytes] | None:  # type: ignore[override]
        if not self._passwords:
            return None
        return defer.succeed(self._passwords.pop(0).encode("utf-8"))

    @override
    def auth_keyboard_interactive(self) -> bool:
        # keyboard-interactive belongs to the authentication issue. Declining here matters:
        # Conch would otherwise retry it after every failure, forever.
        return False
