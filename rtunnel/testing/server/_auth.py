"""
The test server's user authentication: password and public-key checkers (keys and
OpenSSH user certificates, as sshd's ``TrustedUserCAKeys``), and a user-auth service with
what Conch's lacks: keyboard-interactive, multi-step logons, password change, a banner.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from typing import Any, cast

from twisted.conch import error as conch_error
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, keys, userauth
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel.client.hostkeys.certificates import (
    CERT_SUFFIX,
    CertificateError,
    is_certificate,
    key_type_of_algorithm,
    parse_certificate,
    signature_algorithm_of,
)
from rtunnel.testing.server._context import (
    KbdIntPrompt,
    ServerContext,
    _pack_string,
    _UserAuth,
    server_of,
)
from rtunnel.testing.server._transport import _ServerTransport

# Public key signature algorithms accepted for user authentication and advertised in
# server-sig-algs (RFC 8308 section 3.1). "ssh-rsa" (RSA with SHA-1) is left out, as
# OpenSSH 8.8 and later leave it out by default; see SSHTestServer's allow_rsa_sha1.
_USER_SIG_ALGS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


@implementer(ICredentialsChecker)
class _PasswordChecker:
    """Passwords per user, read live from the server's table."""

    credentialInterfaces = (IUsernamePassword,)  # noqa: N815 (ICredentialsChecker)

    def __init__(self, passwords: dict[bytes, bytes]) -> None:
        self._passwords = passwords

    def requestAvatarId(  # noqa: N802 (ICredentialsChecker)
        self, credentials: IUsernamePassword
    ) -> Deferred[bytes | tuple[()]]:
        expected = self._passwords.get(credentials.username)
        if expected is not None and hmac.compare_digest(expected, credentials.password):
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin("wrong user name or password"))


class _CertificateCredentials(SSHPrivateKey):
    """A ``publickey`` request with an OpenSSH certificate, and where it came from."""

    def __init__(
        self,
        username: bytes,
        algName: bytes,  # noqa: N803 (SSHPrivateKey's name)
        blob: bytes,
        sigData: bytes | None,  # noqa: N803
        signature: bytes | None,
        client_address: str,
    ) -> None:
        super().__init__(username, algName, blob, sigData, signature)
        self.client_address = client_address


