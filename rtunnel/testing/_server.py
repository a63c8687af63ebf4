"""
An in-process SSH server built on Conch that implements the server side of remote
forwarding (RFC 4254 section 7), for testing SSH clients that use ``ssh -R``.

Pieces, outside in::

    SSHTestServer ---- listens ---> _ServerTransport (one per SSH connection)
                                       |  ssh-userauth: _UserAuthServer + Portal
                                       |     (_PasswordChecker, _PublicKeyChecker:
                                       |      keys and user certificates)
                                       |  ssh-connection: _ForwardingConnection
                                       |     tcpip-forward -> _Forward (listening ports)
    inbound TCP connection -> _InboundProtocol <-> _ForwardedChannel (forwarded-tcpip)

Unlike Conch's stock forwarding channels (``twisted.conch.ssh.forwarding``), the channel
here has flow control both ways and half-close, so memory per channel stays bounded.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, cast

from twisted.conch import error as conch_error
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, connection, factory, keys, transport, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel.client.hostkeys.certificates import (
    CERT_SUFFIX,
    CertificateError,
    SSHCertificate,
    is_certificate,
    key_type_of_algorithm,
    parse_certificate,
    signature_algorithm_of,
)
from rtunnel.client.transport import _algorithms
from rtunnel.client.transport._kex import SecureTransportMixin
from rtunnel.testing._certs import read_ca_keys, user_certificate_refusal
from rtunnel.testing._keys import KeyKind, host_key
from rtunnel.testing._keys import _generate as _generate_key
from rtunnel.testing._listening import ListeningAddress

__all__ = ["ForwardListener", "KbdIntPrompt", "SSHTestServer"]

# OpenSSH's defaults for TCP forwarding channels (channels.h: CHAN_TCP_PACKET_DEFAULT and
# CHAN_TCP_WINDOW_DEFAULT = 64 packets); Conch's 128 KiB default window is slow on loopback.
_MAX_PACKET = 32 * 1024
_WINDOW = 64 * _MAX_PACKET

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


class ForwardListener(NamedTuple):
    """
    One active remote forward on the server, as :attr:`SSHTestServer.forwards` lists it.

    :ivar bind_address: the address string exactly as the client sent it in
        ``tcpip-forward``.
    :ivar port: the port listened on (the allocated one when the client asked for 0).
    """

    bind_address: str
    port: int


def listen_addresses(bind_address: str) -> list[str] | None:
    """
    The interfaces to listen on for a ``tcpip-forward`` bind address, following sshd with
    ``GatewayPorts clientspecified`` (OpenSSH channels.c, ``channel_fwd_bind_addr``).

    The first address must be bound; the others are best effort, as in sshd, which
    succeeds when at least one address of a forward could be bound.

    :param bind_address: the address string from the request.
    :return: interface addresses, or ``None`` for a host name other than ``localhost``
        (the test server does no DNS look-ups).
    """
    if bind_address in ("", "*", "0.0.0.0"):
        return ["0.0.0.0"]
    if bind_address == "localhost":
        return ["127.0.0.1", "::1"]
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        return None
    return [bind_address]


def _server_of(ssh_transport: object) -> SSHTestServer:
    """The test server behind a Conch transport (the one seam where its factory is cast)."""
    return cast(_ServerFactory, cast(Any, ssh_transport).factory).server


def _pack_string(value: str) -> bytes:
    return common.NS(value.encode("utf-8"))


class _Waiter(NamedTuple):
    ready: Callable[[], bool]
    deferred: Deferred[None]


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
        certificates: SSHTestServer | None = None,
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


class _ServerTransport(SecureTransportMixin, transport.SSHServerTransport):
    """
    Conch's server transport with rtunnel's packet layer (the client's ciphers, MACs,
    strict key exchange and rekeying), reporting to the test server and fixing
    server-sig-algs.
    """

    # Everything the client supports, so a test can ask for any of it.
    supportedCiphers = [name.encode() for name in _algorithms.SUPPORTED_CIPHERS]  # noqa: N815
    supportedMACs = [name.encode() for name in _algorithms.SUPPORTED_MACS]  # noqa: N815
    # The client's key exchanges too (RFC 8268 groups, the ML-KEM hybrid), less group
    # exchange: the server has no moduli file to pick groups from.
    supportedKeyExchanges = [  # noqa: N815
        name.encode() for name in _algorithms.SUPPORTED_KEX if "group-exchange" not in name
    ]
    supportedCompressions = [b"none", b"zlib@openssh.com", b"zlib"]  # noqa: N815

    @override
    def connectionMade(self) -> None:
        # Small packets (window adjustments, replies) must not wait for Nagle's algorithm
        # and the peer's delayed ACK: 40 ms each on Linux, which adds up in a test suite.
        ITCPTransport(self.transport).setTcpNoDelay(True)
        ssh_factory = cast(_ServerFactory, cast(Any, self).factory)
        if ssh_factory.ciphers is not None:
            self.supportedCiphers = list(ssh_factory.ciphers)
        if ssh_factory.macs is not None:
            self.supportedMACs = list(ssh_factory.macs)
        self.offer_strict_kex = ssh_factory.offer_strict_kex
        self.rekey_bytes = ssh_factory.rekey_bytes
        self.rekey_clock = ssh_factory.server._clock
        if ssh_factory.server._version is not None:
            # SSHTestServer.set_version(): sent as it is, whatever it holds.
            self.ourVersionString = ssh_factory.server._version
        super().connectionMade()
        _server_of(self)._transport_made(self)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        _server_of(self)._transport_lost(self)

    #: The user certificate the client logged on with (its extensions grant forwarding).
    user_certificate: SSHCertificate | None = None

    # SSHTestServer.freeze(): no reading, and packets held (already in order, not yet
    # sealed) until thaw(), as a stopped sshd session that keeps its TCP connection.
    _held: list[tuple[int, bytes]] | None = None

    @override
    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self._held is not None:
            self._held.append((messageType, payload))
            return
        super().sendPacket(messageType, payload)

    def freeze(self) -> None:
        if self._held is None:
            self._held = []
            cast(IPushProducer, self.transport).pauseProducing()

    def thaw(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        for message_type, payload in held:
            self.sendPacket(message_type, payload)
        cast(IPushProducer, self.transport).resumeProducing()

    @override
    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # RFC 8308 section 3.1: server-sig-algs lists the algorithms accepted for publickey
        # authentication. Conch sends its host key algorithms there (SSHFactory.buildProtocol
        # sets supportedPublicKeys from the host keys), so with an ed25519 host key an
        # OpenSSH client with an RSA key sees no rsa-sha2-* and gives up on the key
        # (OpenSSH 8.8+ will not fall back to ssh-rsa).
        accepted = b",".join(_server_of(self)._user_sig_algs)
        super().sendExtInfo(
            [
                (name, accepted if name == b"server-sig-algs" else value)
                for name, value in extensions
            ]
        )


class KbdIntPrompt(NamedTuple):
    """
    One keyboard-interactive prompt the test server asks (RFC 4256 section 3.2).

    :ivar prompt: the text sent, e.g. ``"Password: "``.
    :ivar echo: whether the client should echo the answer.
    :ivar answer: the answer that is accepted.
    """

    prompt: str
    echo: bool
    answer: str


class _UserAuth(NamedTuple):
    """How one user may log on, beyond passwords and keys."""

    kbd_int: tuple[tuple[KbdIntPrompt, ...], ...]
    methods: tuple[tuple[str, ...], ...]
    password_expired: bool


def _parse_auth_methods(value: str | Iterable[str] | None) -> tuple[tuple[str, ...], ...]:
    """OpenSSH ``AuthenticationMethods``: lists of comma-separated methods, any one list."""
    if value is None:
        return ()
    lists = value.split() if isinstance(value, str) else list(value)
    return tuple(tuple(m for m in item.split(",") if m) for item in lists)


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
        server = _server_of(self.transport)
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


_STREAMLOCAL_FORWARD = b"streamlocal-forward@openssh.com"
_CANCEL_STREAMLOCAL_FORWARD = b"cancel-streamlocal-forward@openssh.com"
_FORWARDED_STREAMLOCAL = b"forwarded-streamlocal@openssh.com"


class _Forward:
    """One ``tcpip-forward`` (or streamlocal forward) on one connection: its listeners."""

    def __init__(
        self,
        bind_address: str,
        port: int,
        ports: list[IListeningPort],
        factory: _InboundFactory | None = None,
    ) -> None:
        self.bind_address = bind_address
        self.port = port
        self.ports = ports
        self.factory = factory

    def stop(self) -> Deferred[None]:
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in self.ports]
        ).addCallback(lambda _: None)


class _ForwardingConnection(connection.SSHConnection):
    """
    The ``ssh-connection`` service: global requests for remote forwarding (RFC 4254
    section 7.1), window accounting by consumption, and no client-opened channels.
    """

    @override
    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.server = _server_of(self.transport)
        self.forwards: dict[tuple[str, int], _Forward] = {}
        self.socket_forwards: dict[str, _Forward] = {}
        # SSHTestServer.delay_replies(): global requests waiting, as (due, packet), and
        # the timers of delayed replies.
        self._delayed_requests: list[tuple[float, bytes]] = []
        self._delayed_calls: set[IDelayedCall] = set()

    @override
    def serviceStopped(self) -> None:
        # Listeners go away with the connection, as in sshd (unless a test holds the port
        # as a stale session would: SSHTestServer.hold_port).
        super().serviceStopped()
        for call in self._delayed_calls:
            if call.active():
                call.cancel()
        self._delayed_calls.clear()
        self._delayed_requests.clear()
        for forward in self.forwards.values():
            self.server._forward_gone(forward)
        self.forwards.clear()
        for forward in self.socket_forwards.values():
            self.server._track(forward.stop())
        self.socket_forwards.clear()
        self.server._changed()

    @override
    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        delay = self.server._global_request_delay
        if not delay and not self._delayed_requests:
            super().ssh_GLOBAL_REQUEST(packet)
            return
        # Delayed as a whole, one after the other, so replies stay in order (RFC 4254
        # section 4).
        self._delayed_requests.append((self.server._clock.seconds() + delay, packet))
        if len(self._delayed_requests) == 1:
            self._later(delay, self._run_delayed_requests)

    def _run_delayed_requests(self) -> None:
        now = self.server._clock.seconds()
        while self._delayed_requests and self._delayed_requests[0][0] <= now:
            super().ssh_GLOBAL_REQUEST(self._delayed_requests.pop(0)[1])
        if self._delayed_requests:
            self._later(self._delayed_requests[0][0] - now, self._run_delayed_requests)

    def _later(self, delay: float, function: Callable[[], None]) -> None:
        def run() -> None:
            self._delayed_calls.discard(call)
            function()

        call = self.server._clock.callLater(max(0.0, delay), run)
        self._delayed_calls.add(call)

    @override
    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int | tuple[int, bytes]:
        # Anything else (keepalive@openssh.com, no-more-sessions@openssh.com, ...) gets
        # REQUEST_FAILURE when the client wants a reply (RFC 4254 section 4).
        if requestType in (_STREAMLOCAL_FORWARD, _CANCEL_STREAMLOCAL_FORWARD):
            # OpenSSH's PROTOCOL §2.4: a Unix-domain socket path instead of address and port.
            try:
                raw, _ = common.getNS(data)
                path = raw.decode("utf-8")
            except (struct.error, UnicodeDecodeError):
                return 0
            if requestType == _STREAMLOCAL_FORWARD:
                return self._socket_forward(path)
            return self._socket_cancel(path)
        try:
            address, rest = common.getNS(data)
            (port,) = struct.unpack(">L", rest)
            bind_address = address.decode("utf-8")
        except (struct.error, UnicodeDecodeError):
            return 0
        if requestType == b"tcpip-forward":
            return self._forward(bind_address, port)
        if requestType == b"cancel-tcpip-forward":
            return self._cancel(bind_address, port)
        return 0

    def _forward(self, bind_address: str, port: int) -> int | tuple[int, bytes]:
        addresses = listen_addresses(bind_address)
        if addresses is None or port > 0xFFFF or self.server._forward_refused(port):
            return 0
        cert = cast(_ServerTransport, self.transport).user_certificate
        if cert is not None and "permit-port-forwarding" not in dict(cert.extensions):
            # sshd (auth-options.c): a certificate grants port forwarding only with this
            # extension, which ssh-keygen adds by default.
            return 0
        inbound = _InboundFactory(self, bind_address)
        reactor = self.server._reactor
        try:
            first = reactor.listenTCP(port, inbound, interface=addresses[0])
        except CannotListenError:
            return 0
        ports = [first]
        inbound.port = first.getHost().port  # type: ignore[attr-defined]
        for address in addresses[1:]:
            with contextlib.suppress(CannotListenError):
                ports.append(reactor.listenTCP(inbound.port, inbound, interface=address))
        self.forwards[bind_address, inbound.port] = _Forward(
            bind_address, inbound.port, ports, inbound
        )
        self.server._changed()
        if port == 0:
            # RFC 4254 section 7.1: the allocated port, as uint32, only when 0 was asked
            # for (sshd sends no payload for a fixed port).
            return 1, struct.pack(">L", inbound.port)
        return 1

    def _socket_forward(self, path: str) -> int:
        cert = cast(_ServerTransport, self.transport).user_certificate
        if not path or (cert is not None and "permit-port-forwarding" not in dict(cert.extensions)):
            return 0
        inbound = _InboundFactory(self, path, unix=True)
        try:
            # As sshd without StreamLocalBindUnlink: an existing socket file is refused.
            listening = self.server._reactor.listenUNIX(path, inbound)  # type: ignore[attr-defined]
        except CannotListenError:
            return 0
        self.socket_forwards[path] = _Forward(path, 0, [listening], inbound)
        self.server._changed()
        return 1

    def _socket_cancel(self, path: str) -> int:
        forward = self.socket_forwards.pop(path, None)
        if forward is None:
            return 0
        self.server._track(forward.stop())
        self.server._changed()
        return 1

    def _cancel(self, bind_address: str, port: int) -> int:
        # Matched on the address string and the actual port, as sshd does
        # (channels.c, channel_cancel_rport_listener_tcpip).
        forward = self.forwards.pop((bind_address, port), None)
        if forward is None:
            return 0
        # The ports close on the next reactor turn (tcp.Port.loseConnection), before the
        # reply below is written to the socket.
        self.server._forward_gone(forward)
        self.server._changed()
        return 1

    @override
    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        # RFC 4254 section 5.1: this server is only the far end of remote forwards; it
        # refuses sessions, direct-tcpip and everything else a client may open.
        (sender,) = struct.unpack(">L", common.getNS(packet)[1][:4])

        def refuse() -> None:
            assert self.transport is not None
            self.transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
                + common.NS(b"rtunnel test server: only remote forwarding")
                + common.NS(b""),
            )

        delay = self.server._channel_open_delay
        if delay:
            self._later(delay, refuse)
        else:
            refuse()

    @override
    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        # Conch grants window back as soon as data arrives, however slowly the data is
        # consumed. Here the channel grants it as its socket takes the data
        # (_ForwardedChannel.dataReceived); everything else is as in Conch.
        local_id, length = struct.unpack(">2L", packet[:8])
        channel = self.channels[local_id]
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            # RFC 4254 section 5.2: the client must not exceed the window.
            self.sendClose(channel)
            return
        channel.localWindowLeft -= length
        channel.dataReceived(packet[8 : 8 + length])


class _InboundFactory(ServerFactory):
    """Builds the protocol for each connection accepted on one forward's listeners."""

    def __init__(self, conn: _ForwardingConnection, bind_address: str, unix: bool = False) -> None:
        self.conn = conn
        #: The address string of the tcpip-forward, or the socket path of a streamlocal one.
        self.bind_address = bind_address
        self.unix = unix
        self.port = 0
        #: Set once the listener outlived its connection (SSHTestServer.hold_port).
        self.stale: _Hold | None = None

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        if self.stale is not None:
            return _StaleProtocol(self.stale)
        return _InboundProtocol(self.conn, self.bind_address, self.port, unix=self.unix)


