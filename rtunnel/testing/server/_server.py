"""
:class:`SSHTestServer`: the server's configuration, life cycle, state and waiting, over
its protocol pieces (transport, authentication, forwarding) and its fault controls.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from twisted.conch.ssh import factory, keys
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import ServerFactory

from rtunnel.client.hostkeys.certificates import SSHCertificate
from rtunnel.testing._certs import read_ca_keys, user_certificate_refusal
from rtunnel.testing._keys import KeyKind, host_key
from rtunnel.testing._keys import _generate as _generate_key
from rtunnel.testing._listening import ListeningAddress
from rtunnel.testing._waiting import DEFAULT_TIMEOUT, Waiters
from rtunnel.testing.server._auth import (
    _USER_SIG_ALGS,
    _PasswordChecker,
    _PublicKeyChecker,
    _Realm,
    _UserAuthServer,
)
from rtunnel.testing.server._context import (
    KbdIntPrompt,
    ServerContext,
    _parse_auth_methods,
    _UserAuth,
)
from rtunnel.testing.server._faults import FaultControls
from rtunnel.testing.server._forwarding import _ForwardingConnection, _InboundProtocol
from rtunnel.testing.server._ports import ForwardListener, _Forward
from rtunnel.testing.server._transport import _ServerTransport

__all__ = ["SSHTestServer"]


class _ServerFactory(factory.SSHFactory):
    protocol = _ServerTransport
    services = {
        b"ssh-userauth": _UserAuthServer,
        b"ssh-connection": _ForwardingConnection,
    }

    def __init__(self, server: SSHTestServer, private_key: keys.Key, portal: Portal) -> None:
        # The pieces see the server through ServerContext (mypy checks that it is one).
        self.server: ServerContext = server
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


class SSHTestServer(FaultControls, ListeningAddress):
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
        super().__init__()
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
        self._waiters = Waiters(self._clock)

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
        await self._waiters.when(
            lambda: not self._inbound,
            timeout=DEFAULT_TIMEOUT,
            what="SSHTestServer.stop()",
            seen=lambda: f"{len(self._inbound)} inbound connections still open",
        )
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

    # Waiting -------------------------------------------------------------------------

    def wait_for_forward(
        self, bind_address: str, port: int = 0, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Deferred[int]:
        """
        Wait until a forward on ``bind_address`` is listening.

        :param bind_address: the address string the client requested.
        :param port: the port; 0 matches any.
        :param timeout: seconds to wait (on the server's reactor); None: no limit.
        :return: a Deferred firing with the forward's port, or failing with
            :class:`~rtunnel.testing.WaitTimeoutError` after ``timeout`` seconds.
        """

        def find() -> int | None:
            for forward in self.forwards:
                if forward.bind_address == bind_address and port in (0, forward.port):
                    return forward.port
            return None

        return self._waiters.when(
            lambda: find() is not None,
            timeout=timeout,
            what=f"SSHTestServer.wait_for_forward({bind_address!r}, {port})",
            seen=lambda: f"the forwards are {self._forwards_text()}",
        ).addCallback(lambda _: cast(int, find()))

    def wait_for_forward_closed(
        self, bind_address: str, port: int, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Deferred[None]:
        """
        Wait until no forward is listed for ``bind_address`` and ``port`` (cancelled, or
        its connection gone).

        :param bind_address: the address string the client requested.
        :param port: the forward's actual port.
        :param timeout: seconds to wait (on the server's reactor); None: no limit.
        :return: a Deferred firing with ``None``, or failing with
            :class:`~rtunnel.testing.WaitTimeoutError` after ``timeout`` seconds.
        """
        return self._waiters.when(
            lambda: ForwardListener(bind_address, port) not in self.forwards,
            timeout=timeout,
            what=f"SSHTestServer.wait_for_forward_closed({bind_address!r}, {port})",
            seen=lambda: f"the forwards are {self._forwards_text()}",
        )

    def wait_for_connections(
        self, count: int, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Deferred[None]:
        """
        Wait until exactly ``count`` SSH connections are live (:attr:`connections`).

        :param count: the number to wait for.
        :param timeout: seconds to wait (on the server's reactor); None: no limit.
        :return: a Deferred firing with ``None``, or failing with
            :class:`~rtunnel.testing.WaitTimeoutError` after ``timeout`` seconds.
        """
        return self._waiters.when(
            lambda: self.connections == count,
            timeout=timeout,
            what=f"SSHTestServer.wait_for_connections({count})",
            seen=lambda: (
                f"{self.connections} SSH connections are live, not exactly {count} "
                f"({self.accepted_connections} accepted since the server was made)"
            ),
        )

    def wait_for_open_channels(
        self, count: int, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Deferred[None]:
        """
        Wait until exactly ``count`` forwarded channels are open (:attr:`open_channels`).

        :param count: the number to wait for.
        :param timeout: seconds to wait (on the server's reactor); None: no limit.
        :return: a Deferred firing with ``None``, or failing with
            :class:`~rtunnel.testing.WaitTimeoutError` after ``timeout`` seconds.
        """
        return self._waiters.when(
            lambda: self.open_channels == count,
            timeout=timeout,
            what=f"SSHTestServer.wait_for_open_channels({count})",
            seen=lambda: f"{self.open_channels} forwarded channels are open, not exactly {count}",
        )

    def _forwards_text(self) -> str:
        listed = sorted(f"{f.bind_address}:{f.port}" for f in self.forwards)
        return "[" + ", ".join(listed) + "]" if listed else "none"

    def _changed(self) -> None:
        self._waiters.changed()

    # Called by the protocol pieces -----------------------------------------------------

    def _transport_made(self, ssh_transport: _ServerTransport) -> None:
        self._transports.add(ssh_transport)
        self._accepted += 1
        self._changed()

    def _forward_gone(self, forward: _Forward) -> None:
        """A forward was cancelled or lost its connection: close it, unless it is held."""
        if not self._keep_if_held(forward):
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
