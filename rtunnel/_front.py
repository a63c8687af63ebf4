"""
What the ``rtunnel`` command, the ``twistd rtunnel`` service and the config-file runner
share: a :class:`~rtunnel.ReverseTunnel` built from OpenSSH-style options, the forwards
requested, reconnects reported and errors worded as ``ssh`` words them.

Apart from :mod:`rtunnel.service` so that the command does not import what only twistd
needs (``twisted.application``, ``twisted.python.usage``, the plugin system): about 5 ms
of a start (issue #17).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core.policy import ReconnectPolicy
from rtunnel._model import ForwardState, ReconnectAttempt, TunnelObserver
from rtunnel.client.auth.credentials import SUPPORTED_METHODS, Credential
from rtunnel.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    ForwardingError,
    HostKeyError,
    RTunnelError,
)
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forwards import RemoteForwardSpec
from rtunnel.openssh.keywords import (
    BATCH_MODE,
    BATCH_MODE_SERVER_ALIVE_INTERVAL,
    KEYWORDS,
    SERVER_ALIVE_INTERVAL,
)
from rtunnel.openssh.messages import (
    HOST_KEY_VERIFICATION_FAILED,
    format_allocated,
    format_forward_failure,
    format_permission_denied,
)
from rtunnel.options import TunnelOptions

if TYPE_CHECKING:
    from rtunnel._core.policy import ReconnectMode
    from rtunnel._model import Forward
    from rtunnel.group import GroupForward, TunnelGroup
    from rtunnel.options import TunnelSettings
    from rtunnel.tunnel import ReverseTunnel

__all__ = [
    "DEFAULT_IDENTITY_FILES",
    "ReconnectReporter",
    "Report",
    "build_group",
    "build_tunnel",
    "describe_error",
    "establish_forwards",
    "group_forward",
    "group_members",
    "local_user",
    "reconnect_policy",
    "tunnel_options",
]

_log = Logger()

_T = TypeVar("_T")

#: The private keys tried when none is given, in OpenSSH's order (readconf.c,
#: ``fill_default_options``), leaving out the kinds rtunnel cannot use (security keys,
#: XMSS, DSA).
DEFAULT_IDENTITY_FILES: tuple[str, ...] = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ed25519",
)

#: How a message is reported: ``report(level, text)`` with ``level`` one of
#: :data:`rtunnel.openssh.options.LOG_LEVELS`.
Report = Callable[[str, str], None]


def local_user() -> str:
    """The local user name, OpenSSH's default remote user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "root")


def _identity_files(options: ClientOptions, report: Report) -> list[Path]:
    """
    The key files to offer: the ones given that exist, or OpenSSH's defaults that exist
    when none was given. Missing files are skipped (with a debug message), as ssh skips
    them, instead of failing the log-on; a file ssh would not load (readable by others,
    a directory, a FIFO) is skipped with ssh's lines at the default level.
    """
    from rtunnel.client.auth.credentials import key_file_problem

    given = options.identity_files
    # os.path.expanduser leaves an unknown "~user" as it is, where Path.expanduser raises.
    candidates = [Path(os.path.expanduser(p)) for p in (given or DEFAULT_IDENTITY_FILES)]
    found = []
    for path in candidates:
        try:
            path.stat()
        except (FileNotFoundError, NotADirectoryError, ValueError):
            # ValueError: a name no file can have (a NUL, a lone surrogate).
            report("DEBUG1", f"no such identity: {path}")
            continue
        except OSError:
            pass  # key_file_problem says what
        problem = key_file_problem(path)
        if problem is not None:
            for line in problem.lines:
                report("ERROR", line)
            continue
        found.append(path)
    return found


