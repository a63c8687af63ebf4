"""
User authentication: loading credentials and the ``ssh-userauth`` client.

Keys are loaded before connecting so that a missing, unreadable or undecryptable key file is
reported up front, naming the file, instead of as a vague refusal later.
"""

from __future__ import annotations

import base64
import inspect
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.service import SSHService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from typing_extensions import override

from rtunnel.client.credentials import (
    SUPPORTED_METHODS,
    AskPassword,
    AuthOptions,
    CertificateFile,
    Credential,
    KeyboardInteractive,
    KeyboardInteractiveChallenge,
    KeyboardInteractivePrompt,
    Password,
    PrivateKey,
    PrivateKeyFile,
    SSHAgent,
    password_prompt_matches,
)
from rtunnel.errors import AuthenticationError, CredentialError

__all__ = [
    "AuthOptions",
    "CredentialError",
    "LoadedKey",
    "UserAuthClient",
    "load_credentials",
    "password_prompt_matches",
]

_log = Logger()


@dataclass(frozen=True)
class LoadedKey:
    """
    A private key read from ``source``, ready to sign.

    :ivar certificate: an OpenSSH certificate for the key (its wire blob), offered
        instead of the bare public key.
    :ivar certificate_source: the file the certificate came from.
    """

    key: keys.Key
    source: str
    certificate: bytes | None = None
    certificate_source: str = ""


def load_credentials(
    credentials: Sequence[Credential],
) -> tuple[list[LoadedKey], list[str]]:
    """
    Read every key file and collect the passwords.

    :raises CredentialError: naming the file and what is wrong with it.
    """
    loaded: list[LoadedKey] = []
    passwords: list[str] = []
    certificates = [
        (c.path, _read_certificate(c.path, required=True))
        for c in credentials
        if isinstance(c, CertificateFile)
    ]
    for credential in credentials:
        if isinstance(credential, Password):
            passwords.append(credential.password)
        elif isinstance(credential, PrivateKeyFile):
            key = _load_key_file(credential)
            certificate = _load_certificate(credential)
            if certificate is not None:
                # As OpenSSH: the certificate first, then the bare key.
                loaded.append(
                    LoadedKey(key.key, key.source, certificate, str(_certificate_path(credential)))
                )
            # -o CertificateFile: every certificate for this key (ssh.c pairs them by key).
            for cert_path, blob in certificates:
                if blob is not None and certificate_public_blob(blob) == key.key.public().blob():
                    loaded.append(LoadedKey(key.key, key.source, blob, str(cert_path)))
            loaded.append(key)
        elif isinstance(credential, PrivateKey):
            key = _load_key_data(credential)
            if key.certificate is not None:
                loaded.append(key)
                key = LoadedKey(key.key, key.source)
            loaded.append(key)
        # AskPassword and KeyboardInteractive are callbacks, used during logon.
    return loaded, passwords


def _certificate_path(credential: PrivateKeyFile) -> Path:
    if credential.certificate is not None:
        return credential.certificate
    # ssh.c load_public_identity_files: "<identity>-cert.pub" beside the key.
    return credential.path.with_name(credential.path.name + "-cert.pub")


def _load_certificate(credential: PrivateKeyFile) -> bytes | None:
    """
    The certificate for a key: the one given, or ``<key>-cert.pub`` when it exists. Only
    the certificate's type is checked (``*-cert-v01@openssh.com``); the server checks the
    rest (signature, principals, validity).
    """
    return _read_certificate(
        _certificate_path(credential), required=credential.certificate is not None
    )


#: Public key fields after the nonce in a certificate (OpenSSH PROTOCOL.certkeys).
_CERT_KEY_FIELDS = {
    b"ssh-ed25519": 1,
    b"ssh-rsa": 2,
    b"ecdsa-sha2-nistp256": 2,
    b"ecdsa-sha2-nistp384": 2,
    b"ecdsa-sha2-nistp521": 2,
}


def certificate_public_blob(certificate: bytes) -> bytes | None:
    """
    The public key a certificate certifies, in wire form (None for a type rtunnel does
    not know): PROTOCOL.certkeys puts the key's own fields right after the nonce.
    """
    try:
        cert_type, rest = getNS(certificate)
        base = cert_type.split(b"-cert-v01@openssh.com")[0]
        count = _CERT_KEY_FIELDS.get(base)
        if count is None:
            return None
        _nonce, rest = getNS(rest)
        fields = []
        for _ in range(count):
            value, rest = getNS(rest)
            fields.append(NS(value))
    except (struct.error, IndexError):
        return None
    return NS(base) + b"".join(fields)


