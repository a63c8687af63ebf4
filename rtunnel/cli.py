"""
The ``rtunnel`` command: ``ssh -N -R`` on Twisted, with ``ssh``'s syntax, messages and
exit statuses, so it can replace ``ssh`` in scripts that keep a reverse tunnel open.

::

    rtunnel -N -o ExitOnForwardFailure=yes -R 0:localhost:8080 tunnel@gateway.example.com
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TextIO, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorThreads, IReactorTime
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel._core.syntax import parse_destination
from rtunnel._core.text import printable, printable_lines
from rtunnel._front import (
    ReconnectReporter,
    build_group,
    build_tunnel,
    describe_error,
    establish_forwards,
    local_user,
)
from rtunnel._model import ChannelInfo, TunnelObserver
from rtunnel.client.transport._algorithms import resolve
from rtunnel.errors import ConnectError, RTunnelError, SpecError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.config_files import (
    SYSTEM_FILE,
    ConfigRead,
    as_option,
    known_to_ssh,
    read_ssh_config,
    remote_forward_option,
    ssh_G_lines,
)
from rtunnel.openssh.forwards import RemoteForwardSpec, parse_remote_forward
from rtunnel.openssh.keywords import (
    BIND_ADDRESS,
    CIPHERS,
    COMPRESSION,
    GSSAPI_AUTHENTICATION,
    GSSAPI_DELEGATE_CREDENTIALS,
    HOST_NAME,
    IDENTITY_FILE,
    MACS,
    PORT,
    PROXY_JUMP,
    STRICT_HOST_KEY_CHECKING,
    USER,
    help_lines,
)
from rtunnel.openssh.options import parse_keyword
from rtunnel.openssh.values import check_host_name, check_user_name, parse_port

if TYPE_CHECKING:
    from rtunnel.group import GroupServerStatus
    from rtunnel.operations.logs import JsonLinesObserver
    from rtunnel.operations.observe import Observability
    from rtunnel.tunnel import ReverseTunnel

__all__ = ["HELP", "USAGE", "CommandLineExit", "Invocation", "main", "parse_command_line"]

_log = Logger()

#: ssh's usage synopsis (ssh.c, ``usage``), cut down to what rtunnel takes.
USAGE = """\
usage: rtunnel [-CfGKNnqTVv] [-b bind_address] [-c cipher_spec] [-F configfile]
               [-i identity_file] [-J destination] [-l login_name] [-m mac_spec]
               [-o option] [-p port] -R [bind_address:]port[:host:hostport] ... destination
"""

HELP = (
    USAGE
    + """
Keep SSH reverse tunnels open, like "ssh -N -R". Connections to a port the SSH server
listens on for us are forwarded to host:hostport from this machine.

  -R [bind_address:]port:host:hostport
                  Ask the server to listen on port (0: the server picks one, printed as
                  "Allocated port N for remote forward to host:hostport") and forward
                  each connection to host:hostport. Without bind_address the server
                  listens on loopback only; "*" means all interfaces. IPv6 addresses
                  go in square brackets. Repeatable. Without host:hostport, a
                  dynamic forward: each connection is a SOCKS4/4A/5 client, connected
                  from this machine where it asks. Without -o PermitRemoteOpen that is
                  anywhere this machine can reach (an open proxy, as with ssh; rtunnel
                  says so when it starts): give PermitRemoteOpen=host:port ... to limit it.
  -i identity_file
                  Private key for public key authentication. Repeatable. Default:
                  ~/.ssh/id_rsa, ~/.ssh/id_ecdsa and ~/.ssh/id_ed25519, those that exist.
                  As with ssh, a key file group or others may access is ignored, with
                  ssh's "UNPROTECTED PRIVATE KEY FILE!" warning.
  -l login_name   User to log in as (default: the local user).
  -b bind_address Connect from this local address (a machine with several), as
                  -o BindAddress.
  -J destination  Connect through these jump hosts, [user@]host[:port][,...], with the
                  same keys and known_hosts (as -o ProxyJump; no ssh binary needed).
  -c cipher_spec  Ciphers to offer, comma-separated, as -o Ciphers (a leading "+"
                  appends to the default, "-" removes, "^" puts first).
  -m mac_spec     MACs to offer, likewise (-o MACs).
  -C              Compress (zlib@openssh.com, then zlib), as -o Compression=yes.
  -K              GSSAPI (Kerberos) authentication with credential delegation, as
                  -o GSSAPIAuthentication=yes -o GSSAPIDelegateCredentials=yes.
  -p port         Port to connect to on the server (default: 22).
  -F configfile   Read this ssh_config file instead of ~/.ssh/config and
                  /etc/ssh/ssh_config (which are read by default, as by ssh; "none":
                  no file). The keywords below are read from the files; others ssh
                  knows are ignored (-v says so). The command line wins over the files.
  -G              Print the options the files and the command line give the
                  destination, as "ssh -G" does, and exit.
  -f              Go to the background once every forward is active (as ssh -f -N):
                  exit 0 then, or 255 with the error if they fail first.
  -o option       An ssh_config option, "Key=Value" or "Key Value". Understood, by
                  topic:
