"""
User authentication: loading credentials and the ``ssh-userauth`` client.

Keys are loaded before connecting so that a missing, unreadable or undecryptable key file is
reported up front, naming the file, instead of as a vague refusal later. The exception is
a key whose passphrase is an :class:`~rtunnel.AskPassword`: that is asked when the key is
about to be tried, as ``ssh`` asks.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.service import SSHService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from typing_extensions import override

from rtunnel._core.sshparam import decode_packet, read_ssh_params
from rtunnel._core.text import printable, printable_lines
from rtunnel.client.auth import _gssapi, _keyformats
from rtunnel.client.auth._pubkey import CERT_SUFFIX, choose_signature_algorithm, request_algorithm
from rtunnel.client.auth.askpass import BlockingPrompt, CannotAsk
from rtunnel.client.auth.credentials import (
    GSSAPI,
    SUPPORTED_METHODS,
    AskPassword,
    CertificateFile,
    Credential,
    CustomAuth,
    CustomAuthStep,
    KeyboardInteractive,
    KeyboardInteractiveChallenge,
    KeyboardInteractivePrompt,
    Password,
    PrivateKey,
    PrivateKeyFile,
    SSHAgent,
    UserAuthSettings,
    key_file_problem,
    password_prompt_matches,
)
from rtunnel.client.hostkeys.certificates import CertificateError, parse_certificate
from rtunnel.errors import AuthenticationError, CredentialError, RTunnelError, SpecError

__all__ = [
    "CredentialError",
    "LoadedKey",
    "UserAuthClient",
    "UserAuthSettings",
    "load_credentials",
    "password_prompt_matches",
]

_log = Logger()


class PendingKey:
    """
    An encrypted key whose passphrase is asked when the key is about to be tried (an
    :class:`~rtunnel.AskPassword` passphrase). Decrypted once per logon; the entries for
    the key and its certificates share it.
    """

    def __init__(
        self,
        data: bytes,
        path: Path,
        what: str,
        asker: AskPassword | None,
        remember: Callable[[keys.Key], None] | None = None,
    ) -> None:
        self.data = data
        self.path = path
        self.what = what
        self.asker = asker
        self._remember = remember
        self._done = False
        self._key: keys.Key | None = None

    async def resolve(self, attempts: int, reactor: Any = None) -> keys.Key | None:
        """
        The private key, or None when it is skipped: as ssh (sshconnect2.c,
        ``load_identity_file``), ask up to ``attempts`` times; an empty answer skips it.
        ``reactor`` (the tunnel's) runs a prompt that blocks.

        :raises CredentialError: when there is nobody to ask, or the file is unreadable.
        """
        if self._done:
            return self._key
        self._done = True
        if self.asker is None:
            raise CredentialError(f"{self.what} is encrypted: give its passphrase.")
        prompt = f"Enter passphrase for key '{self.path}': "
        for _ in range(max(attempts, 1)):
            try:
                answer = await _resolve(self.asker.ask(prompt), reactor)
            except CannotAsk as e:
                # Said at the default level: otherwise only "Permission denied" tells.
                _log.warn(
                    'Load key "{path}": it is encrypted, and nothing can ask for its '
                    "passphrase ({reason}).",
                    path=str(self.path),
                    reason=e.reason,
                )
                return None
            if not answer:
                _log.debug("no passphrase given for {path}: trying the next key", path=self.path)
                return None
            try:
                self._key = _parse_private_key(self.data, str(answer).encode("utf-8"))
                if self._remember is not None:
                    self._remember(self._key)
                return self._key
            except (keys.BadKeyError, ValueError) as e:
                if not _wrong_passphrase(e):
                    raise CredentialError(
                        f"{self.what} is not a private key rtunnel can read: {e}."
                    ) from None
                _log.info("{what}: incorrect passphrase.", what=self.what)
        return None


@dataclass(frozen=True)
class LoadedKey:
    """
    A private key read from ``source``, ready to sign.

    :ivar key: the private key; while :attr:`pending`, its public key if the file shows it
        in clear (else None); None too for a certificate whose key only the agent holds.
    :ivar certificate: an OpenSSH certificate for the key (its wire blob), offered
        instead of the bare public key.
    :ivar certificate_source: the file the certificate came from.
    :ivar pending: set for an encrypted key whose passphrase is asked when it is tried.
    """

    key: keys.Key | None
    source: str
    certificate: bytes | None = None
    certificate_source: str = ""
    pending: PendingKey | None = None

    @property
    def public_blob(self) -> bytes | None:
        """The public key, in wire form, if known."""
        return None if self.key is None else bytes(self.key.public().blob())

    @property
    def offered_blob(self) -> bytes | None:
        """What the request carries: the certificate, or the public key."""
        return self.certificate if self.certificate is not None else self.public_blob


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
    paired: set[int] = set()
    for credential in credentials:
        if isinstance(credential, Password):
            passwords.append(credential.password)
        elif isinstance(credential, PrivateKeyFile):
            key = _load_key_file(credential)
            certificate = _load_certificate(credential)
            if certificate is not None:
                # As OpenSSH: the certificate first, then the bare key.
                loaded.append(
                    LoadedKey(
                        key.key,
                        key.source,
                        certificate,
                        str(_certificate_path(credential)),
                        key.pending,
                    )
                )
            # -o CertificateFile: every certificate for this key (ssh.c pairs them by key).
            for index, (cert_path, blob) in enumerate(certificates):
                if (
                    blob is not None
                    and key.public_blob is not None
                    and certificate_public_blob(blob) == key.public_blob
                ):
                    paired.add(index)
                    loaded.append(LoadedKey(key.key, key.source, blob, str(cert_path), key.pending))
            loaded.append(key)
        elif isinstance(credential, PrivateKey):
            key = _load_key_data(credential)
            if key.certificate is not None:
                loaded.append(key)
                key = LoadedKey(key.key, key.source, pending=key.pending)
            loaded.append(key)
        elif isinstance(credential, GSSAPI):
            # Up front, like a missing key file: python-gssapi is an optional dependency
            # (imported only when the server offers gssapi-with-mic).
            _gssapi.require_gssapi()
        # AskPassword, KeyboardInteractive and CustomAuth are callbacks, used during logon.
    # Certificates for no key file: the agent may hold their key (sshconnect2.c signs a
    # certificate with the agent's plain key).
    for index, (cert_path, blob) in enumerate(certificates):
        if index not in paired and blob is not None:
            loaded.append(LoadedKey(None, str(cert_path), blob, str(cert_path)))
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


def certificate_public_blob(certificate: bytes) -> bytes | None:
    """
    The public key a certificate certifies, in wire form (None for what is not a
    certificate of a type rtunnel knows). The CA's signature is the server's to check.
    """
    try:
        return parse_certificate(certificate, verify=False).public_blob
    except CertificateError:
        return None


def _shown(path: Path) -> str:
    # A name the user gave, on one line: ssh's log escapes it too (log.c, strnvis).
    return printable(str(path), None)


def _read_certificate(path: Path, *, required: bool) -> bytes | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ValueError):
        # ValueError: a name no file can have (a NUL, a lone surrogate), so none is there.
        if not required:
            return None
        raise CredentialError(f"Certificate file {_shown(path)} not found.") from None
    except OSError as e:
        raise CredentialError(
            f"Certificate file {_shown(path)} not accessible: {e.strerror or e}."
        ) from None
    fields = text.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
        kind = getNS(blob)[0].decode("ascii")
    except (IndexError, ValueError, struct.error, UnicodeDecodeError):
        raise CredentialError(
            f"Certificate file {_shown(path)} is not an OpenSSH certificate."
        ) from None
    if not kind.endswith("-cert-v01@openssh.com") or fields[0] != kind:
        raise CredentialError(
            f"Certificate file {_shown(path)} is not an OpenSSH certificate ({kind})."
        )
    return blob


def _load_key_file(credential: PrivateKeyFile) -> LoadedKey:
    path = credential.path
    problem = key_file_problem(path, check_permissions=credential.check_permissions)
    if problem is not None and problem.reason == "bad permissions":
        # ssh's "UNPROTECTED PRIVATE KEY FILE!" block, then what to do about it.
        raise CredentialError(
            "\n".join(problem.lines) + f"\nchmod 600 {_shown(path)}, or give PrivateKeyFile(..., "
            "check_permissions=False) for a key whose permissions cannot be changed."
        )
    if problem is not None and problem.reason == "not a regular file":
        # Reading a FIFO would block the reactor; ssh itself hangs there.
        raise CredentialError(f"Identity file {_shown(path)} not accessible: not a regular file.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialError(
            f"Identity file {_shown(path)} not accessible: {e.strerror or e}."
        ) from None
    # An encrypted key decrypted at an earlier logon (a reconnect) is not asked for again
    # while the file is unchanged (PrivateKeyFile's docstring).
    digest = hashlib.sha256(data).digest()
    unlocked = credential._unlocked
    if digest in unlocked:
        return LoadedKey(unlocked[digest], str(path))

    def remember(key: keys.Key) -> None:
        unlocked.clear()
        unlocked[digest] = key

    return _load_key(
        data,
        path,
        f"Identity file {_shown(path)}",
        credential.passphrase,
        pub_file=True,
        remember=remember,
    )


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
    return LoadedKey(loaded.key, loaded.source, cert_blob, credential.source, loaded.pending)


def _wrong_passphrase(error: Exception) -> bool:
    # Conch says "check values do not match" for a wrong OpenSSH-format passphrase.
    return isinstance(error, _keyformats.WrongPassphrase) or any(
        word in str(error).lower() for word in ("passphrase", "check values")
    )


def _public_key_in_clear(data: bytes, path: Path, pub_file: bool) -> keys.Key | None:
    """The public key of an encrypted key file: stored in clear, or in ``PATH.pub``."""
    blob = _keyformats.public_blob(data)
    if blob is None and pub_file:
        try:
            blob = keys.Key.fromFile(str(path) + ".pub").blob()
        except (OSError, keys.BadKeyError, ValueError, IndexError):
            blob = None
    if blob is None:
        return None
    try:
        public: keys.Key = keys.Key.fromString(blob)
    except (keys.BadKeyError, ValueError):
        return None
    return public


def _load_key(
    data: bytes,
    path: Path,
    what: str,
    given: Any,
    *,
    pub_file: bool = False,
    remember: Callable[[keys.Key], None] | None = None,
) -> LoadedKey:
    """``remember`` gets the key when it was read with a passphrase (given or asked)."""
    passphrase = given.encode("utf-8") if isinstance(given, str) and given else None
    try:
        try:
            key = _parse_private_key(data, passphrase)
        except keys.EncryptedKeyError:
            if isinstance(given, AskPassword):
                # Asked when the key is tried (PendingKey), as ssh asks.
                public = _public_key_in_clear(data, path, pub_file)
                pending = PendingKey(data, path, what, given, remember)
                return LoadedKey(public, str(path), pending=pending)
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
        if passphrase is not None and _wrong_passphrase(e):
            raise CredentialError(f"{what}: incorrect passphrase.") from None
        raise CredentialError(f"{what} is not a private key rtunnel can read: {e}.") from None
    if key.isPublic():
        raise CredentialError(f"{what} holds a public key; give the private key file.")
    if passphrase is not None and remember is not None:
        remember(key)
    return LoadedKey(key, str(path))


def _parse_private_key(data: bytes, passphrase: bytes | None) -> keys.Key:
    """
    Conch reads OpenSSH's format and PEM PKCS#1/SEC1; PKCS#8 (``BEGIN PRIVATE KEY``,
    ``BEGIN ENCRYPTED PRIVATE KEY``, as ``openssl genpkey`` writes), PuTTY ``.ppk`` and
    PKCS#12 go through ``cryptography``, whose key objects Conch's Key wraps.
    """
    if _keyformats.is_ppk(data) or _keyformats.is_pkcs12(data):
        load = _keyformats.load_ppk if _keyformats.is_ppk(data) else _keyformats.load_pkcs12
        try:
            return keys.Key(load(data, passphrase))
        except _keyformats.PassphraseNeeded:
            raise keys.EncryptedKeyError("the key is encrypted") from None
        except _keyformats.KeyFormatError as e:
            raise keys.BadKeyError(str(e)) from None
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
    The public-key algorithm to sign with, chosen automatically. RSA keys use SHA-2
    (RFC 8332): OpenSSH 8.8 and later refuse SHA-1 ``ssh-rsa`` signatures. When the server
    listed ``server-sig-algs`` (RFC 8308 §3.1) we pick from it; without the list we still
    use rsa-sha2-512, as OpenSSH does against any server it cannot ask.
    """
    chosen = choose_signature_algorithm(
        bytes(key.sshType()), certificate=False, server_sig_algs=server_sig_algs, accepted=None
    )
    assert chosen is not None
    return chosen


