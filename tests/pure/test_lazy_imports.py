"""
A plain start imports only what a plain forward needs (issue #17: a quick start).

Each check runs in a fresh interpreter and reads ``sys.modules``: what ``import rtunnel``,
``import rtunnel.cli`` and the modules a plain ``rtunnel -N -R ...`` start loads by its
``Allocated port`` line bring in must not include proxies, jump hosts, ProxyCommand, the
SOCKS server of dynamic forwards, the test server, the ssh_config reader or the other
front doors. ``benchmarks/start_time.py`` measures what that is worth.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Modules a direct ``-R host:port`` forward with a key file never uses, each imported
#: where it is needed instead.
NOT_FOR_A_PLAIN_START = (
    "rtunnel.client.reach.proxy",
    "rtunnel.client.reach._proxywire",
    "rtunnel.client.reach._proxycommand",
    "rtunnel.client.reach.jump",
    "rtunnel.client.channels.dynamic",
    "rtunnel.client.channels._socksserver",
    # Not rtunnel.openssh.ssh_config: the command reads ~/.ssh/config and
    # /etc/ssh/ssh_config at every start, as ssh does.
    "rtunnel.testing",
    "rtunnel.demo",
    "rtunnel.blocking",
    "rtunnel.aio",
    "rtunnel._bridge",
    "gssapi",
    "hypothesis",
    "prometheus_client",
    "twisted.web",
    # Only twistd's service needs these (rtunnel.service; the command uses rtunnel._front).
    # Not twisted.plugin: twisted.internet.endpoints imports it.
    "twisted.application",
    "twisted.python.usage",
    # Only with a control socket, an HTTP listener or $NOTIFY_SOCKET.
    "rtunnel.operations",
)

#: What a plain start imports by the time the forward is up (``-X importtime`` of a real
#: start against sshd lists these among rtunnel's modules).
PLAIN_START = (
    "rtunnel.cli",
    "rtunnel.tunnel",
    "rtunnel.client.reach.endpoint",
    "rtunnel.client.transport.client_transport",
    "rtunnel.client.auth.userauth",
    "rtunnel.client.auth.askpass",
    "rtunnel.client.channels.targets",
)


def modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(loaded: set[str]) -> list[str]:
    return sorted(
        name
        for name in loaded
        if any(name == bad or name.startswith(bad + ".") for bad in NOT_FOR_A_PLAIN_START)
    )


def test_import_rtunnel_imports_neither_twisted_nor_cryptography() -> None:
    loaded = modules_after("import rtunnel")
    assert sorted(m for m in loaded if m.split(".")[0] in ("twisted", "cryptography")) == []
    assert heavy(loaded) == []


def test_import_rtunnel_cli_installs_no_reactor() -> None:
    # The command picks its reactor when it runs (Conch's userauth, imported by then,
    # takes the global one); importing the module must not.
    assert "twisted.internet.reactor" not in modules_after("import rtunnel.cli")


@pytest.mark.parametrize(
    "code",
    ["import rtunnel.cli", "import " + ", ".join(PLAIN_START)],
    ids=["cli", "plain-start"],
)
def test_a_plain_start_imports_none_of_the_rest(code: str) -> None:
    loaded = modules_after(code)
    assert heavy(loaded) == []
    # Not vacuous: the command and the client it drives are there.
    assert {"rtunnel.cli", "rtunnel.options", "twisted.internet.defer"} <= loaded


def test_every_public_name_is_still_there_and_imports_its_module_on_first_use() -> None:
    code = (
        "import sys, rtunnel\n"
        "before = 'rtunnel.client.reach.proxy' in sys.modules\n"
        "from rtunnel import Proxy, JumpHost, ReverseTunnel\n"
        "assert Proxy.__module__ == 'rtunnel.client.reach.proxy', Proxy.__module__\n"
        "assert set(rtunnel.__all__) <= set(dir(rtunnel))\n"
        "missing = [n for n in rtunnel.__all__ if getattr(rtunnel, n, None) is None]\n"
        "assert not missing, missing\n"
        "print(before)\n"
        "try:\n"
        "    rtunnel.NoSuchName\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == [
        "False",
        "module 'rtunnel' has no attribute 'NoSuchName'",
    ]


def test_a_gssapi_credential_checks_for_python_gssapi_without_importing_it() -> None:
    # Debian's /etc/ssh/ssh_config turns GSSAPIAuthentication on for every host, so the
    # command's plain start carries a GSSAPI credential; importing python-gssapi cost it
    # about 17 ms before the server had even said whether it offers gssapi-with-mic.
    pytest.importorskip("gssapi")
    loaded = modules_after(
        "from rtunnel import GSSAPI\n"
        "from rtunnel.client.auth.userauth import load_credentials\n"
        "load_credentials([GSSAPI()])"
    )
    assert "rtunnel.client.auth.userauth" in loaded
    assert "gssapi" not in loaded