"""
    + "\n".join(help_lines(indent=18, width=88))
    + """
  -v              Verbose; repeat for more (up to -vvv).
  -q              Quiet: no warnings, no "Allocated port" lines, no error messages
                  (the exit status still tells).
  -N, -n, -T      Accepted for ssh compatibility; rtunnel never runs a command,
                  reads stdin or allocates a terminal.
  -V              Print the version and exit.
  -h, --help      Print this help and exit.

rtunnel --config FILE [--check] [-o option] runs the tunnels of a TOML configuration file
instead (several servers; SIGHUP reloads it); --check only validates it; -o takes only
ControlSocket, HttpListen and LogFormat there, over the file's [process] table
(docs/operations.md).

destination is [user@]host or ssh://[user@]host[:port]. rtunnel never asks about
host keys: they are checked against ~/.ssh/known_hosts (or UserKnownHostsFile) as with
StrictHostKeyChecking=yes unless you set StrictHostKeyChecking=accept-new (or no).
Passwords are asked as ssh asks them: from SSH_ASKPASS (see SSH_ASKPASS_REQUIRE) or
the terminal, never with BatchMode=yes.

A lost connection is made again (unless AutoReconnect=no), so rtunnel runs until it is
stopped. Exit status, as ssh -N: 0 when stopped by SIGTERM; 255 on SIGINT or SIGHUP,
when the first connection cannot be made (unless AutoReconnect=always), when the
connection is lost with AutoReconnect=no or reconnecting gives up (MaxRetryCount, or a
refusal such as a changed host key), when a forward is refused with
ExitOnForwardFailure=yes, and for a usage error. On SIGTERM, SIGINT and SIGHUP the
forwards are cancelled and the connection is closed (at most a few seconds).
"""
)

#: ssh's exit status for every failure (ssh.c and clientloop.c: ``cleanup_exit(255)``).
FAILURE = 255

#: Seconds to wait for a clean log-off after a signal or an error.
LOGOFF_TIMEOUT = 3.0

# Option letters: those taking an argument, and flags.
_WITH_ARGUMENT = frozenset("bciFJlmopR")
_FLAGS = frozenset("CfGhKNnqTVv")


class CommandLineExit(Exception):
    """
    The command line asks to stop before connecting: help, version, or a mistake.

    :ivar status: the exit status.
    :ivar text: what to print (ending in a newline).
    :ivar to_stdout: print on stdout (help) rather than stderr.
    """

    def __init__(self, status: int, text: str, *, to_stdout: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.text = text if text.endswith("\n") else text + "\n"
        self.to_stdout = to_stdout


@dataclass
class Invocation:
    """
    A parsed command line.

    :ivar options: the settings, defaults from the destination applied.
    :ivar host: the SSH server (the destination's host; after :func:`read_config`, the
        ``HostName`` the files give it).
    :ivar warnings: lines to print before connecting (ssh's identity file warnings).
    :ivar destination: the destination as given.
    :ivar config_file: ``-F``: the file to read instead of ``~/.ssh/config`` and
        ``/etc/ssh/ssh_config``, or ``none``; None: those two.
    :ivar command_line: the flags and ``-o`` options as ``-o`` lines, in ssh's order of
        precedence, for the files' ``Match`` lines and ``rtunnel -G``.
    :ivar print_config: ``-G``: print the resolved options and exit.
    :ivar fork: ``-f``: go to the background once every forward is active.
    :ivar notices: ``(level, line)`` to print once logging is set up (notes on ``-R``
        forms, the files read and the lines ignored, at ``-v``).
    :ivar config: what :func:`read_config` read.
    :ivar destination_index: where the destination is in the arguments.
    :ivar group: ``-o GroupServer``: each further server's invocation, the same arguments
        with that server as the destination (issue #15).
    """

    options: ClientOptions
    host: str
    warnings: list[str] = field(default_factory=list)
    destination: str = ""
    config_file: str | None = None
    command_line: list[str] = field(default_factory=list)
    print_config: bool = False
    fork: bool = False
    notices: list[tuple[str, str]] = field(default_factory=list)
    config: ConfigRead | None = None
    destination_index: int = 0
    group: list[Invocation] = field(default_factory=list)


def _version() -> str:
    import twisted
    from rtunnel import __version__

    # ssh -V prints "OpenSSH_9.6p1, OpenSSL 3.0.13 ..." on stderr (ssh.c, case 'V').
    return f"rtunnel {__version__}, Twisted {twisted.__version__}"


def parse_command_line(argv: Sequence[str]) -> Invocation:
    """
    Parse ``rtunnel``'s arguments the way ``ssh`` parses its own (ssh.c, ``main``):
    getopt-style clustered flags (``-vvN``, ``-p2222``), options also after the
    destination, ``--`` to end options, and the first value of an option winning.

    :raises CommandLineExit: for ``--help`` and ``-V`` (status 0) and for every mistake
        (status 255, one line; the usage synopsis when the destination is missing).
    """
    options = ClientOptions()
    warnings: list[str] = []
    notices: list[tuple[str, str]] = []
    destination: str | None = None
    # The flags ssh.c sets outright (over -o) go first, so they win in the files too.
    outright: list[str] = []
    in_order: list[str] = []
    config_file: str | None = None
    print_config = fork = False
    args = list(argv)
    index = 0
    options_done = False
    destination_index = 0

    def fail_with(message: str) -> NoReturn:
        # One line, whatever was typed (a port of "\n" quoted back, say).
        raise CommandLineExit(FAILURE, printable(message, None))

    while index < len(args):
        arg = args[index]
        index += 1
        if options_done or not arg.startswith("-") or arg == "-":
            if destination is None:
                destination = arg
                destination_index = index - 1
                continue
            fail_with(
                f"rtunnel: unexpected argument '{arg}': rtunnel runs no remote command "
                "(it always works as ssh -N)"
            )
        if arg == "--":
            options_done = True
            continue
        if arg == "--help":
            raise CommandLineExit(0, HELP, to_stdout=True)
        position = 1
        while position < len(arg):
            letter = arg[position]
            position += 1
            if letter in _FLAGS:
                if letter == "h":
                    raise CommandLineExit(0, HELP, to_stdout=True)
                if letter == "V":
                    raise CommandLineExit(0, _version())
                if letter == "G":
                    print_config = True
                elif letter == "f":
                    fork = True
                elif letter == "v":
                    options.more_verbose()
                elif letter == "q":
                    options.quiet()
                elif letter == "C":
                    # ssh.c, case 'C': sets it outright, over -o Compression.
                    options.set_outright(COMPRESSION, True)
                    outright.append(as_option(COMPRESSION, "yes"))
                elif letter == "K":
                    # ssh.c, case 'K': both set outright, over -o.
                    options.set_outright(GSSAPI_AUTHENTICATION, True)
                    options.set_outright(GSSAPI_DELEGATE_CREDENTIALS, True)
                    outright.append(as_option(GSSAPI_AUTHENTICATION, "yes"))
                    outright.append(as_option(GSSAPI_DELEGATE_CREDENTIALS, "yes"))
                # -N, -n and -T describe what rtunnel always does.
                continue
            if letter not in _WITH_ARGUMENT:
                # ssh's getopt (openbsd-compat/getopt_long.c) prints exactly this.
                fail_with(f"unknown option -- {letter}")
            if position < len(arg):
                value = arg[position:]
                position = len(arg)
            elif index < len(args):
                value = args[index]
                index += 1
            else:
                fail_with(f"option requires an argument -- {letter}")
            if letter == "F":
                config_file = value  # ssh.c, case 'F': the last one counts
                continue
            try:
                line = _apply_flag(options, letter, value, warnings, notices)
            except SpecError as error:
                fail_with(error.message)
            if line is not None:
                (outright if letter in _OUTRIGHT else in_order).append(line)

    if destination is None:
        raise CommandLineExit(FAILURE, USAGE)
    if print_config and fork:
        # ssh.c: -G prints and exits before it could fork; say so rather than surprise.
        fail_with("rtunnel: -G prints the configuration and exits: -f makes no sense with it")
    try:
        parsed = parse_destination(destination)
    except SpecError as error:
        fail_with(f"rtunnel: {error.message}")
    try:
        # ssh.c: checked before anything is looked up; its words, without a prefix.
        if parsed.user is not None:
            check_user_name(parsed.user)
        check_host_name(parsed.host)
    except SpecError as error:
        fail_with(error.message)
    options.set_default_user(parsed.user)
    options.set_default_port(parsed.port)
    return Invocation(
        options,
        parsed.host,
        warnings,
        destination=destination,
        config_file=config_file,
        command_line=outright + in_order,
        print_config=print_config,
        fork=fork,
        notices=notices,
        destination_index=destination_index,
    )


def group_invocations(arguments: Sequence[str], invocation: Invocation) -> list[Invocation]:
    """
    ``-o GroupServer`` (issue #15): for each further server, the same arguments with that
    server as the destination, its ssh_config files read for it; a user or port written
    in the GroupServer value wins over ``-l``, ``-p`` and the files.

    :raises CommandLineExit: for a mistake, as for the destination.
    """
    found = []
    for server in invocation.options.group_servers:
        args = list(arguments)
        args[invocation.destination_index] = server.host
        other = parse_command_line(args)
        read_config(other)
        # After the files, which resolve -p and -l over the rest: the value's own win.
        if server.user is not None:
            other.options.user = server.user
        if server.port is not None:
            other.options.port = server.port
        found.append(other)
    return found


def read_config(
    invocation: Invocation,
    *,
    home: str | None = None,
    system_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigRead:
    """
    Read the ``ssh_config`` files as ``ssh`` does (``-F``, else ``~/.ssh/config`` then
    ``/etc/ssh/ssh_config``) and apply them after the command line; the invocation's host
    becomes the ``HostName`` they give. Then check there is a forward to ask for (unless
    ``-G``).

    :param home: the home directory (default: ``$HOME``, where rtunnel also looks for
        keys and known_hosts; ssh takes the password database's).
    :param system_file: the system-wide file (default ``/etc/ssh/ssh_config``).
    :raises CommandLineExit: status 255 with ssh's message for a bad file or value.
    """
    options = invocation.options
    try:
        read = read_ssh_config(
            invocation.destination,
            options,
            command_line=invocation.command_line,
            config_file=invocation.config_file,
            home=os.path.expanduser("~") if home is None else home,
            environ=environ,
            system_file=SYSTEM_FILE if system_file is None else system_file,
        )
    except SpecError as error:
        raise CommandLineExit(FAILURE, printable_lines(error.message, None, None)) from None
    if not read.resolved.host.isprintable():
        # HostName from -o or a file: no lookup takes such a name, and it must not reach
        # a message raw (found by tests/loopback/test_hardening.py: "HostName=0\n0").
        raise CommandLineExit(
            FAILURE,
            f"rtunnel: HostName {printable(read.resolved.host, 80)!s}: contains characters "
            "that are not printable; give a host name or address",
        )
    invocation.host = read.resolved.host
    invocation.config = read
    invocation.notices.extend(("DEBUG1", note) for note in read.notes)
    if not options.remote_forwards and not invocation.print_config:
        read_files = ", ".join(read.resolved.files) or "none"
        raise CommandLineExit(
            FAILURE,
            "rtunnel: no remote forwards: give -R [bind_address:]port:host:hostport "
            f"(or -o RemoteForward, or RemoteForward in ssh_config; read: {read_files})",
        )
    try:
        options.attach_policies()
    except SpecError as error:
        raise CommandLineExit(FAILURE, f"rtunnel: {error.message}") from None
    return read


# The flags ssh.c sets outright, over -o and the files.
_OUTRIGHT = frozenset("bcm")


def _dynamic_note(text: str, forward: RemoteForwardSpec) -> str:
    # "-R 127.0.0.1:8000" reads as ssh reads it (a SOCKS listener on the server), which
    # is rarely what was meant: say so once, and how to write a forward to that address.
    shown = printable(text, 80)
    return (
        f"rtunnel: -R {shown} is a dynamic (SOCKS) forward on the server's "
        f"{forward.bind_address} port {forward.port}; to forward the server's port "
        f"{forward.port} to {forward.bind_address}:{forward.port} here, write "
        f"-R {forward.port}:{shown}."
    )


def _apply_flag(
    options: ClientOptions,
    letter: str,
    value: str,
    warnings: list[str],
    notices: list[tuple[str, str]],
) -> str | None:
    """Apply one flag; return it as an ``-o`` line for the files (None: nothing to say)."""
    if letter == "R":
        forward = parse_remote_forward(value)
        options.add_remote_forward(forward)
        if forward.dynamic and forward.bind_address and ":" in value:
            notices.append(("INFO", _dynamic_note(value, forward)))
        return remote_forward_option(value)
    if letter == "o":
        parsed = parse_keyword(value)
        if parsed is None:
            return None
        options.apply(*parsed)
        # rtunnel's own keywords (and newer ones) mean nothing to ssh's reader.
        return value if known_to_ssh(parsed[0].name) else None
    if letter == "p":
        # ssh.c: "if (options.port == -1)", so a later -p is not even checked.
        if options.port is None:
            options.port = parse_port(value)
            return as_option(PORT, value)
        return None
    if letter == "l":
        check_user_name(value)
        options.set_default_user(value)
        return as_option(USER, value)
    if letter == "b":
        # ssh.c, case 'b': set outright, over -o BindAddress.
        options.set_outright(BIND_ADDRESS, value)
        return as_option(BIND_ADDRESS, value)
    if letter == "J":
        # ssh.c, case 'J': one -J only; then as -o ProxyJump.
        # ssh.c, case 'J', checks what -J and -o gave so far, in its words.
        if options.jump_given or options.tunnel.get("proxy_jump") is not None:
            raise SpecError(
                "Only a single -J option is permitted (use commas to separate multiple jump hops)"
            )
        if "proxy_command" in options.tunnel:
            raise SpecError("Cannot specify -J with ProxyCommand")
        options.jump_given = True
        # Unquoted: ssh's reader takes ProxyJump's rest of the line as it is (readconf.c).
        line = f"{PROXY_JUMP.name}={value}"
        options.apply_option(line)
        return line
    if letter in "cm":
        # ssh.c, cases 'c' and 'm': checked at once, and the flag overrides -o.
        kind = "cipher" if letter == "c" else "mac"
        try:
            names = tuple(resolve(kind, value))
        except SpecError as error:
            fail = "Unknown cipher type" if letter == "c" else "Unknown mac type"
            raise SpecError(f"{fail} '{value}'. {error.message}") from None
        options.set_outright(CIPHERS if letter == "c" else MACS, names)
        return as_option(CIPHERS if letter == "c" else MACS, value)
    if letter == "i":
        path = Path(os.path.expanduser(value))
        try:
            path.stat()
        except (OSError, ValueError) as error:
            # ssh.c, case 'i': warn and carry on without the file. ValueError: a name no
            # file can have (a NUL, a lone surrogate).
            why = error.strerror if isinstance(error, OSError) else str(error)
            shown = printable(str(path), None)  # one line, as ssh's log (strnvis)
            warnings.append(f"Warning: Identity file {shown} not accessible: {why}.")
        else:
            options.identity_files.append(str(path))
            return as_option(IDENTITY_FILE, str(path))
    return None


# --------------------------------------------------------------------------------------
# Output


class _Console:
    """
    Prints ``ssh``'s own messages on stderr, filtered by the log level as log.c does:
    a message shows when its level is at or below the current one; debug messages are
    prefixed ``debug1:`` and so on, the others are printed bare.
    """

    def __init__(
        self, options: ClientOptions, stream: TextIO, json_lines: JsonLinesObserver | None = None
    ) -> None:
        self._options = options
        self._stream = stream
        self._json = json_lines

    def say(self, level: str, text: str) -> None:
        if not self._options.logs(level):
            return
        if self._json is not None:
            from rtunnel.operations.logs import SSH_LEVELS

            self._json.write(time.time(), SSH_LEVELS[level], None, text)
            return
        prefix = f"{level.lower()}: " if level.startswith("DEBUG") else ""
        for line in _terminal_safe(text).splitlines():
            self._stream.write(f"{prefix}{line}\n")
        self._stream.flush()


def _terminal_safe(text: str) -> str:
    # The last line of defence (RELIABILITY.md D17): the sources escape what the server or
    # a client sent, and nothing that reaches the terminal carries a control character
    # but the line breaks.
    return printable_lines(text, None, None)


# Twisted log events shown at each of ssh's levels: warnings and errors by default, info
# from -v, debug from -vv; nothing with -q.
_TWISTED_LEVELS = {
    "QUIET": None,
    "FATAL": LogLevel.critical,
    "ERROR": LogLevel.error,
    "INFO": LogLevel.warn,
    "VERBOSE": LogLevel.info,
    "DEBUG1": LogLevel.info,
    "DEBUG2": LogLevel.debug,
    "DEBUG3": LogLevel.debug,
}


@implementer(ILogObserver)
class _StderrLogObserver:
    """One line per log event; a traceback only at -vv and up, or for a crash."""

    def __init__(self, stream: TextIO, tracebacks: bool) -> None:
        self._stream = stream
        self._tracebacks = tracebacks

    def __call__(self, event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            if self._tracebacks or event.get("log_level") is LogLevel.critical:
                text = f"{text}\n{failure.getTraceback()}".rstrip("\n")
            else:
                text = f"{text}: {failure.getErrorMessage()}"
        level = event.get("log_level")
        prefix = "debug2: " if level is LogLevel.debug else ""
        self._stream.write(f"{prefix}{_terminal_safe(text)}\n")
        self._stream.flush()


@implementer(ILogFilterPredicate)
class _NotSaidByTheConsole:
    """Drops the tunnel's line for each reconnect attempt: ReconnectReporter prints the
    same text at ssh's INFO level, so -v would show it twice."""

    def __call__(self, event: LogEvent) -> object:
        return PredicateResult.no if "reconnect_attempt" in event else PredicateResult.maybe


def _start_logging(
    options: ClientOptions, stream: TextIO, json_lines: ILogObserver | None = None
) -> None:
    level = options.effective_log_level
    minimum = _TWISTED_LEVELS[level]
    observers: list[ILogObserver] = []
    if minimum is not None:
        printer = json_lines or _StderrLogObserver(stream, tracebacks=level in ("DEBUG2", "DEBUG3"))
        observers.append(
            FilteringLogObserver(
                printer,
                [_NotSaidByTheConsole(), LogLevelFilterPredicate(defaultLogLevel=minimum)],
            )
        )
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)


# --------------------------------------------------------------------------------------
# Running

_T = TypeVar("_T")


class _Once(Generic[_T]):
    """
    A value that is set once and can be waited for any number of times; each wait gets
    its own Deferred, so cancelling one leaves the others, and the value, alone.
    """

    def __init__(self) -> None:
        self.fired = False
        self._value: _T | None = None
        self._waiting: list[Deferred[_T]] = []

    @property
    def value(self) -> _T:
        assert self.fired
        return cast(_T, self._value)

    def fire(self, value: _T) -> None:
        if self.fired:
            return
        self.fired, self._value = True, value
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(value)

    def wait(self) -> Deferred[_T]:
        if self.fired:
            return succeed(self.value)
        d: Deferred[_T] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d


def _either(first: Deferred[Any], second: Deferred[Any]) -> Deferred[tuple[int, object]]:
    """
    Fire with ``(index, result)`` of whichever of two Deferreds finishes first, success
    or failure (a :class:`Failure` is passed on as the result, not raised), and cancel
    the other. Unlike :func:`twisted.internet.defer.race`, a failure counts as finishing.
    """
    outcome: Deferred[tuple[int, object]] = Deferred()

    def finished(result: object, index: int) -> None:
        # Returning None also consumes the loser's (cancellation) failure.
        if not outcome.called:
            outcome.callback((index, result))
            (second if index == 0 else first).cancel()

    first.addBoth(finished, 0)
    second.addBoth(finished, 1)
    return outcome


@dataclass(frozen=True)
class _Stop:
    """Why the tunnel stops: the exit status and, maybe, a message at a log level."""

    status: int
    message: str | None = None
    level: str = "ERROR"


class _Interrupted(Exception):
    def __init__(self, stop: _Stop) -> None:
        super().__init__(stop)
        self.stop = stop


async def _until(operation: Deferred[_T], interrupt: _Once[_Stop]) -> _T:
    """
    Wait for ``operation`` unless ``interrupt`` fires first, in which case the operation
    is cancelled and :class:`_Interrupted` is raised. When the operation fails after the
    interrupt fired (a request failing because the connection was lost), the interrupt
    is the better explanation and wins.
    """
    which, result = await _either(operation, interrupt.wait())
    if which == 1:
        raise _Interrupted(cast(_Stop, result))
    if isinstance(result, Failure):
        if interrupt.fired:
            raise _Interrupted(interrupt.value)
        result.raiseException()
    return cast(_T, result)


def _signal_stop(signum: int) -> _Stop:
    if signum == signal.SIGTERM:
        # clientloop.c, client_loop: without a session (ssh -N) a SIGTERM is a
        # deliberate stop and the exit status is 0.
        return _Stop(0)
    # clientloop.c: verbose("Killed by signal %d.") and cleanup_exit(255).
    return _Stop(FAILURE, f"Killed by signal {signum}.", "VERBOSE")


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _install_signal_handlers(
    reactor: IReactorThreads, interrupt: _Once[_Stop], hurry: _Once[None]
) -> None:
    """
    Replace the reactor's handlers (which would stop it at once) with ones that stop the
    tunnel cleanly; a second signal cuts the clean-up short. Called after the reactor
    has started, because it installs its own handlers on startup.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        # Signal handlers run between bytecodes: hand over to the reactor's thread.
        if interrupt.fired:
            reactor.callFromThread(hurry.fire, None)
        else:
            reactor.callFromThread(interrupt.fire, _signal_stop(signum))

    for signum in _SIGNALS:
        signal.signal(signum, handle)


def _ignore_signals() -> None:
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


async def _log_off(tunnel: ReverseTunnel, clock: IReactorTime, hurry: _Once[None]) -> None:
    """Log off, for at most :data:`LOGOFF_TIMEOUT` seconds or until a second signal."""
    logoff = tunnel.logoff()
    logoff.addTimeout(LOGOFF_TIMEOUT, clock)
    _, result = await _either(logoff, hurry.wait())
    if isinstance(result, Failure):
        _log.debug("Logging off did not finish cleanly: {why}", why=result.getErrorMessage())


class _ChannelReporter(TunnelObserver):
    """A ``debug1`` line per forwarded connection, in ssh's words (clientloop.c,
    ``client_request_forwarded_tcpip`` and ``..._streamlocal``; logged there when the
    server opens the channel, here once it is confirmed)."""

    def __init__(self, report: Callable[[str, str], None]) -> None:
        self._report = report

    @override
    def channel_opened(self, info: ChannelInfo) -> None:
        # The addresses come from the server: escaped and capped.
        listen = printable(info.connected_address, 256)
        if info.service == "forwarded-tcpip":
            origin = printable(info.origin_address, 256)
            self._report(
                "DEBUG1",
                f"client_request_forwarded_tcpip: listen {listen} port {info.connected_port}, "
                f"originator {origin} port {info.origin_port}",
            )
        else:
            self._report("DEBUG1", f"client_request_forwarded_streamlocal: request: {listen}")


def _describe(error: RTunnelError, invocation: Invocation, user: str) -> str:
    """:func:`describe_error` in the command's words: the option to give, not the
    library's policy name, and a hint where a name could not be looked up."""
    message = describe_error(error, user=user, host=invocation.host)
    message = message.replace(
        "(policy accept-new)", f"(-o {STRICT_HOST_KEY_CHECKING.name}=accept-new)"
    )
    if isinstance(error, ConnectError) and "Could not resolve hostname" in message:
        hint = _hostname_hint(invocation)
        if hint:
            message = f"{message}\n{hint}"
    return message


def _hostname_hint(invocation: Invocation) -> str:
    """
    Why the name looked up may not be the one meant: ``-F`` kept ``~/.ssh/config`` from
    giving it a ``HostName``. (Without ``-F``, ``-v`` names the files read; the error
    stays ssh's one line.)
    """
    read = invocation.config
    if read is None or invocation.config_file is None:
        return ""
    resolved = read.resolved
    if resolved.get(HOST_NAME.name) is not None:
        return ""
    try:
        usual = read_ssh_config(
            invocation.destination,
            ClientOptions(),
            home=os.path.expanduser("~"),
            run=None,  # no Match exec run again just for a hint
        )
    except (SpecError, OSError):
        return ""
    if usual.resolved.host == resolved.host:
        return ""
    return (
        f"rtunnel: hint: without -F {printable(invocation.config_file, 200)}, the "
        f"ssh_config files ({', '.join(usual.resolved.files)}) would connect to "
        f"{usual.resolved.host} for {resolved.original_host}."
    )


async def _session(
    reactor: IReactorCore,
    invocation: Invocation,
    console: _Console,
    background: _Background | None = None,
) -> int:
    """Run the tunnel until a signal, an error or the end of the connection."""
    options = invocation.options
    host = invocation.host
    user = options.user if options.user is not None else local_user()
    options.set_default_user(user)
    clock = cast(IReactorTime, reactor)
    interrupt: _Once[_Stop] = _Once()
    hurry: _Once[None] = _Once()
    # react() calls us before the reactor runs; the reactor installs its own signal
    # handlers when it starts, so ours must go in after that.
    reactor.callWhenRunning(
        _install_signal_handlers, cast(IReactorThreads, reactor), interrupt, hurry
    )
    # Once the reactor is down, a late signal must not kill the exiting process: at
    # finalisation CPython puts SIG_DFL back for every Python handler (not for SIG_IGN),
    # and a second SIGTERM during a slow exit ended it "killed by signal 15".
    reactor.addSystemEventTrigger("after", "shutdown", _ignore_signals)
    if invocation.group:
        return await _group_session(reactor, invocation, console, interrupt, hurry, background)
    try:
        tunnel = build_tunnel(cast(IReactorTCP, reactor), host, options, report=console.say)
    except SpecError as error:
        console.say("FATAL", f"rtunnel: {printable(error.message, None)}")
        return FAILURE

    if tunnel.options.staying_up.reconnect.mode != "off":
        tunnel.add_observer(ReconnectReporter(host, console.say))
    tunnel.add_observer(_ChannelReporter(console.say))
    operations = _start_operations(reactor, invocation, tunnel, console)
    if operations is None:
        return FAILURE

    def lost(failure: Failure) -> None:
        error = failure.value
        if isinstance(error, RTunnelError):
            message = _describe(error, invocation, user)
        else:
            message = f"rtunnel: connection lost: {failure.getErrorMessage()}"
        interrupt.fire(_Stop(FAILURE, message, "ERROR"))

    try:
        await _until(tunnel.logon(), interrupt)
        # "Authenticated to HOST port N as 'user'." comes from the tunnel's own log.
        disconnected = tunnel.when_disconnected()
        disconnected.addCallbacks(
            lambda _: interrupt.fire(_Stop(FAILURE, f"Connection to {host} closed.")), lost
        )
        await _until(
            Deferred.fromCoroutine(
                establish_forwards(
                    tunnel,
                    options.remote_forwards,
                    exit_on_failure=bool(options.exit_on_forward_failure),
                    report=console.say,
                )
            ),
            interrupt,
        )
        if background is not None:
            background.ready()
        stop = await interrupt.wait()
    except _Interrupted as interrupted:
        stop = interrupted.stop
    except RTunnelError as error:
        stop = _Stop(FAILURE, _describe(error, invocation, user), "FATAL")
    except Exception:
        _log.failure("rtunnel: internal error")
        stop = _Stop(FAILURE)
    if stop.message is not None:
        console.say(stop.level, stop.message)
    operations.stopping()
    await _log_off(tunnel, clock, hurry)
    await operations.stop()
    return stop.status


async def _group_session(
    reactor: IReactorCore,
    invocation: Invocation,
    console: _Console,
    interrupt: _Once[_Stop],
    hurry: _Once[None],
    background: _Background | None,
) -> int:
    """A tunnel group (issue #15): the destination and each ``-o GroupServer``, the same
    forwards; ready (``-f`` goes to the background) once the group mode's condition holds."""
    from rtunnel.group import GroupObserver
    from rtunnel.operations.observe import Changes, start_operations
    from rtunnel.operations.status import OneGroup

    options = invocation.options
    servers: list[tuple[str | None, str, ClientOptions, str | None]] = []
    for each in (invocation, *invocation.group):
        each.options.set_default_user(local_user())
        servers.append((None, each.host, each.options, None))
    try:
        group = build_group(
            cast(IReactorTCP, reactor),
            servers,
            options.remote_forwards,
            mode=options.group_mode,
            failback_after=options.failback_after,
            report=console.say,
            retry_first_logon=options.auto_reconnect == "always",
        )
    except SpecError as error:
        console.say("FATAL", f"rtunnel: {printable(error.message, None)}")
        return FAILURE
    group.add_tunnel_observer(_ChannelReporter(console.say))
    try:
        operations = start_operations(
            reactor,
            OneGroup(invocation.host, group, options.remote_forwards),
            control_socket=options.control_socket,
            http_listen=options.http_listen,
            report=console.say,
        )
    except SpecError as error:
        console.say("FATAL", f"rtunnel: {error.message}")
        return FAILURE
    group.add_tunnel_observer(Changes(operations.notifier.changed))

    class GivesUp(GroupObserver):
        @override
        def server_changed(self, server: GroupServerStatus) -> None:
            if all(s.role == "failed" for s in group.servers()):
                interrupt.fire(_Stop(FAILURE, "rtunnel: every server of the group has given up."))

    group.add_observer(GivesUp())
    try:
        await _until(group.start(), interrupt)
        if background is not None:
            background.ready()
        stop = await interrupt.wait()
    except _Interrupted as interrupted:
        stop = interrupted.stop
    except RTunnelError as error:
        # No server could be logged on at first (as for one tunnel: 255, ssh's words).
        user = options.user if options.user is not None else local_user()
        stop = _Stop(FAILURE, _describe(error, invocation, user), "FATAL")
    except Exception:
        _log.failure("rtunnel: internal error")
        stop = _Stop(FAILURE)
    if stop.message is not None:
        console.say(stop.level, stop.message)
    operations.stopping()
    stopping = group.stop()
    stopping.addTimeout(LOGOFF_TIMEOUT, cast(IReactorTime, reactor))
    _, result = await _either(stopping, hurry.wait())
    if isinstance(result, Failure):
        _log.debug("Logging off did not finish cleanly: {why}", why=result.getErrorMessage())
    await operations.stop()
    return stop.status


class _NoOperations:
    """No control socket, HTTP listener or systemd: nothing to start or stop."""

    def stopping(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)


def _start_operations(
    reactor: IReactorCore, invocation: Invocation, tunnel: ReverseTunnel, console: _Console
) -> Observability | _NoOperations | None:
    """The control socket, HTTP listener and systemd notifications (issue #14); None
    (and the reason said) when one cannot start."""
    options = invocation.options
    if (
        options.control_socket in (None, "none")
        and options.http_listen in (None, "none")
        and not os.environ.get("NOTIFY_SOCKET")
    ):
        # A plain start does not import rtunnel.operations at all (issue #17).
        return _NoOperations()
    from rtunnel.operations.observe import Changes, start_operations
    from rtunnel.operations.status import OneTunnel

    try:
        operations = start_operations(
            reactor,
            OneTunnel(invocation.host, tunnel, options.remote_forwards),
            control_socket=options.control_socket,
            http_listen=options.http_listen,
            report=console.say,
        )
    except SpecError as error:
        console.say("FATAL", f"rtunnel: {error.message}")
        return None
    tunnel.add_observer(Changes(operations.notifier.changed))
    return operations


async def _main(
    reactor: IReactorCore,
    invocation: Invocation,
    background: _Background | None,
    json_lines: JsonLinesObserver | None = None,
) -> NoReturn:
    console = _Console(invocation.options, sys.stderr, json_lines)
    status = await _session(reactor, invocation, console, background)
    raise SystemExit(status)


class _Background:
    """
    ``-f``, as ``ssh -f -N``: the command forks before it connects; the parent waits and
    exits 0 once the child says every forward is active, or with the child's status (255,
    its error printed) if it ends first. The child, in a session of its own, then puts
    its standard input and output on /dev/null, and its stderr too unless ``-v`` asked
    for messages (ssh.c ``fork_postauth``: ``stdfd_devnull(1, 1, !debug_flag)``).

    Forking before the reactor starts keeps the reactor and its thread pool whole in the
    child, which forking a running reactor would not.
    """

    def __init__(self, ready_fd: int, keep_stderr: bool) -> None:
        self._ready_fd: int | None = ready_fd
        self._keep_stderr = keep_stderr

    @classmethod
    def fork(cls, keep_stderr: bool) -> _Background:
        """Fork; returns in the child only (the parent exits in :func:`_wait_for_child`)."""
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.setsid()  # no terminal's signals, as daemon(3)
            return cls(write_fd, keep_stderr)
        os.close(write_fd)
        _wait_for_child(pid, read_fd)

    def ready(self) -> None:
        """Every forward is active: let the parent exit, and let go of the terminal."""
        if self._ready_fd is None:
            return
        os.write(self._ready_fd, b"\0")
        os.close(self._ready_fd)
        self._ready_fd = None
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1) if self._keep_stderr else (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)


class _ParentInterrupted(Exception):
    pass


def _wait_for_child(pid: int, ready_fd: int) -> NoReturn:
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise _ParentInterrupted

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    try:
        if os.read(ready_fd, 1):
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    except _ParentInterrupted:
        # Stopped before the forwards were up: the child goes too, as ssh would have.
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os._exit(FAILURE)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else FAILURE)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Run the ``rtunnel`` command; exits the process with ssh's status (see :data:`HELP`).

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["status"]:
        # `rtunnel status`: ask running rtunnels (a host named "status" is `-- status`).
        from rtunnel.operations.control import status_main

        sys.exit(status_main(arguments[1:]))
    if arguments and (arguments[0] == "--config" or arguments[0].startswith("--config=")):
        # Many tunnels from a configuration file (issue #14): its own small parser.
        from rtunnel.operations import runner

        runner.main(arguments, start_logging=_start_logging)
    try:
        invocation = parse_command_line(arguments)
        for warning in invocation.warnings:
            sys.stderr.write(f"{_terminal_safe(warning)}\n")
        read = read_config(invocation)
        invocation.group = group_invocations(arguments, invocation)
    except CommandLineExit as exit_:
        stream = sys.stdout if exit_.to_stdout else sys.stderr
        # A mistake's message quotes what was typed: escaped too.
        stream.write(exit_.text if exit_.to_stdout else _terminal_safe(exit_.text) + "\n")
        stream.flush()
        sys.exit(exit_.status)
    json_lines = None
    if invocation.options.log_format == "json":
        from rtunnel.operations.logs import JsonLinesObserver

        level = invocation.options.effective_log_level
        json_lines = JsonLinesObserver(
            sys.stderr, invocation.host, tracebacks=level in ("DEBUG2", "DEBUG3")
        )
    console = _Console(invocation.options, sys.stderr, json_lines)
    for level, notice in invocation.notices:
        console.say(level, notice)
    if invocation.print_config:
        # ssh -G: the options on stdout, nothing connected.
        sys.stdout.write(
            "".join(f"{_terminal_safe(line)}\n" for line in ssh_G_lines(read.resolved))
        )
        sys.stdout.flush()
        sys.exit(0)
    background = None
    if invocation.fork:
        background = _Background.fork(keep_stderr=invocation.options.logs("DEBUG1"))
    _start_logging(invocation.options, sys.stderr, json_lines)
    react(_main, (invocation, background, json_lines))


if __name__ == "__main__":
    main()