def _preferred_methods(options: ClientOptions) -> tuple[str, ...] | None:
    """
    PreferredAuthentications less the methods turned off (PubkeyAuthentication,
    PasswordAuthentication, KbdInteractiveAuthentication) and the ones rtunnel does not
    speak (ssh skips those too); None when that is the library's default.
    """
    methods = list(options.preferred_authentications or SUPPORTED_METHODS)
    # gssapi-with-mic needs the GSSAPI credential _credentials adds for -o
    # GSSAPIAuthentication=yes (ssh's default is no).
    off = {
        "publickey": options.pubkey_authentication,
        "password": options.password_authentication,
        "keyboard-interactive": options.kbd_interactive_authentication,
    }
    methods = [m for m in methods if m in SUPPORTED_METHODS and off.get(m) is not False]
    if methods == list(SUPPORTED_METHODS):
        return None
    # An empty list leaves only "none" (ssh: "No more authentication methods to try.").
    return tuple(methods or ["none"])


def _credentials(options: ClientOptions, report: Report) -> list[Credential]:
    """
    What ssh would log on with for these options: a GSSAPI ticket (``-K``), the identity
    files and certificates, the agent, and asking for passwords and keyboard-interactive
    answers, each unless turned off.
    """
    from rtunnel.client.auth.askpass import keyboard_interactive_source, never_ask, password_source
    from rtunnel.client.auth.credentials import GSSAPI, CertificateFile, PrivateKeyFile, SSHAgent

    asker = password_source(batch_mode=bool(options.batch_mode))
    auth: list[Credential] = []
    if options.gssapi_authentication:
        # First, as in ssh's default PreferredAuthentications.
        auth.append(GSSAPI(delegate=bool(options.gssapi_delegate_credentials)))
    if options.pubkey_authentication is not False:
        # A passphrase is asked when its key is tried, as ssh asks (an encrypted key is
        # skipped when nothing can ask: BatchMode, no terminal, no askpass).
        why = (
            f"{BATCH_MODE.name}=yes"
            if options.batch_mode
            else "no terminal, and no SSH_ASKPASS to run"
        )
        passphrase = asker or never_ask(why)
        auth += [PrivateKeyFile(path, passphrase) for path in _identity_files(options, report)]
        auth += [CertificateFile(path) for path in options.certificate_files]
        # The agent (SSH_AUTH_SOCK or IdentityAgent); with IdentitiesOnly=yes only for the
        # keys and certificates above.
        agent = options.identity_agent
        if agent != "none":
            auth.append(
                SSHAgent(
                    None if agent in (None, "SSH_AUTH_SOCK") else agent,
                    identities_only=bool(options.identities_only),
                )
            )
    password_or_kbd = options.password_authentication is not False or (
        options.kbd_interactive_authentication is not False
    )
    if password_or_kbd and asker is not None:
        auth.append(asker)
    if options.kbd_interactive_authentication is not False:
        # Keyboard-interactive prompts that are not the password's, asked the same way.
        responder = keyboard_interactive_source(batch_mode=bool(options.batch_mode))
        if responder is not None:
            auth.append(responder)
    return auth


def tunnel_options(options: ClientOptions, *, report: Report) -> TunnelOptions:
    """
    The :class:`~rtunnel.TunnelOptions` ``ssh`` would use for these options: the settings
    the keywords gave, ssh's own defaults where they differ from the library's (no
    keepalives unless asked), and what the command puts together itself (the user, the
    credentials, the authentication methods, the reconnect policy).

    :param options: the invocation's options (user already defaulted from the
        destination).
    :param report: where debug messages go.
    :raises SpecError: if a setting is refused.
    """
    settings: TunnelSettings = {}
    for row in KEYWORDS:
        if row.default is not None and row.competes_as not in options.given:
            settings.update(row.settings(row.default))
    if options.batch_mode and SERVER_ALIVE_INTERVAL.competes_as not in options.given:
        settings.update(SERVER_ALIVE_INTERVAL.settings(BATCH_MODE_SERVER_ALIVE_INTERVAL))
    settings.update(options.tunnel)
    settings["user"] = options.user if options.user is not None else local_user()
    settings["auth"] = _credentials(options, report)
    methods = _preferred_methods(options)
    if methods is not None:
        settings["preferred_authentications"] = methods
    settings["reconnect"] = reconnect_policy(options)
    return TunnelOptions.create(**settings)


