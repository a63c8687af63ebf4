"""
Where the ``rtunnel`` command gets a password, as OpenSSH does (readpass.c,
``read_passphrase``): an ``SSH_ASKPASS`` program, or the terminal, never either under
``BatchMode=yes``.

``SSH_ASKPASS_REQUIRE``: ``force`` always runs the askpass program; ``prefer`` runs it when
a display is set (``DISPLAY`` or ``WAYLAND_DISPLAY``); ``never`` never does. Unset, it runs
only without a terminal and with a display.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core.text import printable, printable_lines
from rtunnel.client.auth.credentials import (
    AskPassword,
    KeyboardInteractive,
    KeyboardInteractiveCallback,
    KeyboardInteractiveChallenge,
    PasswordCallback,
)

__all__ = [
    "DEFAULT_ASKPASS",
    "NEVER_ASK",
    "BlockingPrompt",
    "CannotAsk",
    "UserAsk",
    "UserRespond",
    "keyboard_interactive_source",
    "never_ask",
    "password_source",
]

#: OpenSSH's default askpass program (pathnames.h, _PATH_SSH_ASKPASS_DEFAULT).
DEFAULT_ASKPASS = "/usr/bin/ssh-askpass"


def _has_tty() -> bool:
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


def _where(
    batch_mode: bool, environ: Mapping[str, str] | None, tty: bool | None
) -> tuple[Mapping[str, str], str | None] | None:
    """
    Where ``ssh`` would ask (readpass.c ``read_passphrase``): ``(env, program)`` for an
    askpass program, ``(env, None)`` for the terminal, None for nowhere.
    """
    if batch_mode:
        return None
    env = os.environ if environ is None else environ
    has_tty = _has_tty() if tty is None else tty
    allow = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    use = allow and not has_tty
    require = env.get("SSH_ASKPASS_REQUIRE", "").lower()
    if require == "force":
        use = allow = True
    elif require == "prefer":
        use = allow
    elif require == "never":
        use = allow = False
    if use:
        return env, env.get("SSH_ASKPASS") or DEFAULT_ASKPASS
    if has_tty:
        return env, None
    return None


def password_source(
    *,
    batch_mode: bool,
    environ: Mapping[str, str] | None = None,
    tty: bool | None = None,
) -> AskPassword | None:
    """
    An :class:`~rtunnel.AskPassword` that asks as ``ssh`` would, or None when ``ssh`` could
    not ask (``BatchMode``, or neither askpass nor a terminal). It also asks for key
    passphrases (``Enter passphrase for key 'PATH': ``). Its ``ask`` returns a
    :class:`BlockingPrompt`, which the tunnel runs with its own reactor.

    :param batch_mode: ``-o BatchMode=yes``: never ask.
    :param environ: the environment (default ``os.environ``).
    :param tty: whether there is a terminal (default: whether ``/dev/tty`` opens).
    """
    where = _where(batch_mode, environ, tty)
    if where is None:
        return None
    env, program = where
    # The callback types say "an answer, a Deferred or an awaitable"; a BlockingPrompt is
    # the fourth kind, which only user authentication (userauth._resolve) runs.
    return AskPassword(cast("PasswordCallback", UserAsk(program, env)))


#: A passphrase source that never answers: encrypted keys are skipped, as ``ssh`` skips
#: them when it cannot ask (``BatchMode``, no terminal and no askpass).
NEVER_ASK = AskPassword(lambda prompt: None)


class CannotAsk(Exception):
    """Raised by :func:`never_ask`'s source: nothing can ask the user, and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def never_ask(reason: str) -> AskPassword:
    """
    A passphrase source for when ``ssh`` could not ask (``BatchMode``, or neither a
    terminal nor askpass): an encrypted key is skipped, and the key loader says why at
    the default level (``Load key "PATH": ...``) instead of leaving only "Permission
    denied".

    :param reason: why nothing can ask, e.g. ``"BatchMode=yes"``.
    """

    def ask(prompt: str) -> str | None:
        raise CannotAsk(reason)

    return AskPassword(ask)


def keyboard_interactive_source(
    *,
    batch_mode: bool,
    environ: Mapping[str, str] | None = None,
    tty: bool | None = None,
) -> KeyboardInteractive | None:
    """
    A :class:`~rtunnel.KeyboardInteractive` that asks the user each keyboard-interactive
    prompt rtunnel has no answer for, as ``ssh`` does (sshconnect2.c,
    ``input_userauth_info_req``): on the terminal, echoing the answer when the server
    says so, or through the askpass program; None where :func:`password_source` would
    give None. Its ``respond`` returns a :class:`BlockingPrompt`.
    """
    where = _where(batch_mode, environ, tty)
    if where is None:
        return None
    env, program = where
    return KeyboardInteractive(cast("KeyboardInteractiveCallback", UserRespond(program, env)))


_T = TypeVar("_T")