def _read_certificate(path: Path, *, required: bool) -> bytes | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        if not required:
            return None
        raise CredentialError(f"Certificate file {path} not found.") from None
    except OSError as e:
        raise CredentialError(
            f"Certificate file {path} not accessible: {e.strerror or e}."
        ) from None
    fields = text.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
        kind = getNS(blob)[0].decode("ascii")
    except (IndexError, ValueError, struct.error, UnicodeDecodeError):
        raise CredentialError(f"Certificate file {path} is not an OpenSSH certificate.") from None
    if not kind.endswith("-cert-v01@openssh.com") or fields[0] != kind:
        raise CredentialError(f"Certificate file {path} is not an OpenSSH certificate ({kind}).")
    return blob


def _load_key_file(credential: PrivateKeyFile) -> LoadedKey:
    path = credential.path
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialError(f"Identity file {path} not accessible: {e.strerror or e}.") from None
    return _load_key(data, path, f"Identity file {path}", credential.passphrase)


def _load_key_data(credential: PrivateKey) -> LoadedKey:
    value = credential.key
    certificate = credential.certificate
    cert_blob: bytes | None = None
    if certificate is not None:
        text = certificate.decode("ascii") if isinstance(certificate, bytes) else certificate
        try:
            cert_blob = base64.b64decode(text.split()[1], validate=True)
        except (IndexError, ValueError):
            raise CredentialError("The certificate given is not an OpenSSH certificate.") from None
    if isinstance(value, keys.Key):
        if value.isPublic():
            raise CredentialError("The key given is a public key; give the private key.")
        return LoadedKey(value, credential.source, cert_blob, credential.source)
    data = value.encode("utf-8") if isinstance(value, str) else value
    loaded = _load_key(
        data, Path(credential.source), f"The key {credential.source}", credential.passphrase
    )
    return LoadedKey(loaded.key, loaded.source, cert_blob, credential.source)


def _load_key(data: bytes, path: Path, what: str, given: Any) -> LoadedKey:
    passphrase = given.encode("utf-8") if isinstance(given, str) and given else None
    try:
        try:
            key = _parse_private_key(data, passphrase)
        except keys.EncryptedKeyError:
            if not callable(given):
                raise
            answer = given(path)
            if not answer:
                raise
            passphrase = answer.encode("utf-8")
            key = _parse_private_key(data, passphrase)
    except keys.EncryptedKeyError:
        raise CredentialError(f"{what} is encrypted: give its passphrase.") from None
    except (keys.BadKeyError, ValueError) as e:
        # Conch says "check values do not match" for a wrong OpenSSH-format passphrase.
        if passphrase is not None and any(
            word in str(e).lower() for word in ("passphrase", "check values")
        ):
            raise CredentialError(f"{what}: incorrect passphrase.") from None
        raise CredentialError(f"{what} is not a private key rtunnel can read: {e}.") from None
    if key.isPublic():
        raise CredentialError(f"{what} holds a public key; give the private key file.")
    return LoadedKey(key, str(path))


def _parse_private_key(data: bytes, passphrase: bytes | None) -> keys.Key:
    """
    Conch reads OpenSSH's format and PEM PKCS#1/SEC1; PKCS#8 (``BEGIN PRIVATE KEY``,
    ``BEGIN ENCRYPTED PRIVATE KEY``, as ``openssl genpkey`` writes) goes through
    ``cryptography``, whose key objects Conch's Key wraps.
    """
    if b"-----BEGIN PRIVATE KEY-----" not in data and (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data
    ):
        parsed: keys.Key = keys.Key.fromString(data, passphrase=passphrase)
        return parsed
    from cryptography.hazmat.primitives import serialization

    if b"ENCRYPTED PRIVATE KEY" in data and passphrase is None:
        raise keys.EncryptedKeyError("PKCS#8 key is encrypted")
    try:
        private = serialization.load_pem_private_key(
            data, password=passphrase if b"ENCRYPTED PRIVATE KEY" in data else None
        )
    except ValueError as e:
        if passphrase is not None:
            raise keys.BadKeyError("incorrect passphrase") from None
        raise keys.BadKeyError(str(e)) from None
    except TypeError as e:
        raise keys.BadKeyError(str(e)) from None
    wrapped: keys.Key = keys.Key(private)
    return wrapped


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