class _Hold:
    """
    A port held as a stale session holds it (SSHTestServer.hold_port): its listeners, and
    the connections they accepted, which are never answered.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.ports: list[IListeningPort] = []
        self.accepted: set[_StaleProtocol] = set()
        #: The live forward whose listeners the hold takes over when its connection goes.
        self.forward: _Forward | None = None

    def release(self) -> Deferred[None]:
        for protocol in list(self.accepted):
            protocol.transport.abortConnection()
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports]
        ).addCallback(lambda _: None)


class _StaleFactory(ServerFactory):
    def __init__(self, hold: _Hold) -> None:
        self.hold = hold

    @override
    def buildProtocol(self, addr: IAddress | None) -> _StaleProtocol:
        return _StaleProtocol(self.hold)


class _StaleProtocol(Protocol):
    """Accepted on a held port and left hanging, as by a session that no longer runs."""

    transport: ITCPTransport

    def __init__(self, hold: _Hold) -> None:
        self.hold = hold

    @override
    def connectionMade(self) -> None:
        self.hold.accepted.add(self)

    @override
    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        self.hold.accepted.discard(self)


@implementer(IHalfCloseableProtocol)
class _InboundProtocol(Protocol):
    """
    A connection accepted on a forward's listener, spliced to its ``forwarded-tcpip``
    channel. Reading is paused until the client confirms the channel and whenever the
    client's window is exhausted.
    """

    transport: ITCPTransport

    def __init__(
        self, conn: _ForwardingConnection, bind_address: str, port: int, unix: bool = False
    ) -> None:
        self.conn = conn
        self.bind_address = bind_address
        self.port = port
        self.unix = unix
        self._pauses: set[str] = set()
        self.write_closed = False
        self.lost = False
        self.channel = _ForwardedChannel(self, conn)

    def pause(self, reason: str) -> None:
        if not self._pauses:
            IPushProducer(self.transport).pauseProducing()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._pauses:
            self._pauses.discard(reason)
            if not self._pauses:
                IPushProducer(self.transport).resumeProducing()

    @override
    def connectionMade(self) -> None:
        self.conn.server._inbound.add(self)
        self.pause("opening")
        IConsumer(self.transport).registerProducer(self.channel, True)
        if self.unix:
            # OpenSSH's PROTOCOL §2.4: the socket path, then a reserved string.
            self.channel.name = _FORWARDED_STREAMLOCAL
            self.conn.openChannel(self.channel, _pack_string(self.bind_address) + _pack_string(""))
            return
        peer = self.transport.getPeer()
        assert isinstance(peer, IPv4Address | IPv6Address)
        # RFC 4254 section 7.2: address that was connected (as requested), port that was
        # connected (the actual one), originator address and port.
        self.conn.openChannel(
            self.channel,
            _pack_string(self.bind_address)
            + struct.pack(">L", self.port)
            + _pack_string(peer.host)
            + struct.pack(">L", peer.port),
        )

    @override
    def dataReceived(self, data: bytes) -> None:
        self.channel.write(data)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.channel.inbound_eof()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.write_closed = True
        self.close_if_done()

    def close_if_done(self) -> None:
        if self.channel.eof_sent and self.write_closed:
            self.close()

    def shutdown_write(self) -> None:
        # Not once the socket is gone: loseWriteConnection would register its closed file
        # descriptor with the reactor again, which breaks epoll when the number is reused.
        if not self.lost:
            IConsumer(self.transport).unregisterProducer()
            self.transport.loseWriteConnection()

    def close(self) -> None:
        # Unregister first: Twisted's FileDescriptor does not close, or half-close, while
        # a registered producer is paused; it resumes it and waits for more data instead.
        if not self.lost:
            IConsumer(self.transport).unregisterProducer()
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        self.lost = True
        self.conn.server._inbound.discard(self)
        self.conn.server._changed()
        self.channel.inbound_closed()


@implementer(IPushProducer)
class _ForwardedChannel(SSHChannel):
    """
    The ``forwarded-tcpip`` channel for one inbound connection (RFC 4254 section 7.2).

    Flow control, client to socket: the channel is the producer registered on the
    socket; window is granted back only for data the socket took while not asking us to
    pause, so at most one window plus the socket's buffer is held. Socket to client:
    Conch calls ``stopWriting``/``startWriting`` as the client's window runs out and
    comes back, and those pause and resume reading the socket.
    """

    name = b"forwarded-tcpip"

    def __init__(self, inbound: _InboundProtocol, conn: _ForwardingConnection) -> None:
        super().__init__(localWindow=_WINDOW, localMaxPacket=_MAX_PACKET, conn=conn)
        self.connection = conn
        self.inbound = inbound
        self.eof_sent = False
        self._eof_pending = False
        self._ungranted = 0
        self._socket_full = False
        self._confirmed = False

    # Conch hooks -------------------------------------------------------------------

    @override
    def channelOpen(self, specificData: bytes) -> None:
        self._confirmed = True
        self.connection.server._changed()
        if self.inbound.lost:
            # Closed while the open was in flight: a channel open cannot be withdrawn.
            self.loseConnection()
            return
        self.inbound.resume("opening")

    @override
    def openFailed(self, reason: Failure) -> None:
        # OPEN_FAILURE (or the connection went away first): drop the inbound socket now.
        self.inbound.close()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.inbound.transport.write(data)
        self._ungranted += len(data)
        self._grant()

    @override
    def eofReceived(self) -> None:
        # RFC 4254 section 5.3: the client sends no more; shut down our write side once
        # the socket's buffer is flushed.
        self.inbound.shutdown_write()

    @override
    def closeReceived(self) -> None:
        # RFC 4254 section 5.3: answer CLOSE at once; anything still waiting for window
        # can no longer be sent.
        self.buf = b""
        self.loseConnection()

    @override
    def closed(self) -> None:
        self.connection.server._changed()
        self.inbound.close()

    @override
    def stopWriting(self) -> None:
        self.inbound.pause("window")

    @override
    def startWriting(self) -> None:
        self.inbound.resume("window")

    @override
    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        if self._eof_pending and not self.buf:
            self._send_eof()

    # IPushProducer, seen by the inbound socket ---------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self._socket_full = True

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self._socket_full = False
        self._grant()

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        # The socket is gone; connectionLost closes the channel.
        pass

    # Called by _InboundProtocol -----------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._confirmed and not self.localClosed

    def inbound_eof(self) -> None:
        if self.buf:
            self._eof_pending = True
        else:
            self._send_eof()

    def inbound_closed(self) -> None:
        if self._confirmed:
            self.loseConnection()

    def _send_eof(self) -> None:
        self._eof_pending = False
        if not self.eof_sent:
            self.eof_sent = True
            self.connection.sendEOF(self)
            self.inbound.close_if_done()

    def _grant(self) -> None:
        # As OpenSSH does (channels.c, channel_check_window): adjust once three packets'
        # worth or half the window has been consumed, not for every packet.
        threshold = min(3 * self.localMaxPacket, self.localWindowSize // 2)
        if not self._socket_full and self._ungranted >= threshold:
            self.connection.adjustWindow(self, self._ungranted)
            self._ungranted = 0


class _ProbeChannel(SSHChannel):
    """
    A channel the server opens on its own (SSHTestServer.open_unrequested): it records the
    client's answer and closes again if confirmed.
    """

    def __init__(self, name: bytes, conn: _ForwardingConnection) -> None:
        super().__init__(localWindow=_WINDOW, localMaxPacket=_MAX_PACKET, conn=conn)
        self.name = name
        self.answered: Deferred[str | None] = Deferred()

    @override
    def channelOpen(self, specificData: bytes) -> None:
        self.loseConnection()
        if not self.answered.called:
            self.answered.callback(None)

    @override
    def openFailed(self, reason: Failure) -> None:
        if not self.answered.called:
            value = reason.value
            text = value.args[0] if isinstance(value, conch_error.ConchError) else value
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            self.answered.callback(str(text))


class _ServerFactory(factory.SSHFactory):
    protocol = _ServerTransport
    services = {
        b"ssh-userauth": _UserAuthServer,
        b"ssh-connection": _ForwardingConnection,
    }

    def __init__(self, server: SSHTestServer, private_key: keys.Key, portal: Portal) -> None:
        self.server = server
        self.portal = portal
        self.privateKeys = {private_key.sshType(): private_key}
        self.publicKeys = {private_key.sshType(): private_key.public()}
        if server._host_certificate is not None:
            from rtunnel.testing._certs import host_certificate_keys

            public, private = host_certificate_keys(private_key, server._host_certificate)
            self.publicKeys.update(public)
            self.privateKeys.update(private)
        # No moduli file: Conch then leaves out diffie-hellman-group-exchange.
        self.primes = None
        self.rekey_bytes = server._rekey_bytes

    #: Cipher and MAC names to offer instead of every supported one (for tests).
    ciphers: list[bytes] | None = None
    macs: list[bytes] | None = None
    #: Offer strict key exchange (``kex-strict-s-v00@openssh.com``).
    offer_strict_kex = True
    #: Rekey after this many bytes one way (SSHTestServer's ``rekey_bytes``).
    rekey_bytes = 0


class SSHTestServer(ListeningAddress):
    """
    A real SSH server in the calling process, for tests: key exchange with a cached host
    key, password and public key authentication, and the server side of remote
    forwarding (RFC 4254 section 7) with flow control and half-close.

    Forward bind addresses follow sshd with ``GatewayPorts clientspecified``: ``""``,
    ``"*"`` and ``"0.0.0.0"`` listen on all IPv4 addresses, ``"::"`` on all IPv6 ones,
    ``"localhost"`` on 127.0.0.1 (and ::1 when free), and a literal address on that
    address. Host names are refused.

    Fault controls, for testing how a client copes: :meth:`drop_connections`,
    :meth:`freeze` / :meth:`thaw`, :meth:`refuse_forwards` / :meth:`allow_forwards`,
    :meth:`hold_port` / :meth:`release_port` (a stale session's listener),
    :meth:`refuse_authentication`, :meth:`restart` (optionally with another host key) and
    :meth:`delay_replies`; :attr:`accepted_connections` counts how often clients came.
    A hostile server's: :meth:`set_banner`, :meth:`set_version`, :meth:`send_debug` and
    :meth:`drop_connections` send any bytes as text, :meth:`open_unrequested` opens
    channels nobody asked for.
    For faults on the network between client and server, put a
    :class:`~rtunnel.testing.FaultProxy` in front.

    :param reactor: the reactor to listen with; it must provide ``IReactorTCP`` and
        ``IReactorTime``.
    :param host: the interface the SSH server listens on.
    :param port: the SSH port; 0 picks a free one (see :attr:`port` after :meth:`start`).
    :param host_key_type: ``"ed25519"``, ``"ecdsa"`` or ``"rsa"``; the key is generated
        once per process.
    :param password_delay: seconds to wait before answering a wrong password (Conch's
        default is 1; tests want 0).
    :param allow_rsa_sha1: also accept ``ssh-rsa`` (SHA-1) signatures, which OpenSSH 8.8+
        refuses by default and which Conch's stock client still sends.
    :param keyboard_interactive: offer keyboard-interactive to every user (it asks for the
        password with one ``"Password: "`` prompt, as sshd with PAM does). Without it,
        only users given ``keyboard_interactive`` rounds or ``auth_methods`` naming it are
        offered keyboard-interactive.
    :param host_certificate: an OpenSSH host certificate for the host key (a wire blob or a
        ``*-cert.pub`` line, e.g. from ``rtunnel.testing._certs.make_certificate(ca,
        host_key(host_key_type), principals=["127.0.0.1"])``), presented to clients that ask
        for its ``*-cert-v01@openssh.com`` algorithm; a certificate for another key is a
        ``ValueError`` when the server starts.
    :param trusted_user_ca_keys: CA keys whose user certificates
        (``*-cert-v01@openssh.com``) are accepted for public key log-on, as sshd's
        ``TrustedUserCAKeys``: ``Key`` objects, OpenSSH public key lines (``str``), or
        files of such lines (``pathlib.Path``). A certificate is accepted when it is a
        user certificate signed by one of them, valid now, listing one of the user's
        principals (see :meth:`add_user`), with only critical options sshd knows
        (``force-command``, which has nothing to restrict here, ``source-address``, which
        is honoured, and ``verify-required``), and the request is signed by the certified
        key. Remote forwarding needs its ``permit-port-forwarding`` extension, as in sshd.
        Refusals are publickey failures; :attr:`certificate_refusals` says why, in sshd's
        log words. A bad line or a certificate given as a CA key is a ``ValueError``.
    :param rekey_bytes: start a key exchange once this many bytes have gone one way since
        the last one, as sshd's ``RekeyLimit`` (each direction on its own; 0, the
        default: only the ciphers' own limits).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str = "127.0.0.1",
        port: int = 0,
        host_key_type: KeyKind = "ed25519",
        *,
        password_delay: int = 0,
        allow_rsa_sha1: bool = False,
        keyboard_interactive: bool = False,
        host_certificate: bytes | str | None = None,
        trusted_user_ca_keys: Iterable[keys.Key | str | os.PathLike[str]] = (),
        rekey_bytes: int = 0,
    ) -> None:
        if rekey_bytes < 0:
            raise ValueError(f"rekey_bytes must be 0 or more, not {rekey_bytes}")
        self._rekey_bytes = rekey_bytes
        self._host_certificate = host_certificate
        self._trusted_user_cas = read_ca_keys(trusted_user_ca_keys)
        self._principals: dict[bytes, tuple[str, ...] | None] = {}
        self._certificate_refusals: list[str] = []
        self._reactor = reactor
        self._keyboard_interactive = keyboard_interactive
        self._clock = IReactorTime(reactor)
        self._host = host
        self._port = port
        self._host_key = host_key(host_key_type)
        self._password_delay = password_delay
        self._user_sig_algs = _USER_SIG_ALGS + ((b"ssh-rsa",) if allow_rsa_sha1 else ())
        self._passwords: dict[bytes, bytes] = {}
        self._user_auth: dict[bytes, _UserAuth] = {}
        self._auth_log: list[tuple[str, str]] = []
        self._kbd_answers: list[list[str]] = []
        self._authorized_keys: dict[bytes, list[keys.Key]] = {}
        self._listening: IListeningPort | None = None
        self._transports: set[_ServerTransport] = set()
        self._inbound: set[_InboundProtocol] = set()
        self._stopping: set[Deferred[None]] = set()
        self._waiters: list[_Waiter] = []
        # Fault controls.
        self._accepted = 0
        self._refuse_auth = False
        self._refuse_all_forwards = False
        self._refused_ports: set[int] = set()
        self._holds: dict[int, _Hold] = {}
        self._global_request_delay = 0.0
        self._channel_open_delay = 0.0
        self._banner: bytes | None = None
        self._version: bytes | None = None

    # Configuration -------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        password: str | None = None,
        authorized_keys: Iterable[keys.Key] = (),
        *,
        keyboard_interactive: Iterable[Iterable[KbdIntPrompt | tuple[str, bool, str]]] = (),
        auth_methods: str | Iterable[str] | None = None,
        password_expired: bool = False,
        principals: Iterable[str] | None = None,
    ) -> None:
        """
        Let a user log on with a password, public keys, keyboard-interactive, or several
        in turn. May be called while running; calling it again for a user adds keys and
        replaces the password and the other settings.

        :param username: the user name the client sends.
        :param password: the user's password, or ``None`` for no password log-on. Without
            ``keyboard_interactive`` rounds, keyboard-interactive asks for it with one
            ``"Password: "`` prompt, as sshd with PAM does.
        :param authorized_keys: public (or private) keys the user may log on with.
        :param keyboard_interactive: rounds of prompts, each a list of
            :class:`KbdIntPrompt` (or ``(prompt, echo, answer)``): every answer of every
            round must match.
        :param auth_methods: the methods the user must pass in turn, as OpenSSH's
            ``AuthenticationMethods``: e.g. ``"publickey,password"``, or several lists
            (``["publickey,password", "keyboard-interactive"]``) of which one suffices.
            Each step but the last is answered with partial success.
        :param password_expired: a correct password gets a password change request
            (``SSH_MSG_USERAUTH_PASSWD_CHANGEREQ``); the client may then set a new one.
        :param principals: the certificate principals that log on as this user, as sshd's
            ``AuthorizedPrincipalsFile``; default (None): the user name, as sshd without
            that file. A user certificate must list one of them (see
            ``trusted_user_ca_keys``); only users added here can log on with one, as sshd
            wants an existing account.
        """
        name = username.encode("utf-8")
        self._principals[name] = None if principals is None else tuple(principals)
        self._user_auth[name] = _UserAuth(
            tuple(tuple(KbdIntPrompt(*p) for p in r) for r in keyboard_interactive),
            _parse_auth_methods(auth_methods),
            password_expired,
        )
        if password is not None:
            self._passwords[name] = password.encode("utf-8")
        self._authorized_keys.setdefault(name, []).extend(
            key if key.isPublic() else key.public() for key in authorized_keys
        )

    # Life cycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Start listening for SSH connections.

        :return: a Deferred that fires once :attr:`host` and :attr:`port` are known.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._listening is not None:
            raise RuntimeError("SSHTestServer already started")
        portal = Portal(
            _Realm(),
            [
                _PasswordChecker(self._passwords),
                _PublicKeyChecker(self._authorized_keys, set(self._user_sig_algs), self),
            ],
        )
        # Conch's SSHFactory is a Factory but not typed as the ServerFactory listenTCP wants.
        ssh_factory = cast(ServerFactory, _ServerFactory(self, self._host_key, portal))
        self._listening = self._reactor.listenTCP(self._port, ssh_factory, interface=self._host)

    def stop(self) -> Deferred[None]:
        """
        Stop listening, drop every SSH connection and inbound connection, and close every
        forward listener.

        :return: a Deferred that fires once all of those are closed.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self, *, keep_holds: bool = False) -> None:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await defer.maybeDeferred(listening.stopListening)
        await self.drop_connections()
        for inbound in list(self._inbound):
            inbound.transport.abortConnection()
        await self._when(lambda: not self._inbound)
        await defer.gatherResults(list(self._stopping))
        if not keep_holds:
            await defer.gatherResults([self.release_port(port) for port in list(self._holds)])

    def restart(self, host_key: keys.Key | KeyKind | None = None) -> Deferred[None]:
        """
        Stop (dropping every connection and forward) and start again on the same port, as
        a restarted sshd. Ports held with :meth:`hold_port` stay held; fault settings stay.

        :param host_key: the host key from now on: ``None`` keeps the current one; a kind
            (``"ed25519"``, ``"ecdsa"``, ``"rsa"``) generates a new key of that kind,
            different from every earlier one (a server whose key changed: clients that
            check it must refuse it); or a private
            :class:`~twisted.conch.ssh.keys.Key`.
        :return: a Deferred that fires once the server listens again.
        """
        return Deferred.fromCoroutine(self._restart(host_key))

    async def _restart(self, host_key: keys.Key | KeyKind | None) -> None:
        if isinstance(host_key, str):
            host_key = _generate_key(host_key)
        if host_key is not None and host_key.isPublic():
            raise ValueError("restart() needs a private host key")
        port = self.port
        await self._stop(keep_holds=True)
        if host_key is not None:
            self._host_key = host_key
        self._port = port
        await self._start()

    def drop_connections(
        self, description: str | bytes = b"rtunnel test server dropped you"
    ) -> Deferred[None]:
        """
        Disconnect every SSH client (``SSH_MSG_DISCONNECT``, by application) while still
        accepting new ones: the server-side failure a reconnecting client must survive.
        Their forwards close with them. Frozen connections are thawed first.

        :param description: the DISCONNECT message's text, sent as it is (str as UTF-8).
        :return: a Deferred that fires once the connections are gone.
        """
        text = description.encode("utf-8") if isinstance(description, str) else description
        for ssh_transport in list(self._transports):
            ssh_transport.thaw()
            ssh_transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, text)
        return self.wait_for_connections(0)

    # Fault controls --------------------------------------------------------------------

    def freeze(self) -> None:
        """
        Freeze every live SSH connection, as a stopped (``SIGSTOP``) sshd session: it stops
        reading, and whatever it would send is held, while the TCP connection stays open.
        Keepalives go unanswered, so a client with keepalives notices. Connections made
        later are not frozen.

        A frozen connection does not notice that its client went away until it is thawed.
        """
        for ssh_transport in self._transports:
            ssh_transport.freeze()

    def thaw(self) -> None:
        """Undo :meth:`freeze`: held packets are sent, in order, and reading resumes."""
        for ssh_transport in list(self._transports):
            ssh_transport.thaw()

    def refuse_authentication(self, refuse: bool = True) -> None:
        """
        Refuse every authentication request, correct or not (``SSH_MSG_USERAUTH_FAILURE``),
        as sshd does for a locked account; or, with ``refuse=False``, stop refusing.
        Requests are still listed in :attr:`auth_attempts`.

        :param refuse: whether to refuse.
        """
        self._refuse_auth = refuse

    def refuse_forwards(self, port: int | None = None) -> None:
        """
        Answer ``tcpip-forward`` requests with ``SSH_MSG_REQUEST_FAILURE``: all of them, or
        those that ask for ``port`` (matched on the requested port, so ``0`` refuses the
        requests for an allocated port). Forwards already listening are not touched.

        :param port: the requested port to refuse, or ``None`` for every request.
        """
        if port is None:
            self._refuse_all_forwards = True
        else:
            self._refused_ports.add(port)

    def allow_forwards(self, port: int | None = None) -> None:
        """
        Undo :meth:`refuse_forwards`: for ``port``, or (``None``) entirely.

        :param port: the requested port to allow again, or ``None`` for all.
        """
        if port is None:
            self._refuse_all_forwards = False
            self._refused_ports.clear()
        else:
            self._refused_ports.discard(port)

    def hold_port(self, port: int, bind_address: str = "127.0.0.1") -> None:
        """
        Hold ``port`` as a stale session would: sshd keeps a dead session's forward
        listening until it notices the session is gone, so a new session's
        ``tcpip-forward`` for the same port is refused meanwhile. If a forward listens on
        ``port`` now, its listener outlives its connection (dropped, or cancelled);
        otherwise the port is bound now. Connections accepted on a held port are left
        hanging. Held until :meth:`release_port` (or :meth:`stop`).

        :param port: the port.
        :param bind_address: the interface to bind, when the port is bound now.
        :raises twisted.internet.error.CannotListenError: the port could not be bound.
        """
        if port in self._holds:
            return
        hold = _Hold(port)
        for conn in self._ssh_connections():
            for forward in conn.forwards.values():
                if forward.port == port:
                    hold.forward = forward
        if hold.forward is None:
            addresses = listen_addresses(bind_address) or [bind_address]
            hold.ports.append(
                self._reactor.listenTCP(port, _StaleFactory(hold), interface=addresses[0])
            )
        self._holds[port] = hold

    def release_port(self, port: int) -> Deferred[None]:
        """
        Stop holding a port (:meth:`hold_port`): its held listener closes, and connections
        accepted on it are aborted. A live forward on it is not touched.

        :param port: the port.
        :return: a Deferred that fires once the listener is closed.
        """
        hold = self._holds.pop(port, None)
        if hold is None:
            return defer.succeed(None)
        return hold.release()

    @property
    def held_ports(self) -> list[int]:
        """The ports held with :meth:`hold_port`, in no particular order."""
        return list(self._holds)

    def delay_replies(self, global_requests: float = 0.0, channel_opens: float = 0.0) -> None:
        """
        Answer slowly, as a loaded server: every global request (``tcpip-forward``,
        ``cancel-tcpip-forward``, keepalives) is handled ``global_requests`` seconds after
        it arrives, in order; the answer to a channel open the client sends (always a
        refusal here) comes ``channel_opens`` seconds late. 0 answers at once again.

        :param global_requests: seconds.
        :param channel_opens: seconds.
        """
        if global_requests < 0 or channel_opens < 0:
            raise ValueError("delays must not be negative")
        self._global_request_delay = global_requests
        self._channel_open_delay = channel_opens

    # A hostile server (RELIABILITY.md D17, D18): text a client must escape, and channels
    # nobody asked for.

    def set_banner(self, banner: str | bytes | None) -> None:
        """
        Send ``banner`` (``SSH_MSG_USERAUTH_BANNER``, RFC 4252 section 5.4) to each client
        that starts authenticating from now on, byte for byte: control characters,
        terminal escapes and all (str as UTF-8). None sends none again.

        :param banner: the text.
        """
        self._banner = banner.encode("utf-8") if isinstance(banner, str) else banner

    def set_version(self, version: str | bytes | None) -> None:
        """
        Identify as ``version`` (the whole line, e.g. ``"SSH-2.0-Evil\x1b[31m"``, without
        the CR LF) to clients that connect from now on, byte for byte. None restores the
        default.

        :param version: the version line.
        """
        self._version = version.encode("utf-8") if isinstance(version, str) else version

    def send_debug(self, message: str | bytes, always_display: bool = True) -> None:
        """
        Send ``SSH_MSG_DEBUG`` (RFC 4253 section 11.3) with ``message``, byte for byte, to
        every connected client.

        :param message: the text.
        :param always_display: the message's flag.
        """
        text = message.encode("utf-8") if isinstance(message, str) else message
        for ssh_transport in list(self._transports):
            ssh_transport.sendDebug(text, always_display)

    def open_unrequested(
        self,
        connected_address: str | bytes,
        connected_port: int,
        *,
        origin_address: str | bytes = "127.0.0.1",
        origin_port: int = 0,
        count: int = 1,
        channel_type: str = "forwarded-tcpip",
    ) -> Deferred[list[str | None]]:
        """
        Open ``count`` channels to every authenticated client that nobody connected for:
        ``forwarded-tcpip`` naming any address and port (whether the client asked for
        it or not; bytes sent as they are), or another ``channel_type`` with the same
        data. A confirmed channel is closed again at once.

        :param connected_address: the address the open names as connected.
        :param connected_port: the port.
        :param origin_address: the originator address.
        :param origin_port: the originator port.
        :param count: channels per client.
        :param channel_type: the channel type.
        :return: a Deferred firing with the client's answers, in order: None for each
            confirmation, the description of each ``CHANNEL_OPEN_FAILURE``.
        """

        def raw(value: str | bytes) -> bytes:
            return value.encode("utf-8") if isinstance(value, str) else value

        data = (
            common.NS(raw(connected_address))
            + struct.pack(">L", connected_port)
            + common.NS(raw(origin_address))
            + struct.pack(">L", origin_port)
        )
        answers: list[Deferred[str | None]] = []
        for conn in self._ssh_connections():
            for _ in range(count):
                channel = _ProbeChannel(channel_type.encode("ascii"), conn)
                conn.openChannel(channel, data)
                answers.append(channel.answered)
        return defer.gatherResults(answers)

    # State ---------------------------------------------------------------------------

    @property
    def host_key(self) -> keys.Key:
        """The server's public host key."""
        return cast(keys.Key, self._host_key.public())

    @property
    def known_hosts_line(self) -> str:
        """
        The server's ``known_hosts`` line, e.g. ``[127.0.0.1]:2222 ssh-ed25519 AAAA...``
        (OpenSSH writes the bare host for port 22 and ``[host]:port`` otherwise).
        """
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key.toString('openssh').decode('ascii')}"

    def write_known_hosts(self, path: Path | str, port: int | None = None) -> Path:
        """
        Write a ``known_hosts`` file that holds only this server's key.

        :param path: the file to write (replaced if present).
        :param port: the port clients connect to, when not :attr:`port`: a
            :class:`~rtunnel.testing.FaultProxy`'s, for instance.
        :return: the path written.
        """
        path = Path(path)
        line = self.known_hosts_line
        if port is not None:
            name = self.host if port == 22 else f"[{self.host}]:{port}"
            line = f"{name} {line.split(' ', 1)[1]}"
        path.write_text(line + "\n")
        return path

    @property
    def forwards(self) -> list[ForwardListener]:
        """The active remote forwards, over all connections, in no particular order."""
        return [
            ForwardListener(forward.bind_address, forward.port)
            for conn in self._ssh_connections()
            for forward in conn.forwards.values()
        ]

    @property
    def socket_forwards(self) -> list[str]:
        """The Unix-domain socket paths clients asked this server to listen on."""
        return [path for conn in self._ssh_connections() for path in conn.socket_forwards]

    @property
    def auth_attempts(self) -> list[tuple[str, str]]:
        """Every authentication request received, as (user, method), in order."""
        return list(self._auth_log)

    @property
    def certificate_refusals(self) -> list[str]:
        """
        Why each refused user certificate was refused, in order, in sshd's log words where
        sshd has them (e.g. ``"Certificate invalid: expired"``).
        """
        return list(self._certificate_refusals)

    @property
    def keyboard_interactive_answers(self) -> list[list[str]]:
        """The answers of every keyboard-interactive response received, in order."""
        return list(self._kbd_answers)

    @property
    def connections(self) -> int:
        """The number of live SSH connections (authenticated or not)."""
        return len(self._transports)

    @property
    def accepted_connections(self) -> int:
        """
        The number of SSH connections accepted since this object was made (over
        restarts): how often a client (re)connected.
        """
        return self._accepted

    @property
    def open_channels(self) -> int:
        """The number of ``forwarded-tcpip`` channels confirmed by a client and not closed."""
        return sum(1 for inbound in self._inbound if inbound.channel.is_open)

    def _user_certificate_refusal(
        self, cert: SSHCertificate, user: bytes, client_address: str
    ) -> str | None:
        name = user.decode("utf-8", "replace")
        if user not in self._principals:
            return f"Invalid user {name}"
        return user_certificate_refusal(
            cert,
            user=name,
            trusted_cas=self._trusted_user_cas,
            principals=self._principals[user],
            now=self._clock.seconds(),
            client_address=client_address,
        )

    def _user_certificate_refused(self, reason: str) -> None:
        self._certificate_refusals.append(reason)

    def _ssh_connections(self) -> list[_ForwardingConnection]:
        return [
            service
            for t in self._transports
            if isinstance(service := t.service, _ForwardingConnection)
            and hasattr(service, "forwards")
        ]

    # Waiting -------------------------------------------------------------------------

    def wait_for_forward(self, bind_address: str, port: int = 0) -> Deferred[int]:
        """
        Wait until a forward on ``bind_address`` is listening.

        :param bind_address: the address string the client requested.
        :param port: the port; 0 matches any.
        :return: a Deferred firing with the forward's port.
        """

        def find() -> int | None:
            for forward in self.forwards:
                if forward.bind_address == bind_address and port in (0, forward.port):
                    return forward.port
            return None

        return self._when(lambda: find() is not None).addCallback(lambda _: cast(int, find()))

    def wait_for_forward_closed(self, bind_address: str, port: int) -> Deferred[None]:
        """
        Wait until no forward is listed for ``bind_address`` and ``port`` (cancelled, or
        its connection gone).

        :param bind_address: the address string the client requested.
        :param port: the forward's actual port.
        :return: a Deferred firing with ``None``.
        """
        return self._when(lambda: ForwardListener(bind_address, port) not in self.forwards)

    def wait_for_connections(self, count: int) -> Deferred[None]:
        """
        Wait until exactly ``count`` SSH connections are live.

        :param count: the number to wait for.
        :return: a Deferred firing with ``None``.
        """
        return self._when(lambda: self.connections == count)

    def wait_for_open_channels(self, count: int) -> Deferred[None]:
        """
        Wait until exactly ``count`` forwarded channels are open.

        :param count: the number to wait for.
        :return: a Deferred firing with ``None``.
        """
        return self._when(lambda: self.open_channels == count)

    def _when(self, ready: Callable[[], bool]) -> Deferred[None]:
        if ready():
            return defer.succeed(None)

        def cancel(deferred: Deferred[None]) -> None:
            # E.g. by addTimeout: forget the waiter.
            self._waiters = [w for w in self._waiters if w.deferred is not deferred]

        waiter = _Waiter(ready, Deferred(cancel))
        self._waiters.append(waiter)
        return waiter.deferred

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.ready():
                waiter.deferred.callback(None)
            else:
                self._waiters.append(waiter)

    # Called by the protocol pieces -----------------------------------------------------

    def _transport_made(self, ssh_transport: _ServerTransport) -> None:
        self._transports.add(ssh_transport)
        self._accepted += 1
        self._changed()

    def _forward_refused(self, port: int) -> bool:
        return self._refuse_all_forwards or port in self._refused_ports

    def _forward_gone(self, forward: _Forward) -> None:
        """A forward was cancelled or lost its connection: close it, unless it is held."""
        hold = self._holds.get(forward.port)
        if hold is not None and hold.forward is forward and forward.factory is not None:
            forward.factory.stale = hold
            hold.ports.extend(forward.ports)
            hold.forward = None
            return
        self._track(forward.stop())

    def _transport_lost(self, ssh_transport: _ServerTransport) -> None:
        self._transports.discard(ssh_transport)
        self._changed()

    def _track(self, stopping: Deferred[None]) -> None:
        def done(result: object) -> object:
            self._stopping.discard(stopping)
            return result

        self._stopping.add(stopping)
        stopping.addBoth(done)
