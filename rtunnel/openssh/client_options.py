"""
The settings of one ``rtunnel`` invocation, filled from its flags and ``-o`` options
with OpenSSH's rules for which value wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from rtunnel.openssh.forwards import RemoteForwardSpec
from rtunnel.openssh.options import LOG_LEVELS, OptionValue, parse_option

if TYPE_CHECKING:
    from rtunnel.client.hostkeys.verify import HostKeyPolicy

__all__ = ["ClientOptions"]


_FIRST_WINS: Final = {
    "Compression": "compression",
    "Ciphers": "ciphers",
    "MACs": "macs",
    "KexAlgorithms": "kex_algorithms",
    "HostKeyAlgorithms": "host_key_algorithms",
    "RekeyLimit": "rekey_limit",
    "GlobalKnownHostsFile": "global_known_hosts_files",
    "FingerprintHash": "fingerprint_hash",
    "HashKnownHosts": "hash_known_hosts",
    "PreferredAuthentications": "preferred_authentications",
    "NumberOfPasswordPrompts": "number_of_password_prompts",
    "PasswordAuthentication": "password_authentication",
    "KbdInteractiveAuthentication": "kbd_interactive_authentication",
    "PubkeyAuthentication": "pubkey_authentication",
    "GSSAPIAuthentication": "gssapi_authentication",
    "GSSAPIDelegateCredentials": "gssapi_delegate_credentials",
    "IdentityAgent": "identity_agent",
    "IdentitiesOnly": "identities_only",
    "PubkeyAcceptedAlgorithms": "pubkey_accepted_algorithms",
    "AutoReconnect": "auto_reconnect",
    "MaxRetryCount": "max_retry_count",
    "RetryInterval": "retry_interval",
    "ChannelTimeout": "channel_timeout",
    "TCPKeepAlive": "tcp_keepalive",
    "BindAddress": "bind_address",
    "ForwardingLocalHost": "forwarding_local_host",
    "Proxy": "proxy",
    "ProxyExceptionsList": "proxy_exceptions",
    "MaxTransferRate": "max_transfer_rate",
    "PermitRemoteOpen": "permit_remote_open",
}


@dataclass
class ClientOptions:
    """
    The settings of one ``rtunnel`` invocation, filled from flags and ``-o`` options with
    OpenSSH's rule that the first value given for an option wins (readconf.c: "the first
    obtained value will be used"), except identity files and forwards, which accumulate.

    :ivar user: ``-l``, ``-o User`` or the destination's user.
    :ivar port: ``-p``, ``-o Port`` or an ``ssh://`` URI's port.
    :ivar identity_files: ``-i`` and ``-o IdentityFile``, in order.
    :ivar known_hosts_files: ``-o UserKnownHostsFile`` (empty for ``none``), or None.
    :ivar strict_host_key_checking: ``yes``, ``no``, ``ask`` or ``accept-new``, or None.
    :ivar exit_on_forward_failure: ``-o ExitOnForwardFailure``, or None.
    :ivar batch_mode: ``-o BatchMode``, or None (rtunnel never prompts either way).
    :ivar connect_timeout: seconds from ``-o ConnectTimeout`` (None: ``none``).
    :ivar connect_timeout_given: whether ``ConnectTimeout`` was given at all.
    :ivar server_alive_interval: ``-o ServerAliveInterval`` seconds (None: not given, 0).
    :ivar server_alive_count_max: ``-o ServerAliveCountMax`` (None: not given, 3).
    :ivar log_level: one of :data:`~rtunnel.openssh.options.LOG_LEVELS`, or None for the
        default (``INFO``).
    :ivar remote_forwards: ``-R`` and ``-o RemoteForward``, in order, without repeats.
    :ivar global_known_hosts_files: ``-o GlobalKnownHostsFile`` (empty for ``none``), or
        None for OpenSSH's default.
    :ivar fingerprint_hash: ``-o FingerprintHash`` (``sha256`` or ``md5``), or None.
    :ivar hash_known_hosts: ``-o HashKnownHosts``, or None.
    :ivar preferred_authentications: ``-o PreferredAuthentications``, or None.
    :ivar number_of_password_prompts: ``-o NumberOfPasswordPrompts``, or None (3).
    :ivar password_authentication: ``-o PasswordAuthentication``, or None (yes).
    :ivar kbd_interactive_authentication: ``-o KbdInteractiveAuthentication``, or None.
    :ivar pubkey_authentication: ``-o PubkeyAuthentication``, or None (yes).
    :ivar gssapi_authentication: ``-K`` or ``-o GSSAPIAuthentication``, or None (no).
    :ivar gssapi_delegate_credentials: ``-K`` or ``-o GSSAPIDelegateCredentials``, or
        None (no).
    :ivar certificate_files: ``-o CertificateFile``, in order.
    :ivar identity_agent: ``-o IdentityAgent`` (a path, ``none`` or ``SSH_AUTH_SOCK``).
    :ivar identities_only: ``-o IdentitiesOnly``, or None (no).
    :ivar pubkey_accepted_algorithms: ``-o PubkeyAcceptedAlgorithms`` (OpenSSH list
        syntax, checked), or None (automatic).
    :ivar ciphers: ``-c`` or ``-o Ciphers`` (OpenSSH list syntax, checked), or None; likewise
        ``macs`` (``-m``, ``-o MACs``), ``kex_algorithms`` and ``host_key_algorithms``.
    :ivar rekey_limit: ``-o RekeyLimit`` as
        :func:`~rtunnel.openssh.options.parse_rekey_limit` returns it, or None.
    :ivar compression: ``-C`` or ``-o Compression``, or None (off).
    :ivar auto_reconnect: ``-o AutoReconnect`` (rtunnel's, the reference's name):
        ``"off"`` (``no``), ``"on-loss"`` (``yes``) or ``"always"``, or None (not given:
        ``"on-loss"``, a tunnel is kept open; ``no`` ends with the connection, as ssh).
    :ivar max_retry_count: ``-o MaxRetryCount`` (0: no limit), or None.
    :ivar retry_interval: ``-o RetryInterval`` seconds before the first retry, or None.
    :ivar channel_timeout: ``-o ChannelTimeout`` seconds for forwarded-tcpip channels
        (0: none), or None.
    :ivar tcp_keepalive: ``-o TCPKeepAlive``, or None (yes).
    :ivar bind_address: ``-b`` or ``-o BindAddress``: the local address to connect from.
    :ivar forwarding_local_host: ``-o ForwardingLocalHost`` (rtunnel's, the reference's
        name): the local address connections to targets are made from.
    :ivar proxy: ``-o Proxy`` (rtunnel's): a proxy URL, ``auto`` or ``none``.
    :ivar proxy_exceptions: ``-o ProxyExceptionsList`` (the reference's name): hosts
        reached without the proxy, separated by ``;``.
    :ivar max_transfer_rate: ``-o MaxTransferRate`` (the reference's name): bytes per
        second of channel data to the server, or None (no limit).
    :ivar permit_remote_open: ``-o PermitRemoteOpen``: where dynamic forwards may connect.
    :ivar proxy_command: ``-o ProxyCommand``, or ``none``.
    :ivar proxy_jump: ``-J`` / ``-o ProxyJump``: ``[user@]host[:port][,...]``
        (:func:`parse_proxy_jump`), or ``none``. At most one of ``proxy_command`` and
        ``proxy_jump`` is set.
    """

    user: str | None = None
    port: int | None = None
    identity_files: list[str] = field(default_factory=list)
    known_hosts_files: tuple[str, ...] | None = None
    strict_host_key_checking: str | None = None
    exit_on_forward_failure: bool | None = None
    batch_mode: bool | None = None
    connect_timeout: int | None = None
    connect_timeout_given: bool = False
    log_level: str | None = None
    server_alive_interval: int | None = None
    server_alive_count_max: int | None = None
    remote_forwards: list[RemoteForwardSpec] = field(default_factory=list)
    global_known_hosts_files: tuple[str, ...] | None = None
    fingerprint_hash: str | None = None
    hash_known_hosts: bool | None = None
    preferred_authentications: tuple[str, ...] | None = None
    number_of_password_prompts: int | None = None
    password_authentication: bool | None = None
    kbd_interactive_authentication: bool | None = None
    pubkey_authentication: bool | None = None
    gssapi_authentication: bool | None = None
    gssapi_delegate_credentials: bool | None = None
    certificate_files: list[str] = field(default_factory=list)
    identity_agent: str | None = None
    identities_only: bool | None = None
    pubkey_accepted_algorithms: str | None = None
    ciphers: str | None = None
    macs: str | None = None
    kex_algorithms: str | None = None
    host_key_algorithms: str | None = None
    rekey_limit: tuple[str, ...] | None = None
    compression: bool | None = None
    auto_reconnect: str | None = None
    max_retry_count: int | None = None
    retry_interval: int | None = None
    channel_timeout: int | None = None
    tcp_keepalive: bool | None = None
    bind_address: str | None = None
    forwarding_local_host: str | None = None
    proxy: str | None = None
    proxy_exceptions: str | None = None
    proxy_command: str | None = None
    proxy_jump: str | None = None
    max_transfer_rate: int | None = None
    permit_remote_open: str | None = None
    jump_given: bool = field(default=False, repr=False)
    _debug_flag: int = field(default=0, repr=False)

    def apply_option(self, text: str) -> None:
        """
        Apply one ``-o`` option. Blank options, ``#`` comments and deprecated options
        are ignored, as OpenSSH ignores them.

        :raises SpecError: see :func:`~rtunnel.openssh.options.parse_option`.
        """
        parsed = parse_option(text)
        if parsed is not None:
            self.apply(*parsed)

    def apply(self, name: str, value: OptionValue) -> None:
        """Apply an option parsed by :func:`~rtunnel.openssh.options.parse_option`."""
        if name == "RemoteForward":
            assert isinstance(value, RemoteForwardSpec)
            self.add_remote_forward(value)
        elif name == "IdentityFile":
            assert isinstance(value, str)
            self.identity_files.append(value)
        elif name == "CertificateFile":
            assert isinstance(value, str)
            self.certificate_files.append(value)
        elif name == "User":
            assert isinstance(value, str)
            self.user = self.user if self.user is not None else value
        elif name == "Port":
            assert isinstance(value, int)
            self.port = self.port if self.port is not None else value
        elif name == "UserKnownHostsFile":
            assert isinstance(value, tuple)
            if self.known_hosts_files is None:
                self.known_hosts_files = value
        elif name == "StrictHostKeyChecking":
            assert isinstance(value, str)
            if self.strict_host_key_checking is None:
                self.strict_host_key_checking = value
        elif name == "ExitOnForwardFailure":
            assert isinstance(value, bool)
            if self.exit_on_forward_failure is None:
                self.exit_on_forward_failure = value
        elif name == "BatchMode":
            assert isinstance(value, bool)
            if self.batch_mode is None:
                self.batch_mode = value
        elif name == "ConnectTimeout":
            assert value is None or isinstance(value, int)
            if not self.connect_timeout_given:
                self.connect_timeout = value
                self.connect_timeout_given = True
        elif name == "ServerAliveInterval":
            assert isinstance(value, int)
            if self.server_alive_interval is None:
                self.server_alive_interval = value
        elif name == "ServerAliveCountMax":
            assert isinstance(value, int)
            if self.server_alive_count_max is None:
                self.server_alive_count_max = value
        elif name == "LogLevel":
            assert isinstance(value, str)
            if self.log_level is None:
                self.log_level = value
        elif name in ("ProxyCommand", "ProxyJump"):
            # ssh_config(5): ProxyJump and ProxyCommand compete, the first one given wins.
            assert isinstance(value, str)
            if self.proxy_command is None and self.proxy_jump is None:
                if name == "ProxyJump":
                    self.proxy_jump = value
                else:
                    self.proxy_command = value
        elif name in _FIRST_WINS:
            # The first value wins (readconf.c), as for the options above.
            attribute = _FIRST_WINS[name]
            if getattr(self, attribute) is None:
                setattr(self, attribute, value)
        else:  # pragma: no cover
            raise AssertionError(f"unknown option {name}")

    def add_remote_forward(self, forward: RemoteForwardSpec) -> None:
        """Add a forward; an identical one already present is not added twice
        (readconf.c, ``add_remote_forward``)."""
        if forward not in self.remote_forwards:
            self.remote_forwards.append(forward)

    def more_verbose(self) -> None:
        """``-v``: ``DEBUG1`` the first time, one level more each time up to ``DEBUG3``
        (ssh.c, case 'v')."""
        if self._debug_flag == 0:
            self._debug_flag = 1
            self.log_level = "DEBUG1"
        elif self.effective_log_level != "DEBUG3":
            self._debug_flag += 1
            self.log_level = LOG_LEVELS[LOG_LEVELS.index(self.effective_log_level) + 1]

    def quiet(self) -> None:
        """``-q``: quiet mode (ssh.c, case 'q')."""
        self.log_level = "QUIET"

    @property
    def effective_log_level(self) -> str:
        """The log level in force: the one given, else ``INFO`` (readconf.c default)."""
        return self.log_level if self.log_level is not None else "INFO"

    def logs(self, level: str) -> bool:
        """Whether a message at ``level`` is shown (log.c: ``level <= log_level``)."""
        return LOG_LEVELS.index(level) <= LOG_LEVELS.index(self.effective_log_level)

    @property
    def host_key_policy(self) -> HostKeyPolicy:
        """
        :class:`~rtunnel.ReverseTunnel`'s host key policy for ``StrictHostKeyChecking``.

        ``yes`` and ``ask`` are ``strict`` (rtunnel never prompts, which is what ``ask``
        amounts to under ``BatchMode``), ``accept-new`` is ``accept-new``, and ``no``
        and ``off`` are ``accept-new`` as well: OpenSSH with ``no`` records an unknown
        key but, when a known key has *changed*, disables every port forward
        ("Port forwarding is disabled to avoid man-in-the-middle attacks.",
        sshconnect.c ``check_host_key``). A tunnel with its forwards disabled is
        useless, so refusing the changed key outright is the faithful equivalent.
        The unset default is OpenSSH's ``ask``, so ``strict``.
        """
        setting = self.strict_host_key_checking
        if setting in ("no", "accept-new"):
            return "accept-new"
        return "strict"

    def set_default_user(self, user: str | None) -> None:
        """Use ``user`` unless a user was already given (ssh.c: ``-l`` wins over
        ``user@host``)."""
        if self.user is None and user is not None:
            self.user = user

    def set_default_port(self, port: int | None) -> None:
        """Use ``port`` unless a port was already given."""
        if self.port is None and port is not None:
            self.port = port