@implementer(ICredentialsChecker)
class _PublicKeyChecker:
    """
    Authorized public keys per user, read live from the server's table, and user
    certificates signed by a trusted CA (sshd's ``TrustedUserCAKeys``).

    Not Conch's ``SSHPublicKeyChecker``: that one answers a query without signature
    (RFC 4252 section 7) with ``PK_OK`` even for a key the user may not use, and does not
    tie the signature's algorithm to the one named in the request.
    """

    credentialInterfaces = (ISSHPrivateKey,)  # noqa: N815 (ICredentialsChecker)

    def __init__(
        self,
        authorized: dict[bytes, list[keys.Key]],
        algorithms: set[bytes],
        certificates: ServerContext | None = None,
    ) -> None:
        self._authorized = authorized
        self._algorithms = algorithms
        # The server's policy for user certificates (trusted CAs, principals, the clock).
        self._certificates = certificates

    def requestAvatarId(  # noqa: N802 (ICredentialsChecker)
        self, credentials: SSHPrivateKey
    ) -> Deferred[bytes | tuple[()]]:
        if isinstance(credentials, _CertificateCredentials):
            return self._check_certificate(credentials)
        try:
            offered = keys.Key.fromString(credentials.blob)
        except keys.BadKeyError:
            return defer.fail(UnauthorizedLogin("unparseable public key"))
        if credentials.algName not in self._algorithms:
            return defer.fail(UnauthorizedLogin("signature algorithm not accepted"))
        if not any(key == offered for key in self._authorized.get(credentials.username, [])):
            return defer.fail(UnauthorizedLogin("key not authorized"))
        if credentials.signature is None:
            # A query: Conch's SSHUserAuthServer answers ValidPublicKey with PK_OK.
            return defer.fail(ValidPublicKey())
        signature_type = common.getNS(credentials.signature)[0]
        if signature_type != credentials.algName:
            return defer.fail(UnauthorizedLogin("signature does not match algorithm"))
        if offered.verify(credentials.signature, credentials.sigData):
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin("bad signature"))

    def _check_certificate(
        self, credentials: _CertificateCredentials
    ) -> Deferred[bytes | tuple[()]]:
        if self._certificates is None:
            return defer.fail(UnauthorizedLogin("no trusted user CA keys"))
        reason = self._certificate_problem(credentials)
        if reason is None:
            if credentials.signature is None:
                # A query: Conch's SSHUserAuthServer answers ValidPublicKey with PK_OK.
                return defer.fail(ValidPublicKey())
            return defer.succeed(credentials.username)
        self._certificates._user_certificate_refused(reason)
        return defer.fail(UnauthorizedLogin(reason))

    def _certificate_problem(self, credentials: _CertificateCredentials) -> str | None:
        """Why the certificate request fails, or None (also for a query without signature)."""
        assert self._certificates is not None
        # OpenSSH PROTOCOL.certkeys: the request names the certificate algorithm
        # ("rsa-sha2-512-cert-v01@openssh.com" for an RSA certificate signing with SHA-512)
        # and the signature inside is the certified key's plain one ("rsa-sha2-512").
        algorithm = credentials.algName.decode("ascii", "replace")
        plain = signature_algorithm_of(algorithm).encode("ascii")
        if not algorithm.endswith(CERT_SUFFIX) or plain not in self._algorithms:
            return f"certificate algorithm {algorithm} not accepted"
        try:
            cert = parse_certificate(credentials.blob)
            certified = keys.Key.fromString(cert.public_blob)
        except (CertificateError, keys.BadKeyError) as e:
            return f"unusable certificate: {e}"
        if key_type_of_algorithm(algorithm) != cert.key_type:
            return f"algorithm {algorithm} does not match the {cert.cert_type} certificate"
        reason = self._certificates._user_certificate_refusal(
            cert, credentials.username, credentials.client_address
        )
        if reason is not None or credentials.signature is None:
            return reason
        if common.getNS(credentials.signature)[0] != plain:
            return "signature does not match algorithm"
        try:
            good = certified.verify(credentials.signature, credentials.sigData)
        except Exception:  # malformed signature fields: Conch raises various errors
            good = False
        return None if good else "bad signature"


@implementer(IRealm)
class _Realm:
    """Every user gets a bare Conch avatar: the connection service does the work."""

    def requestAvatar(  # noqa: N802 (IRealm)
        self,
        avatar_id: bytes | tuple[()],
        mind: object,
        *interfaces: Any,
    ) -> tuple[Any, ConchUser, Callable[[], None]]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only IConchUser avatars")
        return IConchUser, ConchUser(), lambda: None


_OUR_METHODS = (b"publickey", b"password", b"keyboard-interactive")
_MSG_USERAUTH_BANNER = 53


