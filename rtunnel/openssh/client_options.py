"""
The settings of one ``rtunnel`` invocation, filled from its flags and ``-o`` options
through the keyword table, with OpenSSH's rules for which value wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtunnel.openssh.forward_policy import PolicyFor, attach_policies
from rtunnel.openssh.forwards import RemoteForwardSpec
from rtunnel.openssh.keywords import LOG_LEVELS, Keyword
from rtunnel.openssh.options import parse_keyword

if TYPE_CHECKING:
    from rtunnel._core.syntax import Destination
    from rtunnel.options import TunnelSettings

__all__ = ["ClientOptions"]


@dataclass
class ClientOptions:
    """
    The settings of one ``rtunnel`` invocation, filled from flags and ``-o`` options by
    the rows of :data:`~rtunnel.openssh.keywords.KEYWORDS`, with OpenSSH's rule that the
    first value given for an option wins (readconf.c: "the first obtained value will be
    used"), except identity files, certificates and forwards, which accumulate.

    What the library takes as it is goes to :attr:`tunnel`; what the command combines or
    uses itself has an attribute of its own (None: not given):

    :ivar tunnel: the :class:`~rtunnel.TunnelSettings` the options gave (ConnectTimeout as
        ``connect_timeout``, Ciphers as ``ciphers``, ...).
    :ivar host_name: ``-o HostName`` (an ``ssh_config`` file's is resolved with the
        files, :func:`rtunnel.openssh.config_files.read_ssh_config`).
    :ivar user: ``-l``, ``-o User`` or the destination's user.
    :ivar port: ``-p``, ``-o Port`` or an ``ssh://`` URI's port.
    :ivar identity_files: ``-i`` and ``-o IdentityFile``, in order.
    :ivar certificate_files: ``-o CertificateFile``, in order.
    :ivar remote_forwards: ``-R`` and ``-o RemoteForward``, in order, without repeats.
    :ivar forward_policies: ``-o ForwardPolicy`` (issue #15), in order; joined to their
        forwards by :meth:`attach_policies`.
    :ivar batch_mode: ``-o BatchMode`` (rtunnel never prompts about host keys either way).
    :ivar log_level: one of :data:`~rtunnel.openssh.keywords.LOG_LEVELS` (None: ``INFO``).
    :ivar preferred_authentications: ``-o PreferredAuthentications``.
    :ivar password_authentication: ``-o PasswordAuthentication`` (None: yes); likewise
        ``kbd_interactive_authentication`` and ``pubkey_authentication``.
    :ivar gssapi_authentication: ``-K`` or ``-o GSSAPIAuthentication`` (None: no);
        likewise ``gssapi_delegate_credentials``.
    :ivar identity_agent: ``-o IdentityAgent`` (a path, ``none`` or ``SSH_AUTH_SOCK``).
    :ivar identities_only: ``-o IdentitiesOnly`` (None: no).
    :ivar auto_reconnect: ``-o AutoReconnect`` (rtunnel's, the reference's name):
        ``"off"`` (``no``), ``"on-loss"`` (``yes``) or ``"always"`` (None: ``"on-loss"``,
        a tunnel is kept open; ``no`` ends with the connection, as ssh).
    :ivar max_retry_count: ``-o MaxRetryCount`` (0: no limit).
    :ivar retry_interval: ``-o RetryInterval`` seconds before the first retry.
    :ivar log_format: ``-o LogFormat``: ``"text"`` or ``"json"`` (None: text).
    :ivar control_socket: ``-o ControlSocket``: ``"auto"``, ``"none"`` or a path.
    :ivar http_listen: ``-o HttpListen``: ``"ADDRESS:PORT"`` or ``"none"``.
    :ivar group_servers: ``-o GroupServer``: more servers for the same forwards, in order
        (issue #15).
    :ivar group_mode: ``-o GroupMode``: ``"failover"`` or ``"all"`` (None: failover).
    :ivar failback_after: ``-o FailbackAfter`` seconds (None: no failback).
    """

    tunnel: TunnelSettings = field(default_factory=lambda: _no_settings())
    host_name: str | None = None
    user: str | None = None
    port: int | None = None
    identity_files: list[str] = field(default_factory=list)
    certificate_files: list[str] = field(default_factory=list)
    remote_forwards: list[RemoteForwardSpec] = field(default_factory=list)
    forward_policies: list[PolicyFor] = field(default_factory=list)
    batch_mode: bool | None = None
    log_level: str | None = None
    preferred_authentications: tuple[str, ...] | None = None
    password_authentication: bool | None = None
    kbd_interactive_authentication: bool | None = None
    pubkey_authentication: bool | None = None
    gssapi_authentication: bool | None = None
    gssapi_delegate_credentials: bool | None = None
    identity_agent: str | None = None
    identities_only: bool | None = None
    auto_reconnect: str | None = None
    max_retry_count: int | None = None
    retry_interval: int | None = None
    log_format: str | None = None
    control_socket: str | None = None
    http_listen: str | None = None
    group_servers: list[Destination] = field(default_factory=list)
    group_mode: str | None = None
    failback_after: int | None = None
    #: The keywords (their slots) whose settings are in ``tunnel``: later values lose.
    given: set[str] = field(default_factory=set, repr=False)
    jump_given: bool = field(default=False, repr=False)
    _debug_flag: int = field(default=0, repr=False)

    def apply_option(self, text: str) -> None:
        """
        Apply one ``-o`` option. Blank options, ``#`` comments and deprecated options
        are ignored, as OpenSSH ignores them.

        :raises SpecError: see :func:`~rtunnel.openssh.options.parse_option`.
        """
        parsed = parse_keyword(text)
        if parsed is not None:
            self.apply(*parsed)

    def apply(self, row: Keyword[Any], value: Any) -> None:
        """Apply a value ``row`` read (:func:`~rtunnel.openssh.options.parse_keyword`)."""
        if row.command:
            current = getattr(self, row.command)
            if row.collect == "append" or (row.collect == "unique" and value not in current):
                current.append(value)
            elif row.collect == "first" and current is None:
                setattr(self, row.command, value)
        elif row.competes_as not in self.given:
            self.set_outright(row, value)

    def set_outright(self, row: Keyword[Any], value: Any) -> None:
        """
        Set ``row``'s settings whatever was given before (ssh.c does so for ``-b``, ``-c``,
        ``-m``, ``-C``, ``-K``: the flag wins over ``-o``), and keep later ``-o`` values
        from changing them.
        """
        if row.command:
            setattr(self, row.command, value)
            return
        self.tunnel.update(row.settings(value))
        self.given.add(row.competes_as)

    def add_remote_forward(self, forward: RemoteForwardSpec) -> None:
        """Add a forward; an identical one already present is not added twice
        (readconf.c, ``add_remote_forward``)."""
        if forward not in self.remote_forwards:
            self.remote_forwards.append(forward)

    def attach_policies(self) -> None:
        """
        Give each ``-o ForwardPolicy`` to the remote forward it names.

        :raises SpecError: for one that names no forward, several, or one that has one.
        """
        if self.forward_policies:
            self.remote_forwards = attach_policies(self.remote_forwards, self.forward_policies)
            self.forward_policies = []

    @property
    def exit_on_forward_failure(self) -> bool:
        """``-o ExitOnForwardFailure``: a refused forward ends the command."""
        return bool(self.tunnel.get("exit_on_forward_failure", False))

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

    def set_default_user(self, user: str | None) -> None:
        """Use ``user`` unless a user was already given (ssh.c: ``-l`` wins over
        ``user@host``)."""
        if self.user is None and user is not None:
            self.user = user

    def set_default_port(self, port: int | None) -> None:
        """Use ``port`` unless a port was already given."""
        if self.port is None and port is not None:
            self.port = port


def _no_settings() -> TunnelSettings:
    return {}