def build_tunnel(
    reactor: IReactorTCP,
    host: str,
    options: ClientOptions,
    *,
    report: Report,
) -> ReverseTunnel:
    """
    A :class:`~rtunnel.ReverseTunnel` configured the way ``ssh`` would be by these options
    (:func:`tunnel_options`).

    :param reactor: the reactor.
    :param host: the SSH server.
    :param options: the invocation's options (user and port already defaulted from the
        destination).
    :param report: where debug messages go.
    :raises SpecError: if the tunnel refuses the settings.
    """
    from rtunnel.tunnel import ReverseTunnel

    port = options.port if options.port is not None else 22
    return ReverseTunnel(reactor, host, port, options=tunnel_options(options, report=report))


def reconnect_policy(options: ClientOptions) -> ReconnectPolicy:
    """
    The reconnect policy ``-o AutoReconnect``, ``-o MaxRetryCount`` and
    ``-o RetryInterval`` ask for: reconnect when an established connection breaks unless
    AutoReconnect is ``no`` (``always`` also retries the first logon); exponential
    backoff from RetryInterval (default 1 s) up to a minute, or to RetryInterval when
    that is longer.
    """
    # A tunnel is kept open for months: by default a lost connection is made again, as
    # the library does; AutoReconnect=no ends with it, as ssh does.
    mode = options.auto_reconnect or "on-loss"
    if mode == "off":
        return ReconnectPolicy.off()
    initial = float(options.retry_interval or 1)
    return ReconnectPolicy(
        mode=cast("ReconnectMode", mode),
        initial_delay=initial,
        max_delay=max(60.0, initial),
        max_retries=options.max_retry_count or 0,
    )


class ReconnectReporter(TunnelObserver):
    """
    Tells the operator what the reconnect loop does, in the command's voice: each
    attempt (why, when, which; unless ``attempts`` is false, for a log that already has
    the tunnel's own line), a reconnect, and the ``Allocated port`` line again for a
    port-0 forward the server gave a new port after a reconnect.
    """

    def __init__(self, host: str, report: Report, *, attempts: bool = True) -> None:
        self._host = host
        self._report = report
        self._attempts = attempts
        self._connections = 0
        self._active: set[int] = set()

    @override
    def connected(self) -> None:
        self._connections += 1
        if self._connections > 1:
            self._report("INFO", f"Reconnected to {self._host}.")

    @override
    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        if self._attempts:
            self._report("INFO", attempt.describe())

    @override
    def forward_state_changed(self, forward: Forward) -> None:
        if forward.state is not ForwardState.ACTIVE:
            return
        if id(forward) not in self._active:
            self._active.add(id(forward))  # the first time: establish_forwards reports it
            return
        if forward.requested_port == 0 and forward.dynamic:
            self._report("INFO", format_allocated(forward.port, "socks", 0))
        elif forward.requested_port == 0 and forward.target_path is not None:
            self._report("INFO", format_allocated(forward.port, "", 0, forward.target_path))
        elif (
            forward.requested_port == 0
            and forward.host is not None
            and forward.host_port is not None
        ):
            self._report("INFO", format_allocated(forward.port, forward.host, forward.host_port))
        else:
            self._report("VERBOSE", f"Remote forward of listen port {forward.port} re-established.")


