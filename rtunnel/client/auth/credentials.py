"""
Credentials a tunnel logs on with. The objects only describe where a secret is; they are
read when the tunnel logs on, so a missing or unreadable key file is reported then, as an
error naming the file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from typing_extensions import override

from rtunnel._core.text import printable
from rtunnel.errors import SpecError

__all__ = [
    "GSSAPI",
    "AskPassword",
    "CertificateFile",
    "Credential",
    "CustomAuth",
    "CustomAuthStep",
    "KeyFileProblem",
    "KeyboardInteractive",
    "KeyboardInteractiveChallenge",
    "KeyboardInteractivePrompt",
    "Password",
    "PrivateKey",
    "PrivateKeyFile",
    "SSHAgent",
    "UserAuthSettings",
    "check_methods",
    "check_password_prompts",
    "key_file_problem",
    "password_prompt_matches",
]

#: The methods rtunnel speaks, in OpenSSH's default PreferredAuthentications order (less
#: hostbased, which it does not). gssapi-with-mic is tried only with a :class:`GSSAPI`
#: credential.
SUPPORTED_METHODS = ("gssapi-with-mic", "publickey", "keyboard-interactive", "password")

#: A passphrase callback: gets the key file's path, returns the passphrase (or None).
PassphraseCallback = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class PrivateKeyFile:
    """
    Public-key authentication with a private key file: OpenSSH's format, PEM (PKCS#1,
    SEC1, PKCS#8), PuTTY ``.ppk`` (versions 2 and 3) or PKCS#12 (``.pfx``/``.p12``, the
    reference's cstPFXFile), told apart by their contents.

    :ivar path: the key file.
    :ivar passphrase: the passphrase of an encrypted key, if any; or a callable that gets
        the path and returns it (asked only when the key turns out to be encrypted, before
        connecting); or an :class:`AskPassword`, asked as ``ssh`` asks, when the key is
        about to be tried: with the prompt ``Enter passphrase for key 'PATH': ``, again
        after a wrong passphrase (up to ``number_of_password_prompts`` times), and an empty
        answer or None skips the key. A key the agent holds (:class:`SSHAgent`) is signed
        by the agent without asking.
    :ivar certificate: an OpenSSH user certificate for the key (``-o CertificateFile``);
        by default ``<path>-cert.pub`` is used when it exists, as OpenSSH does. The
        certificate is offered first, then the bare key.
    :ivar check_permissions: refuse a key file of the user's that group or others may
        access, with ``ssh``'s "WARNING: UNPROTECTED PRIVATE KEY FILE!" (the default, as
        ``ssh`` refuses it). False skips the check, for a key whose mode the
        application cannot choose (a secrets store's mounted file); a key that never was
        a file is a :class:`PrivateKey`, which has no mode to check.

    An encrypted key, once decrypted, is kept (in memory, by this object) for as long as
    the file holds the same bytes: a tunnel that reconnects logs on again without asking
    for the passphrase again or running the key's KDF again, as a key added to
    ``ssh-agent`` would. A changed file is read and asked for afresh.
    """

    path: Path
    passphrase: str | PassphraseCallback | AskPassword | None = None
    certificate: Path | None = None
    check_permissions: bool = True
    #: Decrypted keys by the SHA-256 of the file they came from (see above).
    _unlocked: dict[bytes, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __init__(
        self,
        path: str | Path,
        passphrase: str | PassphraseCallback | AskPassword | None = None,
        *,
        certificate: str | Path | None = None,
        check_permissions: bool = True,
    ) -> None:
        object.__setattr__(self, "path", Path(os.path.expanduser(path)))
        object.__setattr__(self, "passphrase", passphrase)
        object.__setattr__(
            self, "certificate", Path(os.path.expanduser(certificate)) if certificate else None
        )
        object.__setattr__(self, "check_permissions", check_permissions)
        object.__setattr__(self, "_unlocked", {})


@dataclass(frozen=True)
class KeyFileProblem:
    """
    Why a private key file cannot be used, as ``ssh`` says it.

    :ivar reason: ``bad permissions``, ``Is a directory``, ``not a regular file``, or the
        system's reason (``Permission denied``).
    :ivar lines: ``ssh``'s lines, the last one ``Load key "PATH": REASON``.
    """

    reason: str
    lines: tuple[str, ...]


def key_file_problem(path: Path, *, check_permissions: bool = True) -> KeyFileProblem | None:
    """
    Why ``ssh`` would not load the private key file ``path`` (authfile.c,
    ``sshkey_perm_ok`` and ``sshkey_load_private_type``); None when nothing stands in the
    way (or the file does not exist: that is for the caller to say).

    A file the user owns that group or others may access (any of mode 077) gets ``ssh``'s
    "UNPROTECTED PRIVATE KEY FILE!" block with the permissions found, unless
    ``check_permissions`` is False. A directory, a FIFO or a device is not a key file
    (``ssh`` would hang on a FIFO; rtunnel says so instead).
    """

    # The name on one line, as ssh's log shows it (log.c escapes with strnvis).
    shown = printable(str(path), None)

    def problem(reason: str, *before: str) -> KeyFileProblem:
        return KeyFileProblem(reason, (*before, f'Load key "{shown}": {reason}'))

    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return problem(e.strerror or str(e))
    mode = stat.S_IMODE(found.st_mode)
    if check_permissions and found.st_uid == os.getuid() and mode & 0o077:
        return problem(
            "bad permissions",
            "@" * 59,
            "@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @",
            "@" * 59,
            f"Permissions {mode:04o} for '{shown}' are too open.",
            "It is required that your private key files are NOT accessible by others.",
            "This private key will be ignored.",
        )
    if stat.S_ISDIR(found.st_mode):
        return problem("Is a directory")
    if not stat.S_ISREG(found.st_mode):
        return problem("not a regular file")
    if not os.access(path, os.R_OK):
        return problem("Permission denied")
    return None


@dataclass(frozen=True)
class Password:
    """
    Password authentication.

    :ivar password: the password.
    """

    password: str

    @override
    def __repr__(self) -> str:
        return "Password(<hidden>)"


@dataclass(frozen=True)
class KeyboardInteractivePrompt:
    """
    One keyboard-interactive prompt (RFC 4256 section 3.2).

    :ivar text: the prompt as the server sent it.
    :ivar echo: whether the server suggests echoing the answer as it is typed.
    :ivar answer: the answer rtunnel has already (a password, when the prompt matched the
        password prompt pattern), or None.
    """

    text: str
    echo: bool
    answer: str | None = None


@dataclass(frozen=True)
class KeyboardInteractiveChallenge:
    """
    One ``SSH_MSG_USERAUTH_INFO_REQUEST`` (the reference's SSHKeyboardInteractive event,
    with every prompt of the packet at once).

    :ivar name: the server's name for the exchange (may be empty).
    :ivar instruction: the server's instruction (may be empty).
    :ivar prompts: the prompts, in order.
    """

    name: str
    instruction: str
    prompts: tuple[KeyboardInteractivePrompt, ...]


#: Answers a challenge: one string per prompt, or None to decline (may be asynchronous).
KeyboardInteractiveCallback = Callable[
    [KeyboardInteractiveChallenge],
    "Sequence[str] | Deferred[Sequence[str] | None] | Awaitable[Sequence[str] | None] | None",
]

#: Asks for a password: gets the prompt, returns the password or None to stop asking.
PasswordCallback = Callable[[str], "str | Deferred[str | None] | Awaitable[str | None] | None"]


@dataclass(frozen=True)
class AskPassword:
    """
    Password authentication with the password asked for when it is needed (e.g. from the
    user): for the ``password`` method and for keyboard-interactive prompts that match the
    password prompt pattern. Asked at most ``number_of_password_prompts`` times.

    :ivar ask: gets the prompt (e.g. ``"alice@host's password: "``), returns the password
        or None to give up; may return a Deferred or an awaitable.
    """

    ask: PasswordCallback

    @override
    def __repr__(self) -> str:
        return f"AskPassword({self.ask!r})"


@dataclass(frozen=True)
class KeyboardInteractive:
    """
    Keyboard-interactive authentication (RFC 4256) answered by the application.

    :ivar respond: gets a :class:`KeyboardInteractiveChallenge`, returns one answer per
        prompt or None to decline; may return a Deferred or an awaitable. Prompts that
        match the password prompt pattern arrive with the password already in
        :attr:`KeyboardInteractivePrompt.answer`.
    """

    respond: KeyboardInteractiveCallback


@dataclass(frozen=True)
class PrivateKey:
    """
    Public-key authentication with a key held in memory (the reference's SSHCertEncoded).

    :ivar key: a private ``twisted.conch.ssh.keys.Key``, or the key file's contents
        (OpenSSH format, PEM, PuTTY ``.ppk`` or PKCS#12, as ``bytes`` or ``str``; the
        reference's cstPEMKeyBlob, cstPPKBlob and cstPFXBlob).
    :ivar passphrase: for encrypted contents: the passphrase, or a callable that gets
        ``source`` (as a Path) and returns it, or an :class:`AskPassword` (as for
        :class:`PrivateKeyFile`).
    :ivar certificate: an OpenSSH certificate for the key (the ``-cert.pub`` line).
    :ivar source: how messages name the key.
    """

    key: Any
    passphrase: str | PassphraseCallback | AskPassword | None = None
    certificate: str | bytes | None = None
    source: str = "(in memory)"

    @override
    def __repr__(self) -> str:
        return f"PrivateKey(<hidden>, source={self.source!r})"


@dataclass(frozen=True)
class CustomAuthStep:
    """
    One step of custom authentication (the reference's SSHCustomAuth event).

    :ivar packet: the server's last user authentication packet, message type first: a
        ``USERAUTH_FAILURE`` (51, the methods that can continue and the partial success
        flag) or a method-specific message (60-79). Read it with
        :func:`~rtunnel.get_ssh_param` or :func:`~rtunnel.read_ssh_params`.
    :ivar user: the user name rtunnel logs on as.
    :ivar service: the service to start after authentication (``"ssh-connection"``), as
        a ``USERAUTH_REQUEST`` must name it (RFC 4252 section 5).
    :ivar session_id: the session identifier, which a ``publickey`` signature covers
        (RFC 4252 section 7).
    """

    packet: bytes
    user: str
    service: str
    session_id: bytes

    @property
    def message(self) -> int:
        """The packet's message number."""
        return self.packet[0] if self.packet else 0


#: Answers one custom authentication step: the packet to send (message type first, as
#: ``bytes`` or as :func:`~rtunnel.encode_packet`'s hex text), or None to decline; may be
#: asynchronous.
CustomAuthCallback = Callable[
    [CustomAuthStep],
    "bytes | str | Deferred[bytes | str | None] | Awaitable[bytes | str | None] | None",
]


@dataclass(frozen=True)
class CustomAuth:
    """
    Custom authentication (the reference's amCustom and SSHCustomAuth event): the
    application sees the server's raw user authentication packets and answers with its
    own, for a method rtunnel does not speak or to drive one itself.

    ``respond`` is called with the server's ``USERAUTH_FAILURE`` before rtunnel tries its
    own methods (the first one answers the ``none`` probe and lists the methods), and,
    while the exchange it started goes on, with every ``USERAUTH_FAILURE`` and
    method-specific message (60-79) the server sends. It returns the packet to send: a
    ``USERAUTH_REQUEST`` (50) or a method-specific message (60-79), message type first
    (build it with :func:`~rtunnel.set_ssh_param`). Returning None declines: rtunnel
    carries on with the other credentials of ``auth=`` and asks ``respond`` again only
    after a partial success (RFC 4252 section 5.1). Given alone in ``auth=``, it takes
    over authentication completely, as amCustom does.

    :ivar respond: gets a :class:`CustomAuthStep`; may return a Deferred or an awaitable.
    """

    respond: CustomAuthCallback


@dataclass(frozen=True)
class CertificateFile:
    """
    An OpenSSH user certificate (``-o CertificateFile``), offered with whichever private
    key of ``auth=`` (a key file or the agent) it certifies.

    :ivar path: the ``*-cert.pub`` file.
    """

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(os.path.expanduser(path)))


@dataclass(frozen=True)
class SSHAgent:
    """
    Public-key authentication with the keys (and certificates) an ``ssh-agent`` holds,
    tried after the key files.

    Keys of ``auth=`` that the agent also holds (a key file, or a certificate for a key
    in the agent) are signed by the agent, so an encrypted key file needs no passphrase
    then; they are tried first, then the agent's other keys, then the remaining key
    files, in OpenSSH's order (sshconnect2.c, ``pubkey_prepare``).

    :ivar path: the agent's socket (OpenSSH ``IdentityAgent``); None: ``SSH_AUTH_SOCK``
        when the tunnel logs on (no agent then means no agent keys, as in OpenSSH).
    :ivar identities_only: use only the agent keys that match a key file or certificate
        of ``auth=`` (OpenSSH ``IdentitiesOnly yes``).
    """

    path: str | None = None
    identities_only: bool = False


@dataclass(frozen=True)
class GSSAPI:
    """
    GSSAPI authentication with Kerberos 5, ``gssapi-with-mic`` (RFC 4462; the reference's
    amGSSAPIWithMic, OpenSSH ``GSSAPIAuthentication``), with the Kerberos ticket of the
    credentials cache (``KRB5CCNAME``, else the default one: get it with ``kinit``). Tried
    first when the server offers it, as in OpenSSH; without a usable ticket, or when the
    KDC does not know the server, the method is skipped (the reason is logged) and the
    other credentials are tried. Needs python-gssapi: ``pip install 'rtunnel[gssapi]'``.

    :ivar delegate: ask for credential delegation, so the session on the server has a
        ticket too (the reference's KerberosDelegation, OpenSSH
        ``GSSAPIDelegateCredentials``).
    :ivar realm: the server's Kerberos realm, when it is not the one its host name maps
        to (the reference's KerberosRealm): the service principal becomes
        ``host/HOST@REALM``.
    :ivar spn: the server's service principal name (the reference's KerberosSPN): a
        host-based service name ``host@gw.example.com``, or a principal name
        ``host/gw.example.com@EXAMPLE.COM``. Default: ``host@HOST`` with the host name
        given to the tunnel, as OpenSSH.
    :ivar password: log on with these "alternate credentials" instead of the credentials
        cache's ticket (the reference's amGSSAPIWithMic with SSHPassword): a ticket is
        got from the KDC for ``principal`` with this password, kept in memory for this
        logon only (no credentials cache is written). A wrong password skips the method,
        with the KDC's reason logged.
    :ivar principal: the Kerberos principal for ``password`` (default: the SSH user name,
        in ``realm`` when given, else the default realm of ``krb5.conf``).
    """

    delegate: bool = False
    realm: str | None = None
    spn: str | None = None
    password: str | None = field(default=None, repr=False)
    principal: str | None = None

    def __post_init__(self) -> None:
        from rtunnel.client.auth._gssapi import check_spn

        if self.spn is not None:
            check_spn(self.spn)
        if self.realm is not None and (not self.realm or any(c in self.realm for c in "@/ ")):
            raise SpecError(f"Kerberos realm {self.realm!r} is not a realm name.")
        if self.principal is not None and self.password is None:
            raise SpecError("A Kerberos principal is used with a password: give password= too.")
        if self.principal is not None and (not self.principal or " " in self.principal):
            raise SpecError(f"Kerberos principal {self.principal!r} is not a principal name.")


Credential = (
    PrivateKeyFile
    | PrivateKey
    | Password
    | AskPassword
    | KeyboardInteractive
    | SSHAgent
    | CertificateFile
    | CustomAuth
    | GSSAPI
)


def password_prompt_matches(pattern: str, prompt: str) -> bool:
    """
    The reference's PasswordPrompt pattern: ``?`` any one character, ``*`` any run of
    characters, ``[...]`` a set of characters and ranges (``[a-z]``, ``[0-9,a-d,f]``; commas
    separate), ``\\`` takes the next character literally. The whole prompt must match;
    trailing white space of the prompt is ignored (servers send ``"Password: "``).
    """
    return _compile_prompt_pattern(pattern).fullmatch(prompt.rstrip()) is not None


def _compile_prompt_pattern(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            items = [p for p in pattern[i + 1 : end].split(",") if p]
            parts = []
            for item in items:
                if len(item) == 3 and item[1] == "-":
                    parts.append(re.escape(item[0]) + "-" + re.escape(item[2]))
                else:
                    parts.append("".join(re.escape(ch) for ch in item))
            out.append("[" + "".join(parts) + "]" if parts else "(?!)")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def check_methods(methods: Sequence[str]) -> None:
    """
    Refuse a method rtunnel does not speak in a ``PreferredAuthentications`` list
    (``none`` is allowed: it asks only which methods the server takes).

    :raises SpecError: naming the unknown methods and the ones rtunnel speaks.
    """
    unknown = [m for m in methods if m not in SUPPORTED_METHODS and m != "none"]
    if unknown:
        raise SpecError(
            f"Unknown authentication method(s) {', '.join(unknown)}: rtunnel speaks "
            + ", ".join(SUPPORTED_METHODS)
            + "."
        )


def check_password_prompts(count: int) -> None:
    """:raises SpecError: for a negative ``NumberOfPasswordPrompts``."""
    if count < 0:
        raise SpecError("number_of_password_prompts must be 0 or more.")


@dataclass(frozen=True)
class UserAuthSettings:
    """
    How the user authentication client logs on, beyond the credentials: made by the
    tunnel from its :class:`~rtunnel.options.AuthOptions`, which checked every value.

    :ivar credentials: what to log on with (keys are loaded separately, before
        connecting; the callbacks of :class:`AskPassword` and :class:`KeyboardInteractive`
        are taken from here).
    :ivar preferred: the methods to try, in order (OpenSSH ``PreferredAuthentications``).
    :ivar try_all_methods: after the preferred methods, also try any other method the
        server offers that rtunnel has credentials for (the reference's
        TryAllAvailableAuthMethods).
    :ivar password_prompt: keyboard-interactive prompts matching this pattern are answered
        with the password (the reference's PasswordPrompt); None answers none that way.
    :ivar number_of_password_prompts: how many times to ask an :class:`AskPassword`
        callback, and how many keyboard-interactive rounds to start (OpenSSH
        ``NumberOfPasswordPrompts``).
    :ivar password_change: answers the server's password change request (RFC 4252
        section 8): gets its prompt, returns the new password (may be async), or None to
        give up; without it the request is an AuthenticationError.
    :ivar host: the server's name, for the password prompt.
    :ivar pubkey_accepted_algorithms: the public key signature algorithms to use, in
        order, resolved (:func:`~rtunnel.client.auth._pubkey.resolve_pubkey_algorithms`);
        a key none of them fits is skipped. None: automatic (RSA signs with the best SHA-2
        algorithm the server's ``server-sig-algs`` lists).
    """

    credentials: tuple[Credential, ...] = ()
    preferred: tuple[str, ...] = SUPPORTED_METHODS
    try_all_methods: bool = False
    password_prompt: str | None = "*assword*"
    number_of_password_prompts: int = 3
    password_change: PasswordCallback | None = None
    host: str = ""
    reactor: Any = None
    pubkey_accepted_algorithms: tuple[str, ...] | None = None
