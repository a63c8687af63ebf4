"""
Where the ``rtunnel`` command gets a password, as OpenSSH does (readpass.c,
``read_passphrase``): an ``SSH_ASKPASS`` program, or the terminal, never either under
``BatchMode=yes``.

``SSH_ASKPASS_REQUIRE``: ``force`` always runs the askpass program; ``prefer`` runs it when
a display is set (``DISPLAY`` or ``WAYLAND_DISPLAY``); ``never`` never does. Unset, it runs
only without a terminal and with a display.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from rtunnel.client.credentials import (
    AskPassword,
    KeyboardInteractive,
    KeyboardInteractiveChallenge,
)

__all__ = ["DEFAULT_ASKPASS", "NEVER_ASK", "keyboard_interactive_source", "password_source"]

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
    passphrases (``Enter passphrase for key 'PATH': ``).

    :param batch_mode: ``-o BatchMode=yes``: never ask.
    :param environ: the environment (default ``os.environ``).
    :param tty: whether there is a terminal (default: whether ``/dev/tty`` opens).
    """
    where = _where(batch_mode, environ, tty)
    if where is None:
        return None
    env, program = where
    if program is not None:
        return AskPassword(lambda prompt: _run_askpass(program, prompt, env))
    return AskPassword(_ask_terminal)


#: A passphrase source that never answers: encrypted keys are skipped, as ``ssh`` skips
#: them when it cannot ask (``BatchMode``, no terminal and no askpass).
NEVER_ASK = AskPassword(lambda prompt: None)


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
    give None.
    """
    where = _where(batch_mode, environ, tty)
    if where is None:
        return None
    env, program = where

    async def respond(challenge: KeyboardInteractiveChallenge) -> list[str] | None:
        if program is None:
            # ssh logs the name and the instruction before the prompts.
            for line in (challenge.name, challenge.instruction):
                if line:
                    print(line, file=sys.stderr)
        answers: list[str] = []
        for prompt in challenge.prompts:
            if prompt.answer is not None:
                answers.append(prompt.answer)
                continue
            if program is not None:
                answer = await _run_askpass(program, prompt.text, env)
            elif prompt.echo:
                answer = await _ask_terminal_echo(prompt.text)
            else:
                answer = await _ask_terminal(prompt.text)
            if answer is None:
                return None
            answers.append(answer)
        return answers

    return KeyboardInteractive(respond)


def _run_askpass(program: str, prompt: str, env: Mapping[str, str]) -> Deferred[str | None]:
    def run() -> str | None:
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

    result: Deferred[str | None] = deferToThread(run)
    return result


def _ask_terminal(prompt: str) -> Deferred[str | None]:
    def ask() -> str | None:
        try:
            return getpass.getpass(prompt)
        except (EOFError, KeyboardInterrupt, OSError):
            return None

    result: Deferred[str | None] = deferToThread(ask)
    return result


def _ask_terminal_echo(prompt: str) -> Deferred[str | None]:
    # readpassphrase(3) with RPP_ECHO_ON: the prompt and the answer on /dev/tty.
    def ask() -> str | None:
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

    result: Deferred[str | None] = deferToThread(ask)
    return result