async def establish_forwards(
    tunnel: ReverseTunnel,
    forwards: Sequence[RemoteForwardSpec],
    *,
    exit_on_failure: bool,
    report: Report,
) -> list[Forward]:
    """
    Request every forward at once, as ``ssh`` does (ssh.c, ``ssh_init_forwarding``; the
    server answers in order, RFC 4254 §4), and report each answer as it comes, in ssh's
    words (``ssh_confirm_remote_forward``): the allocated port of a port-0 forward at
    ``INFO``, and a refusal as a ``Warning:`` at ``INFO``, or, with ``exit_on_failure``,
    as an error. A forward whose answer a lost connection cut off is asked for again by
    the tunnel once it has reconnected (:meth:`ReverseTunnel.request_forwarding`), and
    reported then; one held up that way does not hold up the others.

    :return: the forwards the server agreed to, in the order given.
    :raises ForwardingError: ``Error: remote port forwarding failed for listen port N``
        when a forward is refused and ``exit_on_failure`` is set.
    :raises ConnectionLostError: when the tunnel stops meanwhile (reconnect off or given
        up); another :class:`~rtunnel.errors.RTunnelError` may say why it stopped.
    """

    failed: list[ForwardingError] = []

    def granted(forward: Forward, spec: RemoteForwardSpec) -> Forward:
        if failed:
            # After the fatal refusal ssh has exited; we are logging off.
            return forward
        target = spec.target_path or f"{spec.host}:{spec.host_port}"
        report(
            "DEBUG1",
            f"remote forward success for: listen {spec.bind_address}:{spec.port}, connect {target}",
        )
        if spec.port == 0 and spec.listen_path is None:
            report(
                "INFO", format_allocated(forward.port, spec.host, spec.host_port, spec.target_path)
            )
        if spec.dynamic and tunnel.options.channels.permit_remote_open is None:
            # OpenSSH's default, kept; but an open proxy should not go unsaid (issue 13).
            report(
                "INFO",
                f"Warning: the dynamic forward on listen port {forward.port} is an open "
                "proxy: whoever reaches it connects anywhere this machine can (limit it "
                "with -o PermitRemoteOpen).",
            )
        return forward

    def refused(failure: Failure, spec: RemoteForwardSpec) -> None:
        # The server said no; anything else (the tunnel stopping) is passed on.
        failure.trap(ForwardingError)
        if failed:
            return
        if exit_on_failure:
            failed.append(
                ForwardingError(
                    format_forward_failure(spec.port, fatal=True, listen_path=spec.listen_path)
                )
            )
            raise failed[0]
        report("INFO", format_forward_failure(spec.port, fatal=False, listen_path=spec.listen_path))

    answers: list[Deferred[Forward | None]] = []
    for spec in forwards:
        target = spec.target_path or f"{spec.host}:{spec.host_port}"
        listen = spec.listen_path or f"{spec.bind_address or '*'}:{spec.port}"
        report(
            "DEBUG1",
            f"Remote connections from {listen} forwarded to local address {target}",
        )
        answers.append(
            _request_forward(tunnel, spec).addCallback(granted, spec).addErrback(refused, spec)
        )
    try:
        results = await gatherResults(answers, consumeErrors=True)
    except FirstError as error:
        error.subFailure.raiseException()
    return [forward for forward in results if forward is not None]


def _request_forward(tunnel: ReverseTunnel, spec: RemoteForwardSpec) -> Deferred[Forward]:
    # The policy (issue #15) only when there is one: a request without is as before.
    extra: dict[str, Any] = {} if spec.policy is None else {"policy": spec.policy}
    if spec.listen_path is not None:
        return tunnel.request_socket_forwarding(
            spec.listen_path,
            spec.host or None,
            spec.host_port or None,
            target_path=spec.target_path,
            **extra,
        )
    if spec.dynamic:
        return tunnel.request_forwarding(spec.bind_address, spec.port, dynamic=True, **extra)
    if spec.target_path is not None:
        return tunnel.request_forwarding(
            spec.bind_address, spec.port, target_path=spec.target_path, **extra
        )
    return tunnel.request_forwarding(
        spec.bind_address, spec.port, spec.host, spec.host_port, **extra
    )


def describe_error(error: RTunnelError, *, user: str, host: str) -> str:
    """
    The message ``ssh`` would print for ``error``, where it has one: ``user@host:
    Permission denied (publickey).`` (sshconnect2.c), ``... Host key verification
    failed.`` (sshconnect2.c), ``Connection to HOST closed by remote host.``
    (clientloop.c); otherwise ``rtunnel: <message>``. May be two lines for a host key
    error whose message lacks OpenSSH's last line.
    """
    message = error.message
    if isinstance(error, AuthenticationError) and error.methods:
        return format_permission_denied(user, host, error.methods)
    if isinstance(error, HostKeyError):
        if HOST_KEY_VERIFICATION_FAILED in message:
            return message
        return f"{message}\n{HOST_KEY_VERIFICATION_FAILED}"
    if isinstance(error, ConnectionLostError) and message.startswith("Connection to "):
        return message
    if isinstance(error, ForwardingError) and message.startswith("Error: "):
        return message
    if isinstance(error, ConnectError):
        # The tunnel words it as ssh.c does, program name included; use ours.
        message = message.removeprefix("ssh: ")
    return f"rtunnel: {message}"


