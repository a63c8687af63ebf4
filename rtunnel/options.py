"""
What a :class:`~rtunnel.ReverseTunnel` is told: frozen, typed option groups, each value
checked once, where its group is made, and held as the library type the tunnel uses (a
:class:`~rtunnel.Proxy`, :class:`~rtunnel.JumpHost` s, algorithm tuples already
resolved), so nothing is read from text twice.

- :class:`AuthOptions`: who logs on and how (user, credentials, methods, prompts).
- :class:`HostKeyOptions`: which host keys are trusted.
- :class:`AlgorithmOptions`: the SSH transport (algorithms, rekeying, versions).
- :class:`ReachOptions`: how the server is reached (timeouts, socket, proxy, jump hosts).
- :class:`ChannelOptions`: the forwarded channels (window, limits, timeouts, targets).
- :class:`StayingUpOptions`: reconnecting, keepalives, and logging off.
- :class:`TunnelOptions`: the groups, and the log level.

Two ways to make one::

    TunnelOptions.create(user="tunnel", auth=[PrivateKeyFile(key)], known_hosts=path)
    TunnelOptions(authentication=AuthOptions(user="tunnel", auth=(PrivateKeyFile(key),)))

:meth:`TunnelOptions.create` takes every setting by its flat name (each name belongs to
exactly one group; :class:`TunnelSettings` lists them with the forms they accept, such as
OpenSSH's ``"+ssh-rsa"`` for an algorithm list or a proxy URL) and ``base=`` to derive one
set of options from another, as asyncssh's ``Options(options=base, **kw)`` does. The groups
themselves are plain frozen dataclasses: read them, and derive with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypedDict, cast, get_type_hints

from typing_extensions import Unpack

from rtunnel._core.policy import ReconnectPolicy
from rtunnel._core.syntax import parse_permit_remote_open
from rtunnel.client.auth._pubkey import resolve_pubkey_algorithms
from rtunnel.client.auth.credentials import (
    SUPPORTED_METHODS,
    Credential,
    PasswordCallback,
    check_methods,
    check_password_prompts,
)
from rtunnel.client.hostkeys.verify import (
    DEFAULT_GLOBAL_KNOWN_HOSTS,
    HostKeyCallback,
    HostKeyPolicy,
    check_fingerprint_hash,
    host_key_blob,
)
from rtunnel.client.transport import _algorithms
from rtunnel.client.transport._packet import MAX_PACKET_LENGTH
from rtunnel.client.transport._sockopts import TCPOptions
from rtunnel.errors import SpecError

if TYPE_CHECKING:
    from twisted.conch.ssh.keys import Key

    from rtunnel.client.reach.jump import JumpHost, JumpHosts
    from rtunnel.client.reach.proxy import Proxy

__all__ = [
    "DEFAULT_MAX_PACKET",
    "DEFAULT_WINDOW_SIZE",
    "LOGOFF_TIMEOUT",
    "MAX_MAX_PACKET",
    "AlgorithmOptions",
    "AuthOptions",
    "ChannelOptions",
    "HostKeyOptions",
    "ReachOptions",
    "StayingUpOptions",
    "TunnelOptions",
    "TunnelSettings",
    "known_hosts_paths",
]

DEFAULT_WINDOW_SIZE: Final = 2 * 1024 * 1024
DEFAULT_MAX_PACKET: Final = 32 * 1024
#: The largest ``max_packet``: the packet layer's length limit less room for the message
#: header, padding and MAC (OpenSSH likewise advertises far below its 256 KiB limit).
MAX_MAX_PACKET: Final = MAX_PACKET_LENGTH - 1024
#: How long logoff waits for cancels and channel closes before it drops the connection.
LOGOFF_TIMEOUT: Final = 5.0
#: The user's known_hosts file, as OpenSSH reads it (``~`` expanded when options are made).
DEFAULT_KNOWN_HOSTS: Final = (Path("~/.ssh/known_hosts"),)

_NOT_NEGATIVE: Final = "channel_idle_timeout and logoff_timeout must not be negative."


def _set(instance: object, name: str, value: object) -> None:
    # A frozen dataclass normalises its own fields in __post_init__ this way.
    object.__setattr__(instance, name, value)


def known_hosts_paths(value: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    """One known_hosts path or several, as a tuple with ``~`` expanded."""
    if isinstance(value, (str, Path)):
        value = [value]
    # os.path.expanduser leaves an unknown "~user" as it is, where Path.expanduser raises.
    return tuple(Path(os.path.expanduser(p)) for p in value)


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise SpecError(f"{name} must be a positive number of seconds, or None.")


@dataclass(frozen=True)
class AuthOptions:
    """
    Who logs on, and how.

    :ivar user: the user name to log on as (None, the default: the local user).
    :ivar auth: credentials to try, in order: key files, passwords, and callbacks
        (:class:`~rtunnel.AskPassword`, :class:`~rtunnel.KeyboardInteractive`), and
        :class:`~rtunnel.SSHAgent` for an agent's keys.
    :ivar preferred_authentications: the methods to try, in order (OpenSSH
        ``PreferredAuthentications``; default gssapi-with-mic, publickey,
        keyboard-interactive, password, OpenSSH's order).
    :ivar try_all_auth_methods: after those, also try any other method the server offers
        that there are credentials for (the reference's TryAllAvailableAuthMethods).
    :ivar password_prompt: keyboard-interactive prompts that match this pattern (``?``,
        ``*``, ``[a-z]``, ``\\``; the reference's PasswordPrompt) are answered with the
        password; None: never.
    :ivar number_of_password_prompts: how often an :class:`~rtunnel.AskPassword` is asked
        and how many keyboard-interactive rounds are started (OpenSSH
        ``NumberOfPasswordPrompts``).
    :ivar password_change: answers a password change request for an expired password:
        gets the server's prompt, returns the new password (may be async) or None; without
        it such a request fails the logon with :class:`~rtunnel.errors.AuthenticationError`.
    :ivar pubkey_accepted_algorithms: the public key signature algorithms to use, in
        order (given as a list, or a string in OpenSSH's ``PubkeyAcceptedAlgorithms``
        syntax: ``+``, ``-``, ``^``); keys none of them fits are skipped. None (default):
        RSA keys sign with the best SHA-2 algorithm the server lists (the reference's
        SSHPubKeyAuthSigAlgorithms).
    :ivar auth_timeout: seconds for authentication once the keys are in use (default 120,
        sshd's own ``LoginGraceTime``; None: no limit); past it the logon fails with
        :class:`~rtunnel.errors.TimedOutError`.
    """

    user: str | None = None
    auth: tuple[Credential, ...] = ()
    preferred_authentications: tuple[str, ...] = SUPPORTED_METHODS
    try_all_auth_methods: bool = False
    password_prompt: str | None = "*assword*"
    number_of_password_prompts: int = 3
    password_change: PasswordCallback | None = None
    pubkey_accepted_algorithms: tuple[str, ...] | None = None
    auth_timeout: float | None = 120.0

    def __post_init__(self) -> None:
        _set(self, "auth", tuple(self.auth))
        given = cast("Sequence[str] | None", self.preferred_authentications)
        _set(self, "preferred_authentications", tuple(given or SUPPORTED_METHODS))
        check_methods(self.preferred_authentications)
        check_password_prompts(self.number_of_password_prompts)
        _set(
            self,
            "pubkey_accepted_algorithms",
            resolve_pubkey_algorithms(self.pubkey_accepted_algorithms),
        )
        _positive_or_none("auth_timeout", self.auth_timeout)


@dataclass(frozen=True)
class HostKeyOptions:
    """
    Which host keys are trusted.

    :ivar known_hosts: known_hosts file(s) to check the host key against (default
        ``~/.ssh/known_hosts``); ``accept-new`` writes to the first.
    :ivar host_key_policy: ``"strict"`` (default: unknown keys are refused),
        ``"accept-new"`` (unknown keys are trusted and written to the first known_hosts
        file; changed keys are refused) or ``"accept-any"`` (no check, with a warning).
    :ivar global_known_hosts: known_hosts file(s) read but never written (OpenSSH's
        ``GlobalKnownHostsFile``; default ``/etc/ssh/ssh_known_hosts{,2}``).
    :ivar accepted_host_keys: host keys trusted for this server whatever known_hosts says
        (given as ``Key`` objects, OpenSSH public key lines or wire blobs; held as wire
        blobs; the reference's SSHAcceptServerHostKey).
    :ivar accepted_fingerprints: host key fingerprints trusted likewise: OpenSSH's
        ``SHA256:...`` or colon-hex SHA256/SHA1/MD5 (the reference's
        SSHAcceptServerHostKeyFingerPrint).
    :ivar accepted_ca_keys: CA keys trusted to sign this server's host certificate, as a
        ``@cert-authority`` line in known_hosts would be (the reference's
        SSHAcceptServerCAKey); the certificate must still be a valid host certificate
        naming the host.
    :ivar host_key_callback: decides last on the host key (may return a Deferred or an
        awaitable), seeing a :class:`~rtunnel.HostKeyInfo` with what rtunnel would decide;
        a revoked key is refused without asking (the reference's SSHServerAuthentication
        event).
    :ivar fingerprint_hash: ``"sha256"`` (default), ``"sha1"`` or ``"md5"``: the
        fingerprint shown in messages and to the callback (OpenSSH's ``FingerprintHash``).
    :ivar hash_known_hosts: hash the host name of keys ``accept-new`` writes (OpenSSH's
        ``HashKnownHosts``).
    """

    known_hosts: tuple[Path, ...] = DEFAULT_KNOWN_HOSTS
    host_key_policy: HostKeyPolicy = "strict"
    global_known_hosts: tuple[Path, ...] = DEFAULT_GLOBAL_KNOWN_HOSTS
    accepted_host_keys: tuple[bytes, ...] = ()
    accepted_fingerprints: tuple[str, ...] = ()
    accepted_ca_keys: tuple[bytes, ...] = ()
    host_key_callback: HostKeyCallback | None = None
    fingerprint_hash: str = "sha256"
    hash_known_hosts: bool = False

    def __post_init__(self) -> None:
        known = cast("str | Path | Sequence[str | Path] | None", self.known_hosts)
        _set(
            self, "known_hosts", known_hosts_paths(DEFAULT_KNOWN_HOSTS if known is None else known)
        )
        if self.host_key_policy not in ("strict", "accept-new", "accept-any"):
            raise SpecError(
                f"Unknown host key policy {self.host_key_policy!r}: "
                "use 'strict', 'accept-new' or 'accept-any'."
            )
        known = cast("str | Path | Sequence[str | Path] | None", self.global_known_hosts)
        _set(
            self,
            "global_known_hosts",
            DEFAULT_GLOBAL_KNOWN_HOSTS if known is None else known_hosts_paths(known),
        )
        _set(self, "accepted_host_keys", tuple(host_key_blob(k) for k in self.accepted_host_keys))
        _set(
            self,
            "accepted_fingerprints",
            tuple(f for f in self.accepted_fingerprints if f.strip()),
        )
        _set(self, "accepted_ca_keys", tuple(host_key_blob(k) for k in self.accepted_ca_keys))
        check_fingerprint_hash(self.fingerprint_hash)


@dataclass(frozen=True)
class AlgorithmOptions:
    """
    The SSH transport: what is offered, and when keys are renewed.

    :ivar ciphers: the ciphers to offer, in order: given as a list of names, or a string in
        OpenSSH's ``Ciphers`` syntax (``+`` appends to the default, ``-`` removes, ``^``
        puts first); held resolved. Default: AES-GCM, chacha20-poly1305, AES-CTR
        (chacha20-poly1305 first on a processor without AES instructions). No name in
        common with the server fails the logon with :class:`~rtunnel.errors.NegotiationError`.
    :ivar macs: the MACs to offer, likewise (default: the SHA-2 encrypt-then-MAC ones
        first).
    :ivar kex_algorithms: the key exchange methods to offer, likewise.
    :ivar host_key_algorithms: the host key algorithms to accept, likewise.
    :ivar order_host_key_algorithms: order ``host_key_algorithms`` per connection after the
        keys known_hosts holds for the host, with the host certificate algorithms in front
        when a CA is trusted for it, as OpenSSH does. None (default): as OpenSSH decides,
        yes unless the list was given outright (a plain list, not ``+...``/``-...``).
    :ivar require_strict_kex: refuse a server that does not offer strict key exchange
        (the Terrapin fix, CVE-2023-48795; always used when the server offers it).
    :ivar rekey_bytes: exchange new keys once this many bytes have gone one way since the
        last exchange, each direction counted on its own as OpenSSH's RekeyLimit (default
        1 GiB; 0: only the cipher's own limit); see also :meth:`~rtunnel.ReverseTunnel.rekey`.
    :ivar rekey_seconds: exchange new keys after this many seconds (None: never).
    :ivar compression: offer zlib compression (``zlib@openssh.com``, started after
        authentication, then ``zlib``); off by default, as in OpenSSH.
    :ivar preferred_dh_group_bits: the group size (1024-8192) to ask for in
        ``diffie-hellman-group-exchange-*`` (the reference's PreferredDHGroupBits);
        default None: as OpenSSH, 2048-8192 by the strength of the negotiated cipher.
    :ivar client_version: our SSH identification line (the reference's
        ClientSSHVersionString; default ``SSH-2.0-rtunnel_<version>``).
    :ivar server_version_pattern: patterns (``*``, ``?``; given as a list or one
        comma-separated string) the server's version line must match, else the logon fails
        with :class:`~rtunnel.errors.VersionError` (the reference's SSHVersionPattern;
        default ``*SSH-1.99-*,*SSH-2.0-*``). The line itself is
        :attr:`~rtunnel.ReverseTunnel.server_version`.
    :ivar kex_timeout: seconds a re-key may take before the connection is dropped (a
        server that starts one and goes silent; default 60; None: no limit). The first key
        exchange is bounded by ``connect_timeout``.
    """

    #: Fields decided from the form another field was given in: made again when it is.
    DERIVED: ClassVar[dict[str, str]] = {"host_key_algorithms": "order_host_key_algorithms"}

    ciphers: tuple[str, ...] = _algorithms.DEFAULT_CIPHERS
    macs: tuple[str, ...] = _algorithms.DEFAULT_MACS
    kex_algorithms: tuple[str, ...] = _algorithms.DEFAULT_KEX
    host_key_algorithms: tuple[str, ...] = _algorithms.DEFAULT_HOST_KEY_ALGORITHMS
    order_host_key_algorithms: bool | None = None
    require_strict_kex: bool = False
    rekey_bytes: int = _algorithms.DEFAULT_REKEY_BYTES
    rekey_seconds: float | None = None
    compression: bool = False
    preferred_dh_group_bits: int | None = None
    client_version: str | None = None
    server_version_pattern: tuple[str, ...] = _algorithms.parse_version_pattern(
        _algorithms.DEFAULT_VERSION_PATTERN
    )
    kex_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        if self.order_host_key_algorithms is None:
            given: object = self.host_key_algorithms
            # OpenSSH reorders HostKeyAlgorithms after known_hosts unless given outright:
            # its default list (None, or the field's default itself) or "+..."/"-...".
            _set(
                self,
                "order_host_key_algorithms",
                given is None
                or given is _algorithms.DEFAULT_HOST_KEY_ALGORITHMS
                or (isinstance(given, str) and given.strip()[:1] in "+-"),
            )
        for name, kind in (
            ("ciphers", "cipher"),
            ("macs", "mac"),
            ("kex_algorithms", "kex"),
            ("host_key_algorithms", "host key"),
        ):
            _set(self, name, tuple(_algorithms.resolve(kind, getattr(self, name))))
        if self.rekey_bytes < 0 or (self.rekey_seconds is not None and self.rekey_seconds <= 0):
            raise SpecError("rekey_bytes must be >= 0 and rekey_seconds > 0 (or None).")
        _algorithms.check_dh_group_bits(self.preferred_dh_group_bits)
        if self.client_version:
            _algorithms.check_client_version(self.client_version)
        else:
            _set(self, "client_version", None)
        _set(
            self,
            "server_version_pattern",
            _algorithms.parse_version_pattern(self.server_version_pattern),
        )
        if self.kex_timeout is not None and self.kex_timeout <= 0:
            raise SpecError("kex_timeout must be a positive number of seconds, or None.")


@dataclass(frozen=True)
class ReachOptions:
    """
    How the server is reached.

    :ivar connect_timeout: seconds for the TCP connect plus the SSH handshake (version
        banners and the first key exchange, host-key check included); past it the logon
        fails with :class:`~rtunnel.errors.TimedOutError` (OpenSSH's ``ConnectTimeout``,
        the reference's ConnectionTimeout). None: 30 s for the TCP connect, no limit
        after.
    :ivar tcp_options: socket options for the SSH connection
        (:class:`~rtunnel.client.transport._sockopts.TCPOptions`: TCP_NODELAY and TCP
        keep-alive, both on by default; the reference's TcpNoDelay, TCPKeepAlive,
        KeepAliveTime and KeepAliveInterval).
    :ivar local_host: the local address the SSH connection (or the connection to the
        proxy) is made from, on a machine with more than one (the reference's LocalHost;
        OpenSSH's ``BindAddress``, ``-b``). Default: the system's choice.
    :ivar local_port: the local port to bind it to (the reference's LocalPort; 0, the
        default: the system's choice). What was used is
        :attr:`~rtunnel.ReverseTunnel.local_address`.
    :ivar proxy: reach the SSH server through a proxy (the reference's firewall): a
        :class:`~rtunnel.Proxy` (SOCKS4, SOCKS4A, SOCKS5 or an HTTP CONNECT tunnel, with
        optional credentials; given as one or as a URL such as
        ``"socks5://user:pw@host:1080"``), or ``"auto"`` for the one ``ALL_PROXY`` /
        ``all_proxy`` names, minus the hosts ``NO_PROXY`` lists, read at every connect
        (the reference's FirewallAutoDetect). Default None: connect directly.
    :ivar proxy_exceptions: hosts reached directly even when ``proxy`` is set (the
        reference's ProxyExceptionsList; given as a list, or one string separated by
        ``;``). Names match the host and its subdomains (``*`` wildcards allowed),
        addresses and CIDR blocks match addresses.
    :ivar proxy_command: run this command and speak SSH over its standard input and output
        instead of connecting (OpenSSH's ``ProxyCommand``, e.g. ``"ssh -W %h:%p
        jumphost"``): run as ``$SHELL -c "exec COMMAND"`` with ``%h``, ``%p``, ``%r``,
        ``%n`` and ``%%`` expanded, its standard error left as this program's, sent SIGHUP
        when the connection ends. Not with ``proxy`` or ``local_host``/``local_port``.
    :ivar proxy_jump: reach the server through jump hosts, natively (OpenSSH's
        ``ProxyJump``, ``-J``), first hop first: given as a :class:`~rtunnel.JumpHost`, a
        string ``"[user@]host[:port][,...]"`` or a list of either. rtunnel logs on to each
        with this tunnel's credentials and host-key settings (unless the ``JumpHost``
        overrides them, see :meth:`TunnelOptions.for_jump_host`) and opens a
        ``direct-tcpip`` channel to the next; no ``ssh`` binary is run. Not with
        ``proxy``, ``proxy_command`` or ``local_host``/``local_port``.
    """

    connect_timeout: float | None = 30.0
    tcp_options: TCPOptions = field(default_factory=TCPOptions)
    local_host: str | None = None
    local_port: int = 0
    proxy: Proxy | Literal["auto"] | None = None
    proxy_exceptions: tuple[str, ...] = ()
    proxy_command: str | None = None
    proxy_jump: tuple[JumpHost, ...] = ()

    def __post_init__(self) -> None:
        _positive_or_none("connect_timeout", self.connect_timeout)
        if self.tcp_options is None:
            _set(self, "tcp_options", TCPOptions())
        if not 0 <= self.local_port <= 65535:
            raise SpecError(f"Bad local_port {self.local_port}: give 0-65535 (0: any).")
        _set(self, "local_host", self.local_host or None)
        proxy: object = self.proxy
        if isinstance(proxy, str) and proxy != "auto":
            # Proxies, ProxyCommand and jump hosts are imported only when given: a plain
            # start needs none of them (issue #17).
            from rtunnel.client.reach.proxy import Proxy

            _set(self, "proxy", Proxy.from_url(proxy))
        exceptions: object = self.proxy_exceptions
        if isinstance(exceptions, str):
            exceptions = exceptions.split(";")
        _set(
            self,
            "proxy_exceptions",
            tuple(e.strip() for e in cast("Sequence[str]", exceptions) if e.strip()),
        )
        command = self.proxy_command
        if command is not None and command.strip().lower() in ("", "none"):
            command = None
            _set(self, "proxy_command", None)
        if command is not None:
            if self.proxy is not None:
                raise SpecError("Give proxy or proxy_command, not both.")
            if self.local_host is not None or self.local_port:
                raise SpecError(
                    "local_host and local_port do not apply with proxy_command (the command "
                    "makes the connection)."
                )
            # Unknown tokens are refused now rather than at the first connect; which
            # values fill them in does not matter for that.
            from rtunnel.client.reach._proxycommand import expand_proxy_command

            expand_proxy_command(command, host="h", port=22, user="u")
        if self.proxy_jump:
            from rtunnel.client.reach.jump import jump_hosts

            _set(self, "proxy_jump", jump_hosts(cast("JumpHosts | None", self.proxy_jump)))
        else:
            _set(self, "proxy_jump", ())
        if self.proxy_jump:
            if self.proxy is not None or self.proxy_command is not None:
                raise SpecError("Give proxy_jump, proxy or proxy_command, not several.")
            if self.local_host is not None or self.local_port:
                raise SpecError(
                    "local_host and local_port do not apply with proxy_jump (the jump host "
                    "makes the connection)."
                )


@dataclass(frozen=True)
class ChannelOptions:
    """
    The forwarded channels.

    :ivar window_size: the SSH channel window we grant (how much the server may send
        before we have passed it on); it can grow on a live tunnel
        (:meth:`~rtunnel.ReverseTunnel.set_window_size`).
    :ivar max_packet: the largest channel data packet we accept (at most 255 KiB).
    :ivar max_channels: at most this many channels at once; more are refused with
        "resource shortage".
    :ivar channel_idle_timeout: close a channel (and its local connection) that carried no
        data either way for this many seconds (0: never; the reference's
        DefaultChannelIdleTimeout).
    :ivar absolute_timeout: with ``channel_idle_timeout``, close each channel that long
        after it opened, busy or not (the reference's AbsoluteTimeout).
    :ivar target_connect_timeout: seconds to wait for a local target to accept (and for an
        accept hook to answer) before the channel is refused.
    :ivar forwarding_local_host: the local address connections to targets are made from
        (the reference's ForwardingLocalHost). Default: the system's choice.
    :ivar max_transfer_rate: at most this many bytes of channel data per second sent to the
        server, all channels together (the reference's MaxTransferRate; 0, the default: no
        limit). Targets are paused while their data waits, so nothing piles up.
    :ivar permit_remote_open: where a dynamic forward's SOCKS clients may connect
        (OpenSSH's PermitRemoteOpen), as ``(host, port)`` pairs (``"*"`` for any host or
        port); given as ``host:port`` entries, a list or one string separated by spaces;
        ``"none"`` (held as ``()``): nowhere; None or ``"any"`` (the default): anywhere
        this machine can reach.
    """

    window_size: int = DEFAULT_WINDOW_SIZE
    max_packet: int = DEFAULT_MAX_PACKET
    max_channels: int = 1024
    channel_idle_timeout: float = 0.0
    absolute_timeout: bool = False
    target_connect_timeout: float = 10.0
    forwarding_local_host: str | None = None
    max_transfer_rate: int = 0
    permit_remote_open: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if not 1024 <= self.max_packet <= self.window_size <= 0xFFFFFFFF:
            raise SpecError("Need 1024 <= max_packet <= window_size < 2^32.")
        if self.max_packet > MAX_MAX_PACKET:
            # The whole SSH packet (header, padding, MAC) must fit the packet layer's
            # limit, or the server's full-size packets would be refused as too long.
            raise SpecError(f"max_packet {self.max_packet} is too large: at most {MAX_MAX_PACKET}.")
        if self.channel_idle_timeout < 0:
            raise SpecError(_NOT_NEGATIVE)
        _set(self, "forwarding_local_host", self.forwarding_local_host or None)
        if self.max_transfer_rate < 0:
            raise SpecError(
                f"Bad max_transfer_rate {self.max_transfer_rate}: give bytes per second "
                "(0: no limit)."
            )
        rules: object = self.permit_remote_open
        if not (isinstance(rules, tuple) and all(isinstance(r, tuple) for r in rules)):
            _set(
                self,
                "permit_remote_open",
                parse_permit_remote_open(cast("str | Sequence[str] | None", rules)),
            )


@dataclass(frozen=True)
class StayingUpOptions:
    """
    Staying connected, and leaving.

    :ivar reconnect: when to reconnect (default :class:`~rtunnel.ReconnectPolicy`
        ``"on-loss"``: an established connection that breaks is re-made with backoff and
        every forward requested again; host-key and authentication refusals are never
        retried). The backoff starts from its first step again for the next outage once a
        reconnect has proved to work: every forward re-established and then any message
        from the server on that connection (a forwarded connection, channel data, a
        keepalive reply), or the connection lasted ``reset_after`` seconds. A server that
        drops each connection right after the logon or the forward requests keeps the
        waits growing up to ``max_delay``.
    :ivar keepalive_interval: after this many seconds with nothing received, send an SSH
        keepalive (0: never; OpenSSH's ServerAliveInterval).
    :ivar keepalive_count_max: drop the connection (:class:`~rtunnel.errors.KeepaliveError`,
        then reconnect) when this many keepalives go unanswered (ServerAliveCountMax).
    :ivar exit_on_forward_failure: a forward the server refuses again after a reconnect
        ends the tunnel instead of being retried on its own (OpenSSH's
        ExitOnForwardFailure).
    :ivar wait_for_channel_close: :meth:`~rtunnel.ReverseTunnel.logoff` waits (at most
        ``logoff_timeout``) for the server to answer each channel's CLOSE before it
        disconnects (default; the reference's WaitForChannelClose).
    :ivar wait_for_server_disconnect: :meth:`~rtunnel.ReverseTunnel.logoff` sends
        DISCONNECT and waits (at most ``logoff_timeout``) for the server to close the TCP
        connection, which leaves the TIME_WAIT state on the server (the reference's
        WaitForServerDisconnect). Default: close it ourselves.
    :ivar logoff_timeout: the bound on each of logoff's waits.
    """

    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    keepalive_interval: float = 30.0
    keepalive_count_max: int = 5
    exit_on_forward_failure: bool = False
    wait_for_channel_close: bool = True
    wait_for_server_disconnect: bool = False
    logoff_timeout: float = LOGOFF_TIMEOUT

    def __post_init__(self) -> None:
        if self.reconnect is None:
            _set(self, "reconnect", ReconnectPolicy())
        if self.keepalive_interval < 0 or self.keepalive_count_max < 0:
            raise SpecError("Keepalive interval and count must not be negative.")
        if self.logoff_timeout < 0:
            raise SpecError(_NOT_NEGATIVE)


class TunnelSettings(TypedDict, total=False):
    """
    Every setting of :class:`TunnelOptions` by its flat name, with the forms
    :meth:`TunnelOptions.create` accepts (the group that holds it keeps the resolved
    value). A name belongs to exactly one group; ``tests/pure/test_options.py`` keeps this list
    and the groups' fields the same.
    """

    # AuthOptions
    user: str | None
    auth: Sequence[Credential]
    preferred_authentications: Sequence[str] | None
    try_all_auth_methods: bool
    password_prompt: str | None
    number_of_password_prompts: int
    password_change: PasswordCallback | None
    pubkey_accepted_algorithms: str | Sequence[str] | None
    auth_timeout: float | None
    # HostKeyOptions
    known_hosts: str | Path | Sequence[str | Path] | None
    host_key_policy: HostKeyPolicy
    global_known_hosts: str | Path | Sequence[str | Path] | None
    accepted_host_keys: Sequence[Key | str | bytes]
    accepted_fingerprints: Sequence[str]
    accepted_ca_keys: Sequence[Key | str | bytes]
    host_key_callback: HostKeyCallback | None
    fingerprint_hash: str
    hash_known_hosts: bool
    # AlgorithmOptions
    ciphers: str | Sequence[str] | None
    macs: str | Sequence[str] | None
    kex_algorithms: str | Sequence[str] | None
    host_key_algorithms: str | Sequence[str] | None
    order_host_key_algorithms: bool | None
    require_strict_kex: bool
    rekey_bytes: int
    rekey_seconds: float | None
    compression: bool
    preferred_dh_group_bits: int | None
    client_version: str | None
    server_version_pattern: str | Sequence[str]
    kex_timeout: float | None
    # ReachOptions
    connect_timeout: float | None
    tcp_options: TCPOptions | None
    local_host: str | None
    local_port: int
    proxy: Proxy | str | None
    proxy_exceptions: str | Sequence[str]
    proxy_command: str | None
    proxy_jump: JumpHosts | None
    # ChannelOptions
    window_size: int
    max_packet: int
    max_channels: int
    channel_idle_timeout: float
    absolute_timeout: bool
    target_connect_timeout: float
    forwarding_local_host: str | None
    max_transfer_rate: int
    permit_remote_open: str | Sequence[str] | None
    # StayingUpOptions
    reconnect: ReconnectPolicy | None
    keepalive_interval: float
    keepalive_count_max: int
    exit_on_forward_failure: bool
    wait_for_channel_close: bool
    wait_for_server_disconnect: bool
    logoff_timeout: float
    # TunnelOptions
    log_level: int


@dataclass(frozen=True)
class TunnelOptions:
    """
    Everything a :class:`~rtunnel.ReverseTunnel` is told, in groups.

    :ivar authentication: :class:`AuthOptions`.
    :ivar host_keys: :class:`HostKeyOptions`.
    :ivar algorithms: :class:`AlgorithmOptions`.
    :ivar reach: :class:`ReachOptions`.
    :ivar channels: :class:`ChannelOptions`.
    :ivar staying_up: :class:`StayingUpOptions`.
    :ivar log_level: what :meth:`~rtunnel.TunnelObserver.log` receives and rtunnel logs
        through ``twisted.logger``: 0 nothing, 1 (default) connection events, 2 also
        channel and request events, 3 also debug detail (the reference's LogLevel).
    """

    authentication: AuthOptions = field(default_factory=AuthOptions)
    host_keys: HostKeyOptions = field(default_factory=HostKeyOptions)
    algorithms: AlgorithmOptions = field(default_factory=AlgorithmOptions)
    reach: ReachOptions = field(default_factory=ReachOptions)
    channels: ChannelOptions = field(default_factory=ChannelOptions)
    staying_up: StayingUpOptions = field(default_factory=StayingUpOptions)
    log_level: int = 1

    def __post_init__(self) -> None:
        if self.log_level not in (0, 1, 2, 3):
            raise SpecError(f"Bad log_level {self.log_level!r}: give 0, 1, 2 or 3.")

    @classmethod
    def create(
        cls, *, base: TunnelOptions | None = None, **settings: Unpack[TunnelSettings]
    ) -> TunnelOptions:
        """
        Options from settings by their flat names (see :class:`TunnelSettings`), each in
        any form it accepts; the rest from ``base``, or the defaults::

            TunnelOptions.create(user="tunnel", auth=[key], known_hosts="~/.ssh/known_hosts")
            TunnelOptions.create(base=options, keepalive_interval=10)

        Each group given a setting is made again from its fields, so every value is
        checked in one place, its group's.

        :raises SpecError: for a value its group refuses.
        :raises TypeError: for a name that is no setting.
        """
        given: dict[str, Any] = dict(settings)
        owners = _setting_groups()
        unknown = sorted(set(given) - set(owners))
        if unknown:
            raise TypeError(f"TunnelOptions.create() got unknown settings: {', '.join(unknown)}")
        start = base if base is not None else cls()
        changes: dict[str, Any] = {}
        for group, group_type in _group_types().items():
            mine = {name: value for name, value in given.items() if owners[name] == group}
            if mine:
                derived: dict[str, str] = getattr(group_type, "DERIVED", {})
                for name, follower in derived.items():
                    if name in mine:
                        mine.setdefault(follower, None)
                changes[group] = replace(getattr(start, group), **mine)
        own = {name: value for name, value in given.items() if owners[name] == ""}
        return replace(start, **changes, **own)

    def settings(self) -> TunnelSettings:
        """Every setting by its flat name, as the groups hold it (what :meth:`create`
        takes back)."""
        values: dict[str, Any] = {"log_level": self.log_level}
        for group in _group_types():
            values.update(
                {
                    f.name: getattr(getattr(self, group), f.name)
                    for f in fields(getattr(self, group))
                }
            )
        return cast(TunnelSettings, values)

    def for_jump_host(self, hop: JumpHost, before: Sequence[JumpHost] = ()) -> TunnelOptions:
        """
        The options to log on to the jump host ``hop`` with (reached through the hops
        ``before`` it): this tunnel's credentials, known_hosts, algorithms and timeouts
        (``ssh -J`` uses the same), overridden by what ``hop`` gives; not what belongs to
        this server (its accepted keys) or to its channels, and no reconnecting: the jump
        connection lives as long as the channel through it, and this tunnel reconnects.
        """
        authentication = replace(self.authentication, user=hop.user)
        if hop.auth is not None:
            authentication = replace(authentication, auth=tuple(hop.auth))
        host_keys = replace(
            self.host_keys, accepted_host_keys=(), accepted_fingerprints=(), accepted_ca_keys=()
        )
        if hop.known_hosts is not None:
            host_keys = replace(host_keys, known_hosts=known_hosts_paths(hop.known_hosts))
        if hop.host_key_policy is not None:
            host_keys = replace(host_keys, host_key_policy=hop.host_key_policy)
        return replace(
            self,
            authentication=authentication,
            host_keys=host_keys,
            reach=replace(self.reach, proxy_jump=tuple(before)),
            channels=replace(
                self.channels, channel_idle_timeout=0.0, absolute_timeout=False, max_transfer_rate=0
            ),
            staying_up=replace(self.staying_up, reconnect=ReconnectPolicy.off()),
        )


@cache
def _group_types() -> dict[str, type[Any]]:
    """TunnelOptions' group fields and their dataclasses, in order."""
    hints = get_type_hints(TunnelOptions)
    return {f.name: hints[f.name] for f in fields(TunnelOptions) if f.name != "log_level"}


@cache
def _setting_groups() -> dict[str, str]:
    """Each setting's flat name -> the TunnelOptions field holding it ("" for its own)."""
    owners = {"log_level": ""}
    for group, group_type in _group_types().items():
        for f in fields(group_type):
            assert f.name not in owners, f"setting {f.name} is in two groups"
            owners[f.name] = group
    return owners