async def _resolve(value: object) -> Any:
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


def _certificate_algorithm(cert_type: bytes, signing: bytes) -> bytes:
    """
    The request's algorithm for a certificate: its own type, except RSA certificates,
    which name the SHA-2 signature (``rsa-sha2-512-cert-v01@openssh.com``, OpenSSH 7.8+).
    """
    if cert_type == b"ssh-rsa-cert-v01@openssh.com" and signing != b"ssh-rsa":
        return signing + b"-cert-v01@openssh.com"
    return cert_type


class UserAuthClient(userauth.SSHUserAuthClient):
    """
    The client side of ``ssh-userauth`` (RFC 4252): after the ``none`` probe, each
    ``USERAUTH_FAILURE`` makes it try the next method the server lists, in the preferred
    order, that still has something to try: the next key, the next password, another
    keyboard-interactive round. Every attempt uses something up, so it always ends: with
    success, or with :attr:`failure` ("Permission denied (METHODS).") and a disconnect.

    Partial success (RFC 4252 section 5.1, e.g. OpenSSH ``AuthenticationMethods
    publickey,password``) just carries on with the methods the server names next.

    Conch's own loop is not used: it restarts the method list after every failure, and
    its keyboard-interactive method always "has something to try", so a refused
    keyboard-interactive logon retried forever.

    :ivar failure: set when the server has refused everything, for the transport to report.
    """

    def __init__(
        self,
        user: str,
        instance: SSHService,
        keys_to_try: Sequence[LoadedKey],
        passwords: Sequence[str],
        options: AuthOptions | None = None,
    ) -> None:
        super().__init__(user.encode("utf-8"), instance)
        self._options = options or AuthOptions()
        self._keys = list(keys_to_try)
        self._passwords = list(passwords)
        self._kbd_passwords = list(passwords)
        self._ask = [c for c in self._options.credentials if isinstance(c, AskPassword)]
        self._kbd = [c for c in self._options.credentials if isinstance(c, KeyboardInteractive)]
        self._agents = [c for c in self._options.credentials if isinstance(c, SSHAgent)]
        self._agent: Any = None
        self._agent_keys: list[bytes] | None = None
        self._asked = 0
        self._kbd_rounds = 0
        self._last_password: bytes | None = None
        self._methods_left: tuple[str, ...] = ()
        self.partial: list[str] = []
        self.failure: AuthenticationError | None = None

    @property
    def _user_text(self) -> str:
        return self.user.decode("utf-8", "replace")

    # -- the loop

    def _publickey_signed_data(self, algorithm: bytes, blob: bytes) -> bytes:
        """RFC 4252 section 7: the session id followed by the publickey request."""
        assert self.transport is not None
        session_id: bytes = self.transport.sessionID  # type: ignore[assignment]
        return (
            NS(session_id)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + NS(algorithm)
            + NS(blob)
        )

    @override
    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Deferred[None]:  # type: ignore[override]
        methods, rest = getNS(packet)
        partial = rest[:1] not in (b"", b"\x00")
        self._methods_left = tuple(m for m in methods.decode("ascii", "replace").split(",") if m)
        if partial:
            # RFC 4252 section 5.1: the last method worked, but more are needed.
            done = self.lastAuth.decode("ascii", "replace")
            self.partial.append(done)
            _log.info(
                "Authenticated using {method} with partial success; continuing with {left}.",
                method=done,
                left=",".join(self._methods_left),
            )
        # OpenSSH's wording (sshconnect2.c), so scripts that grep for it keep working.
        self.failure = AuthenticationError(
            f"Permission denied ({','.join(self._methods_left)}).", self._methods_left
        )
        return Deferred.fromCoroutine(self._try_next())

    def _order(self) -> list[str]:
        offered = self._methods_left
        order = [m for m in self._options.preferred if m in offered]
        if self._options.try_all_methods:
            order += [m for m in offered if m in SUPPORTED_METHODS and m not in order]
        return order

    async def _try_next(self) -> None:
        for method in self._order():
            if await self._attempt(method):
                return
        self._give_up()

    async def _attempt(self, method: str) -> bool:
        if method == "publickey":
            return self._try_key() or await self._try_agent_key()
        if method == "password":
            password = await self._next_password(self._passwords)
            if password is None:
                return False
            self._last_password = password
            self.askForAuth(b"password", b"\x00" + NS(password))
            return True
        if method == "keyboard-interactive":
            if self._kbd_rounds >= self._options.number_of_password_prompts:
                return False
            if not (self._kbd or self._kbd_passwords or self._can_ask()):
                return False
            self._kbd_rounds += 1
            # RFC 4256 section 3.1: language tag and submethods, both empty.
            self.askForAuth(b"keyboard-interactive", NS(b"") + NS(b""))
            return True
        return False

    def _give_up(self) -> None:
        assert self.transport is not None
        if self.failure is None:
            self.failure = AuthenticationError("Permission denied (none).", ())
        self.transport.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            b"no more authentication methods available",
        )

    # -- publickey

    def _try_key(self) -> bool:
        if not self._keys:
            return False
        loaded = self._keys.pop(0)
        key = loaded.key
        assert self.transport is not None
        signing = signature_algorithm(key, self.transport.peerExtensions.get(b"server-sig-algs"))
        public = key.public()
        self.lastPublicKey = public
        algorithm, blob = signing, public.blob()
        if loaded.certificate is not None:
            # OpenSSH PROTOCOL.certkeys: the request names the certificate algorithm and
            # carries the certificate; the signature is the key's own ("rsa-sha2-512"
            # for "rsa-sha2-512-cert-v01@openssh.com").
            blob = loaded.certificate
            algorithm = _certificate_algorithm(getNS(blob)[0], signing)
        to_sign = self._publickey_signed_data(algorithm, blob)
        signature = key.sign(to_sign, signatureType=signing)
        self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(blob) + NS(signature))
        return True

    async def _try_agent_key(self) -> bool:
        if self._agent_keys is None:
            self._agent_keys = []
            for credential in self._agents:
                path = credential.path or os.environ.get("SSH_AUTH_SOCK")
                if not path:
                    continue
                from rtunnel.client.agent import connect_agent

                reactor = self._options.reactor
                if reactor is None:
                    from twisted.internet import reactor
                try:
                    self._agent = await connect_agent(reactor, path)
                    found = await self._agent.identities()
                except Exception as e:
                    _log.warn("Ignoring the agent at {path}: {error}", path=path, error=e)
                    continue
                self._agent_keys = [blob for blob, _comment in found]
                break
        if not self._agent_keys:
            return False
        blob = self._agent_keys.pop(0)
        assert self.transport is not None
        key_type = getNS(blob)[0]
        if key_type.endswith(b"-cert-v01@openssh.com"):
            # The certificate's key type (OpenSSH PROTOCOL.certkeys): the key follows.
            base = key_type.split(b"-cert-v01@openssh.com")[0]
            kind = b"ssh-rsa" if base == b"ssh-rsa" else base
        else:
            kind = key_type
        signing = kind
        if kind == b"ssh-rsa":
            offered = self.transport.peerExtensions.get(b"server-sig-algs")
            signing = b"rsa-sha2-512"
            if offered is not None:
                algs = offered.split(b",")
                signing = next(
                    (a for a in (b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa") if a in algs),
                    b"rsa-sha2-512",
                )
        algorithm = _certificate_algorithm(key_type, signing) if key_type != kind else signing
        to_sign = self._publickey_signed_data(algorithm, blob)
        try:
            signature = await self._agent.sign(blob, to_sign, signing)
        except Exception as e:
            _log.warn("The agent did not sign: {error}", error=e)
            return await self._try_agent_key()
        self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(blob) + NS(signature))
        return True

    @override
    def serviceStopped(self) -> None:
        super().serviceStopped()
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    @override
    def auth_publickey(self) -> Deferred[bool]:
        # Conch's entry point, kept for callers of tryAuth.
        return Deferred.fromCoroutine(self._attempt("publickey"))

    # -- passwords

    def _can_ask(self) -> bool:
        return bool(self._ask) and self._asked < self._options.number_of_password_prompts

    async def _next_password(self, queue: list[str], prompt: str | None = None) -> bytes | None:
        if queue:
            return queue.pop(0).encode("utf-8")
        while self._can_ask():
            self._asked += 1
            if prompt is None:
                host = self._options.host
                prompt = f"{self._user_text}@{host}'s password: " if host else "Password: "
            answer = await _resolve(self._ask[0].ask(prompt))
            if answer is None:
                # The user gave up: ask no more.
                self._ask = []
                return None
            return str(answer).encode("utf-8")
        return None

    @override
    def ssh_USERAUTH_PK_OK(self, packet: bytes) -> None:
        # Message 60 means PASSWD_CHANGEREQ after a password request and INFO_REQUEST
        # during keyboard-interactive (RFC 4252 section 8, RFC 4256 section 3.2).
        if self.lastAuth == b"password":
            Deferred.fromCoroutine(self._password_change_requested(packet)).addErrback(
                self._protocol_error
            )
        elif self.lastAuth == b"keyboard-interactive":
            Deferred.fromCoroutine(self._info_request(packet)).addErrback(self._protocol_error)
        else:
            # PK_OK to a query we never send (we sign straight away): ignore it.
            _log.debug("unexpected USERAUTH_PK_OK for {method}", method=self.lastAuth)

    async def _password_change_requested(self, packet: bytes) -> None:
        # RFC 4252 section 8: SSH_MSG_USERAUTH_PASSWD_CHANGEREQ (prompt, language).
        prompt = getNS(packet)[0].decode("utf-8", "replace").strip()
        change = self._options.password_change
        new = None
        if change is not None and self._last_password is not None:
            new = await _resolve(change(prompt))
        if new is None:
            self.failure = AuthenticationError(
                f"The server requires a new password for {self._user_text} "
                f"(it says: {prompt!r}). Change it with an interactive log-on (e.g. ssh "
                "or passwd), or give a password_change callback, then try again.",
                self._methods_left,
            )
            self._give_up()
            return
        old, self._last_password = self._last_password, None
        assert old is not None
        self.askForAuth(b"password", b"\x01" + NS(old) + NS(str(new).encode("utf-8")))

    def _protocol_error(self, reason: Any) -> None:
        # A callback failed, or gave the wrong number of answers: give up, saying why.
        error = reason.value
        if not isinstance(error, AuthenticationError):
            _log.failure("keyboard-interactive callback failed", failure=reason)
            error = AuthenticationError(
                f"The keyboard-interactive callback failed: {error!r}.", self._methods_left
            )
        self.failure = error
        self._give_up()

    # -- keyboard-interactive

    async def _info_request(self, packet: bytes) -> None:
        name, instruction, _lang, data = getNS(packet, 3)
        (count,) = struct.unpack(">L", data[:4])
        data = data[4:]
        raw: list[tuple[str, bool]] = []
        for _ in range(count):
            encoded, data = getNS(data)
            raw.append((encoded.decode("utf-8", "replace"), data[:1] not in (b"", b"\x00")))
            data = data[1:]
        pattern = self._options.password_prompt
        prompts: list[KeyboardInteractivePrompt] = []
        for text, echo in raw:
            answer: str | None = None
            if pattern is not None and not echo and password_prompt_matches(pattern, text):
                password = await self._next_password(self._kbd_passwords, text)
                if password is not None:
                    answer = password.decode("utf-8")
            prompts.append(KeyboardInteractivePrompt(text, echo, answer))
        answers: list[str] | None = [p.answer for p in prompts]  # type: ignore[misc]
        if any(p.answer is None for p in prompts):
            answers = None
            if self._kbd:
                challenge = KeyboardInteractiveChallenge(
                    name.decode("utf-8", "replace"),
                    instruction.decode("utf-8", "replace"),
                    tuple(prompts),
                )
                given = await _resolve(self._kbd[0].respond(challenge))
                if given is not None:
                    answers = [str(a) for a in given]
                    if len(answers) != len(prompts):
                        raise AuthenticationError(
                            f"The keyboard-interactive callback gave {len(answers)} answers "
                            f"for {len(prompts)} prompts."
                        )
        if answers is None:
            # Nothing to answer with: abandon this exchange (RFC 4256 section 3.3: a new
            # request ends it); the server's FAILURE moves us on.
            self.askForAuth(b"none", b"")
            return
        assert self.transport is not None
        body = struct.pack(">L", len(answers)) + b"".join(NS(a.encode("utf-8")) for a in answers)
        self.transport.sendPacket(userauth.MSG_USERAUTH_INFO_RESPONSE, body)

    @override
    def auth_keyboard_interactive(self) -> bool:
        # Conch's entry point; the loop above never calls it.
        return False

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:  # noqa: N802 (Conch dispatch)
        """RFC 4252 section 5.4: show the server's banner in the log."""
        message = getNS(packet)[0].decode("utf-8", "replace")
        _log.info("{banner}", banner=message.rstrip())