async def _resolve(value: object, reactor: Any = None) -> Any:
    """
    A callback's answer: awaited when it is a Deferred or an awaitable; a
    :class:`~rtunnel.client.auth.askpass.BlockingPrompt` (the command's terminal and
    askpass prompts) is run with the tunnel's ``reactor``, never the global one (which
    is not the one running under rtunnel.blocking or rtunnel.aio).
    """
    if isinstance(value, BlockingPrompt):
        if reactor is None:
            raise CredentialError(
                "A prompt that blocks (terminal or askpass) needs the tunnel's reactor: "
                "give UserAuthSettings.reactor."
            )
        value = value.run(reactor)
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


@dataclass
class _Candidate:
    """
    One publickey attempt: a key file entry (maybe signed by the agent), or an agent key.

    :ivar loaded: the key file entry, or None for an agent-only key.
    :ivar agent_blob: the agent key that signs, if the agent does.
    """

    loaded: LoadedKey | None
    agent_blob: bytes | None = None

    @property
    def offered(self) -> bytes | None:
        """The blob the request carries."""
        if self.loaded is None:
            return self.agent_blob
        return self.loaded.offered_blob


@dataclass
class _GSSAttempt:
    """
    One gssapi-with-mic exchange in progress.

    :ivar first: the first token, held until the server has chosen the mechanism.
    :ivar rounds: the messages taken from the server (bounded by ``MAX_ROUNDS``).
    :ivar finished: the MIC (or the server's error token) is done; SUCCESS or FAILURE next.
    """

    exchange: _gssapi.GSSExchange
    first: bytes | None
    rounds: int = 0
    finished: bool = False