class BlockingPrompt(Generic[_T]):
    """
    What the asks of this module return instead of an answer: the question blocks (an
    askpass program, the terminal), and only the tunnel knows its reactor, so user
    authentication runs it with :meth:`run` (``userauth._resolve``). The library never
    touches the global reactor: under :mod:`rtunnel.blocking` or :mod:`rtunnel.aio` it
    is not the one running.
    """

    def __init__(self, call: Callable[[], _T], *, terminal: bool) -> None:
        self._call = call
        self._terminal = terminal

    def run(self, reactor: IReactorFromThreads) -> Deferred[_T]:
        """
        Ask in a daemon thread of its own, not the reactor's thread pool: the pool is
        joined when the reactor stops, so a prompt nobody answers would keep a SIGTERMed
        rtunnel from exiting. The answer fires the Deferred in ``reactor``'s thread.
        """
        # getpass turns echo off; a signal that stops rtunnel mid-prompt must not leave the
        # terminal that way (OpenSSH's readpassphrase restores it on SIGTERM too).
        finished = _terminal_restorer(cast(IReactorCore, reactor)) if self._terminal else None
        result: Deferred[_T] = Deferred()
        call = self._call

        def run() -> None:
            try:
                value = call()
            except BaseException:
                reactor.callFromThread(result.errback, Failure())
            else:
                reactor.callFromThread(result.callback, value)

        threading.Thread(target=run, name="rtunnel-prompt", daemon=True).start()
        if finished is not None:
            result.addBoth(_then(finished))
        return result


class UserAsk:
    """
    :func:`password_source`'s ``ask``: through the askpass ``program``, or on the terminal
    when ``program`` is None.
    """

    # A plain class, not a dataclass: a dataclass costs the command's start about half a
    # millisecond each to build (issue #17).
    def __init__(self, program: str | None, env: Mapping[str, str]) -> None:
        self.program = program
        self.env = env

    @override
    def __repr__(self) -> str:
        return f"UserAsk({self.program!r})"

    def __call__(self, prompt: str) -> BlockingPrompt[str | None]:
        # The prompt may be the server's text (a keyboard-interactive prompt that matched
        # the password pattern): shown escaped (RELIABILITY.md D17).
        text = printable(prompt)
        program, env = self.program, self.env
        if program is None:
            return BlockingPrompt(lambda: _ask_terminal(text), terminal=True)
        return BlockingPrompt(lambda: _run_askpass(program, text, env), terminal=False)


class UserRespond:
    """
    :func:`keyboard_interactive_source`'s ``respond``: every prompt still unanswered, one
    after the other, through the askpass ``program`` or on the terminal (None).
    """

    def __init__(self, program: str | None, env: Mapping[str, str]) -> None:
        self.program = program
        self.env = env

    @override
    def __repr__(self) -> str:
        return f"UserRespond({self.program!r})"

    def __call__(self, challenge: KeyboardInteractiveChallenge) -> BlockingPrompt[list[str] | None]:
        return BlockingPrompt(lambda: self._answer(challenge), terminal=self.program is None)

    def _answer(self, challenge: KeyboardInteractiveChallenge) -> list[str] | None:
        program = self.program
        if program is None:
            # ssh logs the name and the instruction before the prompts. All of it is the
            # server's text: escaped before it reaches the terminal (RELIABILITY.md D17).
            for line in (challenge.name, challenge.instruction):
                if line:
                    print(printable_lines(line), file=sys.stderr)
        answers: list[str] = []
        for prompt in challenge.prompts:
            if prompt.answer is not None:
                answers.append(prompt.answer)
                continue
            text = printable(prompt.text)
            if program is not None:
                answer = _run_askpass(program, text, self.env)
            elif prompt.echo:
                answer = _ask_terminal_echo(text)
            else:
                answer = _ask_terminal(text)
            if answer is None:
                return None
            answers.append(answer)
        return answers


# The blocking askers, run in a prompt's own thread. Each gets the prompt already escaped.


def _run_askpass(program: str, prompt: str, env: Mapping[str, str]) -> str | None:
    try:
        done = subprocess.run(
            [program, prompt],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(env),
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"ssh_askpass: exec({program}): {e}", file=sys.stderr)
        return None
    if done.returncode != 0:
        return None
    # readpass.c ssh_askpass: the first line, without its newline.
    return done.stdout.decode("utf-8", "replace").split("\n", 1)[0].rstrip("\r")


def _ask_terminal(prompt: str) -> str | None:
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt, OSError):
        return None


def _ask_terminal_echo(prompt: str) -> str | None:
    # readpassphrase(3) with RPP_ECHO_ON: the prompt and the answer on /dev/tty.
    try:
        # Unbuffered: a buffered "r+" file would need a seekable one, which a tty is not.
        with open("/dev/tty", "rb+", buffering=0) as terminal:
            terminal.write(prompt.encode("utf-8"))
            line = terminal.readline()
    except (OSError, KeyboardInterrupt):
        return None
    if not line:
        return None
    return line.decode("utf-8", "replace").rstrip("\r\n")


def _terminal_restorer(reactor: IReactorCore) -> Callable[[], None]:
    """
    Save the controlling terminal's settings now, to be put back if the reactor shuts
    down while the prompt is still waiting; call the function returned when it is done.
    """
    try:
        import termios

        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except (ImportError, OSError):
        return lambda: None
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        os.close(fd)
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        os.close(fd)

    trigger = reactor.addSystemEventTrigger("after", "shutdown", restore)

    def finished() -> None:
        # getpass put the settings back itself.
        reactor.removeSystemEventTrigger(trigger)
        os.close(fd)

    return finished


def _then(action: Callable[[], None]) -> Callable[[_T], _T]:
    def passthrough(result: _T) -> _T:
        action()
        return result

    return passthrough