class _UserAuthServer(userauth.SSHUserAuthServer):
    """
    Conch's user-auth service on the server's own reactor, with its password delay, plus
    what Conch's server lacks: keyboard-interactive (RFC 4256) with several prompts and
    rounds, multi-step logons with partial success (RFC 4252 section 5.1, as OpenSSH's
    ``AuthenticationMethods``), and the password change request (RFC 4252 section 8).
    """

    @override
    def serviceStarted(self) -> None:
        server = server_of(self.transport)
        # Conch's class attribute is the global reactor (userauth.py): use the one we got.
        self.clock = server._clock
        self.passwordDelay = server._password_delay
        super().serviceStarted()
        self._server = server
        self._done: list[str] = []
        self._kbd: tuple[Deferred[Any], list[tuple[KbdIntPrompt, ...]]] | None = None

    def _policy(self, user: bytes) -> _UserAuth:
        return self._server._user_auth.get(user, _UserAuth((), (), False))

    def _allowed(self, user: bytes) -> list[bytes]:
        """The methods that can come next for ``user`` (the FAILURE message's list)."""
        policy = self._policy(user)
        if not policy.methods:
            # keyboard-interactive only where set up, as sshd (KbdInteractiveAuthentication
            # no is its default without PAM): Conch's stock client would otherwise retry
            # it forever.
            if policy.kbd_int or self._server._keyboard_interactive:
                return list(_OUR_METHODS)
            return [m for m in _OUR_METHODS if m != b"keyboard-interactive"]
        allowed: list[bytes] = []
        for chain in policy.methods:
            if tuple(chain[: len(self._done)]) == tuple(self._done) and len(chain) > len(
                self._done
            ):
                method = chain[len(self._done)].encode("ascii")
                if method not in allowed:
                    allowed.append(method)
        return allowed

    @override
    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Deferred[Any] | None:
        user, next_service, method, _rest = common.getNS(packet, 3)
        if self.user is not None and (user != self.user or next_service != self.nextService):
            self._done = []
        if self._kbd is not None:
            # RFC 4256 section 3.3: a new request ends a keyboard-interactive exchange.
            pending, self._kbd = self._kbd[0], None
            pending.errback(Failure(conch_error.IgnoreAuthentication()))
        self.supportedAuthentications = self._allowed(user)
        self._server._auth_log.append((user.decode("utf-8", "replace"), method.decode()))
        banner = self._server._banner
        if banner is not None and not getattr(self, "_banner_sent", False):
            # SSHTestServer.set_banner(): as sshd sends its Banner, before the first
            # answer (RFC 4252 section 5.4), unescaped.
            self._banner_sent = True
            assert self.transport is not None
            self.transport.sendPacket(_MSG_USERAUTH_BANNER, common.NS(banner) + common.NS(b""))
        if self._server._refuse_auth:
            # SSHTestServer.refuse_authentication(): every request fails, as sshd answers
            # a locked account ("User ... not allowed because account is locked").
            assert self.transport is not None
            self.transport.sendPacket(
                userauth.MSG_USERAUTH_FAILURE,
                common.NS(b",".join(self.supportedAuthentications)) + b"\x00",
            )
            return None
        return super().ssh_USERAUTH_REQUEST(packet)

    @override
    def _cbFinishedAuth(self, result: Any) -> None:
        assert self.user is not None
        self._done.append(self.method.decode("ascii"))
        policy = self._policy(self.user)
        if policy.methods and not any(tuple(c) == tuple(self._done) for c in policy.methods):
            # More is needed: FAILURE with partial success and what can come next.
            self.supportedAuthentications = self._allowed(self.user)
            assert self.transport is not None
            self.transport.sendPacket(
                userauth.MSG_USERAUTH_FAILURE,
                common.NS(b",".join(self.supportedAuthentications)) + b"\x01",
            )
            return
        super()._cbFinishedAuth(result)

    @override
    def auth_publickey(self, packet: bytes) -> Deferred[Any]:
        algorithm, blob, rest = common.getNS(packet[1:], 2)
        if not is_certificate(blob):
            result: Deferred[Any] = super().auth_publickey(packet)
            return result
        # Conch's own auth_publickey cannot read a certificate (keys.Key.fromString): the
        # same request (RFC 4252 section 7), with the client's address for source-address.
        assert self.transport is not None and self.transport.sessionID is not None
        assert self.user is not None and self.nextService is not None
        has_signature = packet[0]
        signed = signature = None
        if has_signature:
            signature = common.getNS(rest)[0]
            signed = (
                common.NS(self.transport.sessionID)
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + common.NS(self.user)
                + common.NS(self.nextService)
                + common.NS(b"publickey")
                + b"\x01"
                + common.NS(algorithm)
                + common.NS(blob)
            )
        peer = self.transport.transport.getPeer()  # type: ignore[union-attr]
        credentials = _CertificateCredentials(
            self.user, algorithm, blob, signed, signature, getattr(peer, "host", "")
        )
        login: Deferred[Any] = self.portal.login(credentials, None, IConchUser)
        if not has_signature:
            login.addErrback(self._ebCheckKey, packet[1:])
            return login

        def accepted(result: Any) -> Any:
            # For the connection service: sshd takes permit-port-forwarding from it.
            assert self.transport is not None
            cast(_ServerTransport, self.transport).user_certificate = parse_certificate(
                blob, verify=False
            )
            return result

        return login.addCallback(accepted)

    @override
    def auth_password(self, packet: bytes) -> Deferred[Any]:
        assert self.user is not None and self.transport is not None
        server = self._server
        expected = server._passwords.get(self.user)
        if packet[:1] != b"\x00":
            # RFC 4252 section 8: old and new password, after a change request.
            old, new = common.getNS(packet[1:], 2)[:2]
            if expected is not None and hmac.compare_digest(expected, old) and new:
                server._passwords[self.user] = new
                policy = self._policy(self.user)
                server._user_auth[self.user] = policy._replace(password_expired=False)
                return self._avatar()
            delayed: Deferred[Any] = self._ebPassword(
                Failure(UnauthorizedLogin("wrong old password"))
            )
            return delayed
        password = common.getNS(packet[1:])[0]
        if (
            self._policy(self.user).password_expired
            and expected is not None
            and hmac.compare_digest(expected, password)
        ):
            self.transport.sendPacket(
                userauth.MSG_USERAUTH_PASSWD_CHANGEREQ,
                _pack_string("Your password has expired; choose a new one: ") + common.NS(b""),
            )
            return defer.fail(conch_error.IgnoreAuthentication())
        result: Deferred[Any] = super().auth_password(packet)
        return result

    def _avatar(self) -> Deferred[Any]:
        return defer.succeed(_Realm().requestAvatar(self.user or b"", None, IConchUser))

    def auth_keyboard_interactive(self, packet: bytes) -> Deferred[Any]:
        """RFC 4256 section 3.1: start the user's rounds of prompts."""
        assert self.user is not None
        rounds = list(self._policy(self.user).kbd_int)
        if not rounds:
            password = self._server._passwords.get(self.user)
            if password is None:
                return defer.fail(UnauthorizedLogin("no keyboard-interactive for this user"))
            # As sshd with PAM: one "Password: " prompt.
            rounds = [(KbdIntPrompt("Password: ", False, password.decode("utf-8")),)]
        pending: Deferred[Any] = Deferred()
        self._kbd = (pending, rounds)
        self._send_info_request(rounds[0])
        return pending

    def _send_info_request(self, prompts: tuple[KbdIntPrompt, ...]) -> None:
        assert self.transport is not None
        body = (
            _pack_string("rtunnel test server")
            + _pack_string(f"{len(prompts)} prompt(s)")
            + common.NS(b"")
            + struct.pack(">L", len(prompts))
            + b"".join(_pack_string(p.prompt) + bytes((p.echo,)) for p in prompts)
        )
        self.transport.sendPacket(userauth.MSG_USERAUTH_INFO_REQUEST, body)

    def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:  # noqa: N802 (Conch)
        """RFC 4256 section 3.4: check the answers; next round, success or failure."""
        if self._kbd is None:
            return
        pending, rounds = self._kbd
        (count,) = struct.unpack(">L", packet[:4])
        data = packet[4:]
        answers: list[bytes] = []
        for _ in range(count):
            answer, data = common.getNS(data)
            answers.append(answer)
        expected = [p.answer.encode("utf-8") for p in rounds[0]]
        self._server._kbd_answers.append([a.decode("utf-8", "replace") for a in answers])
        if len(answers) != len(expected) or not all(
            hmac.compare_digest(a, e) for a, e in zip(answers, expected, strict=False)
        ):
            self._kbd = None
            pending.errback(Failure(UnauthorizedLogin("wrong keyboard-interactive answers")))
            return
        rounds.pop(0)
        if rounds:
            self._send_info_request(rounds[0])
            return
        self._kbd = None
        self._avatar().chainDeferred(pending)
