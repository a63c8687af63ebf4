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

from rtunnel.client.credentials import AskPassword

__all__ = ["DEFAULT_ASKPASS", "password_source"]

#: OpenSSH's default askpass program (pathnames.h, _PATH_SSH_ASKPASS_DEFAULT).
DEFAULT_ASKPASS = "/usr/bin/ssh-askpass"


def _has_tty() -> bool:
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


def password_source(
    *,
    batch_mode: bool,
    environ: Mapping[str, str] | None = None,
    tty: bool | None = None,
) -> AskPassword | None:
    """
    An :class:`~rtunnel.AskPassword` that asks as ``ssh`` would, or None when ``ssh`` could
    not ask (``BatchMode``, or neither askpass nor a terminal).

    :param batch_mode: ``-o BatchMode=yes``: never ask.
    :param environ: the environment (default ``os.environ``).
    :param tty: whether there is a terminal (default: whether ``/dev/tty`` opens).
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
        program = env.get("SSH_ASKPASS") or DEFAULT_ASKPASS
        return AskPassword(lambda prompt: _run_askpass(program, prompt, env))
    if has_tty:
        return AskPassword(_ask_terminal)
    return None


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