def _one_string(packet: bytes) -> bytes:
    """
    The packet's ``string`` (RFC 4251 section 5).

    :raises ValueError: when it is cut short.
    """
    if len(packet) < 4 or len(packet) - 4 < struct.unpack(">L", packet[:4])[0]:
        raise ValueError("truncated string")
    value, _rest = getNS(packet)
    return bytes(value)


class UserAuthClient(userauth.SSHUserAuthClient):
    """
    The client side of ``ssh-userauth`` (RFC 4252): after the ``none`` probe, each
    ``USERAUTH_FAILURE`` makes it try the next method the server lists, in the preferred
    order, that still has something to try: the next key, the next password, another
    keyboard-interactive round. Every attempt uses something up, so it always ends: with
    success, or with :attr:`failure` ("Permission denied (METHODS).") and a disconnect.

    Partial success (RFC 4252 section 5.1, e.g. OpenSSH ``AuthenticationMethods
    publickey,password``) just carries on with the methods the server names next.

    A :class:`~rtunnel.CustomAuth` hook sees each ``USERAUTH_FAILURE`` first and may answer
    with its own packet; while its exchange goes on, the server's method-specific
    messages (60-79) go to it too. Likewise, while a ``gssapi-with-mic`` exchange
    (:class:`~rtunnel.GSSAPI`) goes on, they are its messages (RFC 4462 section 3).

    Conch's own loop is not used: it restarts the method list after every failure, and
    its keyboard-interactive method always "has something to try", so a refused
    keyboard-interactive logon retried forever.

    :ivar failure: set when the server has refused everything (or a credential failed),
        for the transport to report.
    """

    def __init__(
        self,
        user: str,
        instance: SSHService,
        keys_to_try: Sequence[LoadedKey],
        passwords: Sequence[str],
        options: UserAuthSettings | None = None,
    ) -> None:
        super().__init__(user.encode("utf-8"), instance)
        self._options = options or UserAuthSettings()
        self._keys = list(keys_to_try)
        self._passwords = list(passwords)
        self._kbd_passwords = list(passwords)
        self._ask = [c for c in self._options.credentials if isinstance(c, AskPassword)]
        self._kbd = [c for c in self._options.credentials if isinstance(c, KeyboardInteractive)]
        self._agents = [c for c in self._options.credentials if isinstance(c, SSHAgent)]
        self._custom = [c for c in self._options.credentials if isinstance(c, CustomAuth)]
        self._custom_declined = False
        self._custom_active = False
        self._gss_queue = [c for c in self._options.credentials if isinstance(c, GSSAPI)]
        self._gss: _GSSAttempt | None = None
        self._agent: Any = None
        self._candidates: list[_Candidate] | None = None
        self._asked = 0
        self._kbd_rounds = 0
        self._last_password: bytes | None = None
        self._methods_left: tuple[str, ...] = ()
        self.partial: list[str] = []
        self.failure: RTunnelError | None = None

    @property
    def _user_text(self) -> str:
        return self.user.decode("utf-8", "replace")

    # -- the loop

    def _publickey_signed_data(self, algorithm: bytes, blob: bytes) -> bytes:
        """RFC 4252 section 7: the session id followed by the publickey request."""
        return (
            NS(self._session_id())
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + NS(algorithm)
            + NS(blob)
        )

    def _session_id(self) -> bytes:
        assert self.transport is not None
        session_id: bytes = self.transport.sessionID  # type: ignore[assignment]
        return session_id

    @override
    def packetReceived(self, messageNum: int, packet: bytes) -> Any:
        # RFC 4252 section 6: 60-79 are method-specific; during a custom exchange they
        # belong to the hook, whatever Conch would take them for.
        if self._custom_active and 60 <= messageNum <= 79:
            d = Deferred.fromCoroutine(self._custom_step(bytes((messageNum,)) + packet))
            d.addErrback(self._hook_failed, "custom authentication hook")
            return None
        # RFC 4462 section 3: the same numbers are gssapi-with-mic's while it is in progress.
        if self._gss is not None and self.lastAuth == b"gssapi-with-mic" and 60 <= messageNum <= 79:
            self._gssapi_message(messageNum, packet)
            return None
        return super().packetReceived(messageNum, packet)

    @override
    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Deferred[None]:  # type: ignore[override]
        self._gss = None
        methods, rest = getNS(packet)
        partial = rest[:1] not in (b"", b"\x00")
        # The server's names reach "Permission denied (...)." at the default level: escaped
        # and capped (RELIABILITY.md D17).
        self._methods_left = tuple(printable(m, 64) for m in methods.split(b",")[:32] if m)
        if partial:
            # RFC 4252 section 5.1: the last method worked, but more are needed.
            done = self.lastAuth.decode("ascii", "replace")
            self.partial.append(done)
            # A new stage: a custom hook that declined may want this one.
            self._custom_declined = False
            _log.info(
                "Authenticated using {method} with partial success; continuing with {left}.",
                method=done,
                left=",".join(self._methods_left),
            )
        # OpenSSH's wording (sshconnect2.c), so scripts that grep for it keep working.
        self.failure = AuthenticationError(
            f"Permission denied ({','.join(self._methods_left)}).", self._methods_left
        )
        d = Deferred.fromCoroutine(self._try_next(bytes((userauth.MSG_USERAUTH_FAILURE,)) + packet))
        d.addErrback(self._hook_failed, "custom authentication hook")
        return d

    def _order(self) -> list[str]:
        offered = self._methods_left
        order = [m for m in self._options.preferred if m in offered]
        if self._options.try_all_methods:
            order += [m for m in offered if m in SUPPORTED_METHODS and m not in order]
        return order

    async def _try_next(self, failure_packet: bytes) -> None:
        try:
            custom = self._custom and not self._custom_declined
            if custom and await self._custom_step(failure_packet):
                return
            self._custom_active = False
        except CredentialError as e:
            self.failure = e
            self._give_up()
            return
        await self._try_methods()

    async def _try_methods(self) -> None:
        """Try the next method that has something to try; give up when none has."""
        try:
            for method in self._order():
                if await self._attempt(method):
                    return
        except CredentialError as e:
            # A key that could not be read at its turn (an AskPassword passphrase).
            self.failure = e
        self._give_up()

    async def _attempt(self, method: str) -> bool:
        if method == "gssapi-with-mic":
            return await self._try_gssapi()
        if method == "publickey":
            return await self._try_publickey()
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

    # -- custom authentication

    async def _custom_step(self, packet: bytes) -> bool:
        """
        Show ``packet`` to the custom hook and send its answer.

        :return: whether it answered (False: it declined).
        """
        step = CustomAuthStep(
            packet,
            self._user_text,
            self.instance.name.decode("ascii", "replace"),
            self._session_id(),
        )
        answer = await _resolve(self._custom[0].respond(step), self._options.reactor)
        if answer is None:
            self._custom_declined = True
            if self._custom_active and packet[:1] != bytes((userauth.MSG_USERAUTH_FAILURE,)):
                # Declined in the middle of its exchange: a new request ends it (RFC 4256
                # section 3.3 says so for keyboard-interactive); the FAILURE that answers
                # it moves on to rtunnel's own methods.
                self._custom_active = False
                self.askForAuth(b"none", b"")
                return True
            self._custom_active = False
            return False
        data = decode_packet(answer) if isinstance(answer, str) else bytes(answer)
        if not data:
            raise SpecError(
                "The custom authentication hook returned an empty packet: return None to "
                "decline, or a packet with its message number first."
            )
        number = data[0]
        if number != userauth.MSG_USERAUTH_REQUEST and not 60 <= number <= 79:
            raise SpecError(
                f"The custom authentication hook returned message {number}: send a "
                "USERAUTH_REQUEST (50) or a method-specific message (60-79), message "
                "number first."
            )
        if number == userauth.MSG_USERAUTH_REQUEST:
            # Its method, for the messages about partial success.
            method = read_ssh_params(data[1:], "s,s,s")[2]
            self.lastAuth = str(method).encode("utf-8")
        self._custom_active = True
        assert self.transport is not None
        self.transport.sendPacket(number, data[1:])
        return True

    def _hook_failed(self, reason: Any, what: str) -> None:
        error = reason.value
        if not isinstance(error, RTunnelError):
            _log.failure("{what} failed", failure=reason, what=what)
            error = AuthenticationError(f"The {what} failed: {error!r}.", self._methods_left)
        self.failure = error
        self._give_up()

    # -- gssapi-with-mic (RFC 4462 section 3; the exchange itself is in _gssapi)

    async def _try_gssapi(self) -> bool:
        while self._gss_queue:
            credential = self._gss_queue.pop(0)
            target = _gssapi.target_name(self._options.host, credential.spn, credential.realm)
            principal = None
            if credential.password is not None:
                principal = credential.principal or self.user.decode("utf-8", "replace")
                if "@" not in principal and credential.realm is not None:
                    principal = f"{principal}@{credential.realm}"
            exchange = _gssapi.GSSExchange(
                target, credential.delegate, principal, credential.password
            )
            try:
                # Fetches the service ticket from the KDC: off the reactor thread.
                first = await self._in_thread(exchange.start)
            except _gssapi.GSSAPIFailure as e:
                # As OpenSSH (ssh_gssapi_check_mechanism): not offered when it cannot work.
                if principal is not None:
                    _log.info(
                        "gssapi-with-mic: no Kerberos ticket for {name} with the password "
                        'given for {principal} (a wrong password reads "Decrypt integrity '
                        'check failed" or "Preauthentication failed"): {reason}; trying '
                        "the next method.",
                        name=target.text,
                        principal=principal,
                        reason=str(e),
                    )
                else:
                    _log.info(
                        "gssapi-with-mic: no Kerberos ticket for {name}: {reason}; trying the "
                        "next method.",
                        name=target.text,
                        reason=str(e),
                    )
                continue
            self._gss = _GSSAttempt(exchange, first)
            self.askForAuth(b"gssapi-with-mic", _gssapi.request_data())
            return True
        return False

    async def _in_thread(self, work: Callable[[], bytes]) -> bytes:
        from twisted.internet.interfaces import IReactorThreads
        from twisted.internet.threads import deferToThreadPool

        # The tunnel's reactor (never the global one); without one (a test of this layer),
        # or one without threads, the GSSAPI step runs here.
        reactor = self._options.reactor
        if reactor is not None and IReactorThreads.providedBy(reactor):
            result: bytes = await deferToThreadPool(reactor, reactor.getThreadPool(), work)
            return result
        return work()

    def _gssapi_message(self, number: int, packet: bytes) -> None:
        attempt = self._gss
        assert attempt is not None
        if attempt.finished:
            # MIC or error token exchanged: the server owes SUCCESS or FAILURE.
            _log.debug("ignoring gssapi-with-mic message {number} after the MIC", number=number)
            return
        attempt.rounds += 1
        try:
            if attempt.rounds > _gssapi.MAX_ROUNDS:
                raise _gssapi.GSSAPIFailure(
                    f"the server sent more than {_gssapi.MAX_ROUNDS} messages"
                )
            if number == _gssapi.MSG_USERAUTH_GSSAPI_RESPONSE:
                self._gssapi_response(attempt, packet)
            elif number == _gssapi.MSG_USERAUTH_GSSAPI_TOKEN:
                if attempt.first is not None:
                    raise _gssapi.GSSAPIFailure("the server sent a token before choosing")
                self._gssapi_send(attempt, attempt.exchange.step(_one_string(packet)))
            elif number == _gssapi.MSG_USERAUTH_GSSAPI_ERROR:
                major, minor, message = _gssapi.parse_error(packet)
                _log.info(
                    "gssapi-with-mic: the server says: {message} (major {major:#x}, minor "
                    "{minor:#x})",
                    message=printable(message.strip()),
                    major=major,
                    minor=minor,
                )
            elif number == _gssapi.MSG_USERAUTH_GSSAPI_ERRTOK:
                # RFC 4462 section 3.9: let GSSAPI read it; the server's FAILURE follows.
                attempt.finished = True
                try:
                    attempt.exchange.step(_one_string(packet))
                except _gssapi.GSSAPIFailure as e:
                    _log.info("gssapi-with-mic: the server's error token: {reason}", reason=e)
            else:
                raise _gssapi.GSSAPIFailure(f"the server sent message {number}")
        except _gssapi.GSSAPIFailure as e:
            self._abandon_gssapi(str(e))
        except (ValueError, struct.error) as e:
            self._abandon_gssapi(f"malformed message {number} from the server ({e})")

    def _gssapi_response(self, attempt: _GSSAttempt, packet: bytes) -> None:
        first, attempt.first = attempt.first, None
        if first is None:
            raise _gssapi.GSSAPIFailure("the server chose a mechanism twice")
        chosen = _gssapi.parse_der_oid(_one_string(packet))
        if chosen != _gssapi.KRB5_MECH:
            raise _gssapi.GSSAPIFailure(
                f"the server chose mechanism {chosen}, not the Kerberos 5 one offered"
            )
        self._gssapi_send(attempt, first)

    def _gssapi_send(self, attempt: _GSSAttempt, token: bytes) -> None:
        """Send the next token; once the context is established, the MIC (section 3.5)."""
        assert self.transport is not None
        exchange = attempt.exchange
        if token:
            self.transport.sendPacket(_gssapi.MSG_USERAUTH_GSSAPI_TOKEN, NS(token))
        elif not exchange.complete:
            raise _gssapi.GSSAPIFailure("GSSAPI has no token to send")
        if exchange.complete:
            data = _gssapi.mic_data(self._session_id(), self.user, self.instance.name)
            mic = exchange.mic(data)
            attempt.finished = True
            if exchange.delegate and not exchange.delegated:
                _log.info("gssapi-with-mic: credentials not delegated (ticket not forwardable?)")
            self.transport.sendPacket(_gssapi.MSG_USERAUTH_GSSAPI_MIC, NS(mic))

    def _abandon_gssapi(self, reason: str) -> None:
        _log.info("gssapi-with-mic failed: {reason}; trying the next method.", reason=reason)
        self._gss = None
        # A new USERAUTH_REQUEST ends the exchange (RFC 4252 section 5; OpenSSH's
        # input_gssapi_token does the same).
        d = Deferred.fromCoroutine(self._try_methods())
        d.addErrback(self._hook_failed, "authentication")

    # -- publickey

    async def _agent_identities(self) -> list[bytes]:
        for credential in self._agents:
            path = credential.path or os.environ.get("SSH_AUTH_SOCK")
            if not path:
                continue
            from rtunnel.client.auth.agent import connect_agent

            reactor = self._options.reactor
            if reactor is None:
                # The library never falls back on the global reactor; the tunnel always
                # passes its own.
                _log.warn("Ignoring the agent at {path}: no reactor to reach it", path=path)
                continue
            try:
                self._agent = await connect_agent(reactor, path)
                found = await self._agent.identities()
            except Exception as e:
                _log.warn("Ignoring the agent at {path}: {error}", path=path, error=e)
                continue
            return [blob for blob, _comment in found]
        return []

    async def _prepare_candidates(self) -> list[_Candidate]:
        """
        The publickey attempts in OpenSSH's order (sshconnect2.c, ``pubkey_prepare``): key
        files and certificates the agent holds (signed by the agent), then the agent's
        other keys (none with ``identities_only``), then the other key files.
        """
        agent_keys = await self._agent_identities()
        identities_only = any(a.identities_only for a in self._agents)
        files = list(self._keys)
        matched: set[int] = set()
        preferred: list[_Candidate] = []
        agent_only: list[_Candidate] = []
        for blob in agent_keys:
            index = next(
                (
                    i
                    for i, loaded in enumerate(files)
                    if i not in matched and loaded.offered_blob == blob
                ),
                None,
            )
            if index is not None:
                matched.add(index)
                preferred.append(_Candidate(files[index], blob))
            elif not identities_only:
                agent_only.append(_Candidate(None, blob))
            else:
                _log.debug("IdentitiesOnly: not using an agent key that no key file matches")
        rest: list[_Candidate] = []
        for i, loaded in enumerate(files):
            if i in matched:
                continue
            if loaded.key is None and loaded.pending is None:
                # A certificate only: signed by the agent's plain key, if it has it.
                plain = certificate_public_blob(loaded.certificate or b"")
                if plain is not None and plain in agent_keys:
                    rest.append(_Candidate(loaded, plain))
                else:
                    _log.debug("no private key for certificate {source}", source=loaded.source)
                continue
            rest.append(_Candidate(loaded))
        return preferred + agent_only + rest

    async def _try_publickey(self) -> bool:
        if self._candidates is None:
            self._candidates = await self._prepare_candidates()
        while self._candidates:
            if await self._try_candidate(self._candidates.pop(0)):
                return True
        return False

    async def _try_candidate(self, candidate: _Candidate) -> bool:
        offered = candidate.offered
        loaded = candidate.loaded
        private: keys.Key | None = None
        if candidate.agent_blob is None:
            assert loaded is not None
            private = loaded.key
            if loaded.pending is not None:
                private = await loaded.pending.resolve(
                    self._options.number_of_password_prompts, self._options.reactor
                )
                if private is None:
                    return False
                offered = loaded.offered_blob
                if offered is None:
                    offered = bytes(private.public().blob())
            assert private is not None
        if offered is None:
            return False
        offered_type = bytes(getNS(offered)[0])
        is_cert = offered_type.endswith(CERT_SUFFIX)
        plain_type = offered_type.removesuffix(CERT_SUFFIX)
        assert self.transport is not None
        signing = choose_signature_algorithm(
            plain_type,
            certificate=is_cert,
            server_sig_algs=self.transport.peerExtensions.get(b"server-sig-algs"),
            accepted=self._accepted_algorithms(),
        )
        if signing is None:
            # As OpenSSH: "Skipping ... key ... - corresponding algo not in
            # PubkeyAcceptedAlgorithms".
            _log.debug("skipping a {kind} key: not in pubkey_accepted_algorithms", kind=plain_type)
            return False
        # OpenSSH PROTOCOL.certkeys: a certificate request names the certificate
        # algorithm and carries the certificate; the signature is the key's own
        # ("rsa-sha2-512" for "rsa-sha2-512-cert-v01@openssh.com").
        algorithm = request_algorithm(offered_type if is_cert else None, signing)
        to_sign = self._publickey_signed_data(algorithm, offered)
        if candidate.agent_blob is not None:
            try:
                signature = await self._agent.sign(candidate.agent_blob, to_sign, signing)
            except Exception as e:
                _log.warn("The agent did not sign: {error}", error=e)
                return False
        else:
            assert private is not None
            self.lastPublicKey = private.public()
            signature = private.sign(to_sign, signatureType=signing)
        self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(offered) + NS(signature))
        return True

    def _accepted_algorithms(self) -> tuple[str, ...] | None:
        accepted = self._options.pubkey_accepted_algorithms
        return None if accepted is None else tuple(accepted)

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
            answer = await _resolve(self._ask[0].ask(prompt), self._options.reactor)
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
                self._hook_failed, "password change callback"
            )
        elif self.lastAuth == b"keyboard-interactive":
            Deferred.fromCoroutine(self._info_request(packet)).addErrback(
                self._hook_failed, "keyboard-interactive callback"
            )
        else:
            # PK_OK to a query we never send (we sign straight away): ignore it.
            _log.debug("unexpected USERAUTH_PK_OK for {method}", method=self.lastAuth)

    async def _password_change_requested(self, packet: bytes) -> None:
        # RFC 4252 section 8: SSH_MSG_USERAUTH_PASSWD_CHANGEREQ (prompt, language).
        prompt = getNS(packet)[0].decode("utf-8", "replace").strip()
        shown = printable(prompt, 200)
        change = self._options.password_change
        new = None
        if change is not None and self._last_password is not None:
            new = await _resolve(change(prompt), self._options.reactor)
        if new is None:
            self.failure = AuthenticationError(
                f"The server requires a new password for {self._user_text} "
                f"(it says: '{shown}'). Change it with an interactive log-on (e.g. ssh "
                "or passwd), or give a password_change callback, then try again.",
                self._methods_left,
            )
            self._give_up()
            return
        old, self._last_password = self._last_password, None
        assert old is not None
        self.askForAuth(b"password", b"\x01" + NS(old) + NS(str(new).encode("utf-8")))

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
            challenge = KeyboardInteractiveChallenge(
                name.decode("utf-8", "replace"),
                instruction.decode("utf-8", "replace"),
                tuple(prompts),
            )
            responder = self._kbd[0].respond if self._kbd else None
            if responder is not None:
                given = await _resolve(responder(challenge), self._options.reactor)
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
        """
        RFC 4252 section 5.4: show the server's banner in the log, its lines kept, every
        control character escaped and its length capped (RELIABILITY.md D17), as OpenSSH
        shows it through its safe printing (utf8.c, ``fmprintf``).
        """
        _log.info("{banner}", banner=printable_lines(getNS(packet)[0]))