# --------------------------------------------------------------------------------------
# Tunnel groups (issue #15): the command, the configuration file and twistd build them here


def group_forward(spec: RemoteForwardSpec) -> GroupForward:
    """The group's forward for a ``-R`` spec (the arguments ``establish_forwards`` uses)."""
    from rtunnel.group import GroupForward

    if spec.listen_path is not None:
        return GroupForward(
            spec.listen_path,
            0,
            spec.host or None,
            spec.host_port or None,
            target_path=spec.target_path,
            listen_path=spec.listen_path,
            policy=spec.policy,
        )
    if spec.dynamic:
        return GroupForward(spec.bind_address, spec.port, dynamic=True, policy=spec.policy)
    if spec.target_path is not None:
        return GroupForward(
            spec.bind_address, spec.port, target_path=spec.target_path, policy=spec.policy
        )
    return GroupForward(spec.bind_address, spec.port, spec.host, spec.host_port, policy=spec.policy)


def group_members(
    host: str, options: ClientOptions
) -> list[tuple[str | None, str, ClientOptions, str | None]]:
    """
    The servers of ``-o GroupServer`` where no ssh_config is read (twistd): the
    destination with ``options``, then each GroupServer with a copy of them, its own user
    and port (when the value gives them) winning.
    """
    import copy

    members: list[tuple[str | None, str, ClientOptions, str | None]] = [(None, host, options, None)]
    for server in options.group_servers:
        other = copy.deepcopy(options)
        if server.user is not None:
            other.user = server.user
        if server.port is not None:
            other.port = server.port
        members.append((None, server.host, other, None))
    return members


def build_group(
    reactor: IReactorTCP,
    servers: Sequence[tuple[str | None, str, ClientOptions, str | None]],
    forwards: Sequence[RemoteForwardSpec],
    *,
    mode: str | None,
    failback_after: float | None,
    report: Report,
    retry_first_logon: bool = False,
) -> TunnelGroup:
    """
    A :class:`~rtunnel.group.TunnelGroup` with each server configured the way ``ssh``
    would be by its options (:func:`tunnel_options`), and reporters on it: which server
    serves, each server's loss and return, and each allocated port (``Allocated port N
    for remote forward to HOST:PORT on SERVER``).

    :param servers: ``(name, host, options, password)`` for each server, in order (name
        None: ``HOST:PORT``).
    :param retry_first_logon: ``AutoReconnect=always``: retry when no server can be
        logged on at first; otherwise the group stops then, as the command's one tunnel.
    :raises SpecError: if a server's settings are refused.
    """
    from rtunnel.client.auth.credentials import Password
    from rtunnel.group import GroupReporter, GroupServer, TunnelGroup

    members = []
    for name, host, options, password in servers:
        built = tunnel_options(options, report=report)
        if password is not None:
            built = TunnelOptions.create(
                base=built, auth=(*built.authentication.auth, Password(password))
            )
        port = options.port if options.port is not None else 22
        members.append(GroupServer(host, port, built, name))
    group = TunnelGroup(
        reactor,
        members,
        [group_forward(spec) for spec in forwards],
        mode=mode or "failover",
        failback_after=failback_after,
        retry_first_logon=retry_first_logon,
    )
    group.add_observer(GroupReporter(report))
    for member, tunnel in zip(members, group.tunnels, strict=True):
        tunnel.add_observer(_AllocatedOn(member.label, report))
    return group


class _AllocatedOn(TunnelObserver):
    """ssh's ``Allocated port`` line for a group's server, naming the server."""

    def __init__(self, name: str, report: Report) -> None:
        self._name = name
        self._report = report

    @override
    def forward_state_changed(self, forward: Forward) -> None:
        if (
            forward.state is ForwardState.ACTIVE
            and forward.requested_port == 0
            and forward.listen_path is None
            and forward.host is not None
            and forward.host_port is not None
        ):
            line = format_allocated(forward.port, forward.host, forward.host_port)
            self._report("INFO", f"{line} on {self._name}")
