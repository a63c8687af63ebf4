"""
The documentation stays true (issue #16): the README is short and its two set-up commands
are the ones CI runs; its three examples (the command, the library, a test with the
fixtures) run; every relative link in the README and ``docs/`` resolves, anchors
included; every Python block there compiles; and the pages name every ``-o`` keyword,
constructor option, public method, observer event, statistic, error code, fixture and
test-server control the code has, so a new one cannot go undocumented.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from command_support import spawn_command
from test_examples import ROOT, Collect, finish, spawn
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.protocol import Protocol, ServerFactory
from typing_extensions import override

import rtunnel
from rtunnel import (
    ReverseTunnel,
    RTunnelError,
    TunnelObserver,
    TunnelOptions,
    TunnelSettings,
    TunnelStatistics,
)
from rtunnel.cli import CommandLineExit, parse_command_line
from rtunnel.openssh.options import SUPPORTED_OPTIONS
from rtunnel.testing import (
    FaultProxy,
    InboundConnection,
    MemoryPair,
    SSHTestServer,
    pytest_plugin,
)

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SETUP_COMMANDS = [
    "python3 -m pip install -e . && python3 -m rtunnel.demo",
    "bash scripts/test",
]
#: The pages the README must link to (issue #16).
README_LINKS = [
    "docs/library.md",
    "docs/command.md",
    "docs/operations.md",
    "docs/testing.md",
    "docs/architecture.md",
    "docs/performance.md",
    "docs/seed-mapping.md",
]
TIMEOUT = 30.0


# -- reading Markdown ------------------------------------------------------------------


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """The fenced code blocks: (the heading above, the info string, the code)."""
    blocks = []
    heading = ""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            info = line[3:].strip()
            body = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            blocks.append((heading, info, "\n".join(body) + "\n"))
    return blocks


def _block(text: str, heading: str, info: str) -> str:
    """The one block of kind ``info`` under ``heading``."""
    found = [code for h, i, code in _blocks(text) if h == heading and i == info]
    assert len(found) == 1, f"expected one {info or 'plain'} block under {heading!r}"
    return found[0]


def _prose(text: str) -> str:
    """The text outside fenced blocks, with inline code spans blanked out."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "``", line))
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in _text(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            slug = _slug(line.lstrip("#"))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(_text(path)))


def _named(name: str, text: str) -> bool:
    """``name`` appears as code in ``text``: `name`, `name(...)`, `name=`, `tunnel.name`..."""
    return re.search(rf"`(?:\w+\.)?{re.escape(name)}(?:[`(\[=]|\s)", text) is not None


# -- the README ------------------------------------------------------------------------


def test_readme_is_short() -> None:
    lines = _text(README).splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_setup_commands_open_the_readme_verbatim() -> None:
    heading, _info, first = _blocks(_text(README))[0]
    assert heading == "rtunnel"
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands == SETUP_COMMANDS


def test_ci_runs_the_test_command() -> None:
    lines = [
        line.strip()
        for line in _text(ROOT / ".ci" / "run").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert any(re.fullmatch(r"(exec )?bash scripts/test( .*)?", line) for line in lines), lines


@pytest.mark.parametrize("target", README_LINKS)
def test_readme_links_to_every_page(target: str) -> None:
    assert target in _links(README)


# -- links and code blocks everywhere ------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(page: Path) -> None:
    for heading, info, code in _blocks(_text(page)):
        if info == "python":
            compile(code, f"{page.name}: {heading}", "exec")


# -- the README's three examples run ---------------------------------------------------------


def test_readme_command_lines_parse() -> None:
    lines = _block(_text(README), "The command", "").splitlines()
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "rtunnel"
        try:
            invocation = parse_command_line(argv[1:])
        except CommandLineExit as e:
            pytest.fail(f"{line!r}: {e.text}")
        assert invocation.host == "gateway.example.com"


@pytest_twisted.ensureDeferred
async def test_readme_command_runs(
    ssh_test_server: SSHTestServer,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    ssh_user: str,
    tmp_path: Path,
) -> None:
    # The second line, pointed at the bundled server: its -R and -o as written; the key,
    # known_hosts, port and destination are the fixture's.
    line = _block(_text(README), "The command", "").splitlines()[1]
    argv = shlex.split(line)[1:-1]
    i = argv.index("-i")
    del argv[i : i + 2]
    command = spawn_command(
        ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, tmp_path / "home", *argv
    )
    try:
        await command.wait_for(b"Allocated port ", TIMEOUT)
        match = re.search(
            rb"Allocated port (\d+) for remote forward to localhost:80", command.stderr
        )
        assert match is not None, command.stderr
        port = int(match.group(1))
        # Printed once the server agreed: it listens there now, on loopback as with ssh.
        assert ("localhost", port) in ssh_test_server.forwards
    finally:
        status = await command.stop()
    # The README and docs/command.md: SIGTERM is a deliberate stop, status 0.
    assert status == 0, command.stderr


def _substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert code.count(old) == 1, f"the README's example no longer has {old!r} once"
        code = code.replace(old, new)
    return code


class _Echo(Protocol):
    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@pytest_twisted.ensureDeferred
async def test_readme_library_example_runs(
    ssh_test_server: SSHTestServer,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    ssh_user: str,
    tmp_path: Path,
) -> None:
    target = cast(
        IListeningPort,
        cast(IReactorTCP, reactor).listenTCP(
            0, ServerFactory.forProtocol(_Echo), interface="127.0.0.1"
        ),
    )
    target_port = target.getHost().port  # type: ignore[attr-defined]
    code = _substitute(
        _block(_text(README), "In a Twisted application", "python"),
        {
            '"gateway.example.com",': '"127.0.0.1",',
            "        22,\n": f"        {ssh_test_server.port},\n",
            'user="tunnel"': f"user={ssh_user!r}",
            '"~/.ssh/id_ed25519"': repr(str(ssh_client_key)),
            'known_hosts="~/.ssh/known_hosts"': f"known_hosts={str(ssh_known_hosts)!r}",
            '"127.0.0.1", 8000)': f'"127.0.0.1", {target_port})',
        },
    )
    script = tmp_path / "readme_library_example.py"
    script.write_text(code)
    example = spawn(str(script))
    try:
        match = await example.wait_for(re.compile(rb"^Allocated port (\d+) for remote", re.M))
        port = int(match.group(1))
        client = Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(b"through the README's tunnel")
        assert await client.wait_for(27) == b"through the README's tunnel"
        client.transport.loseConnection()
        await client.closed
        # Ctrl-C or a kill: the shutdown trigger logs off, when_disconnected() fires.
        example.transport.signalProcess("TERM")  # type: ignore[union-attr]
    finally:
        status = await finish(example)
        await target.stopListening()
    assert status == 0, example.describe()
    await ssh_test_server.wait_for_forward_closed("localhost", port).addTimeout(TIMEOUT, reactor)


def test_readme_fixture_example_passes(tmp_path: Path) -> None:
    code = _block(_text(README), "In your tests", "python")
    (tmp_path / "test_readme_example.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme_example.py"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^1 passed", result.stdout.splitlines()[-1]), result.stdout


# -- the pages name what the code has -------------------------------------------------------


def test_command_page_names_every_option_keyword() -> None:
    text = _text(DOCS / "command.md")
    missing = [
        k
        for k in sorted(set(SUPPORTED_OPTIONS.values()))
        if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", text) is None
    ]
    assert missing == []


def test_library_page_names_every_constructor_option() -> None:
    """The constructor's parameters, every setting TunnelOptions.create() takes, and the
    option groups."""
    text = _text(DOCS / "library.md")
    parameters = inspect.signature(ReverseTunnel).parameters
    settings = list(TunnelSettings.__annotations__)
    groups = [f.name for f in dataclasses.fields(TunnelOptions)]
    classes = [type(getattr(TunnelOptions(), name)).__name__ for name in groups[:-1]]
    names = [*parameters, *settings, *groups, *classes]
    missing = [name for name in names if name != "reactor" and not _named(name, text)]
    assert missing == []


def test_library_page_names_every_public_method() -> None:
    text = _text(DOCS / "library.md")
    # Called by the connection, not by applications (issue #16 makes them private).
    internal = {"find_forward", "find_socket_forward", "open_target", "channel_event"}
    names = [n for n in vars(ReverseTunnel) if not n.startswith("_") and n not in internal]
    missing = [n for n in names if not _named(n, text)]
    assert missing == []


def test_library_page_names_every_event_and_statistic() -> None:
    text = _text(DOCS / "library.md")
    events = [n for n in vars(TunnelObserver) if not n.startswith("_")]
    fields = [*TunnelStatistics.__dataclass_fields__, "reconnects"]
    missing = [n for n in [*events, *fields] if not _named(n, text)]
    assert missing == []


def test_library_page_lists_every_error_with_its_code() -> None:
    text = _text(DOCS / "library.md")
    errors = [
        getattr(rtunnel, name)
        for name in rtunnel.__all__
        if isinstance(getattr(rtunnel, name), type)
        and issubclass(getattr(rtunnel, name), RTunnelError)
    ]
    assert len(errors) >= 20
    wrong = [
        f"{error.__name__} {error.code}"
        for error in errors
        if not re.search(rf"^\| `{error.__name__}` \| {error.code} \|", text, re.M)
    ]
    assert wrong == []


def _public_names(cls: type) -> list[str]:
    """The public names a class of rtunnel's has, its own and its rtunnel bases' (mixins)."""
    return sorted(
        {
            name
            for klass in cls.__mro__
            if klass.__module__.startswith("rtunnel.")
            for name in vars(klass)
            if not name.startswith("_")
        }
    )


@pytest.mark.parametrize(
    "names",
    [
        pytest_plugin.__all__,
        _public_names(SSHTestServer),
        _public_names(FaultProxy),
        _public_names(MemoryPair),
        ["client_key", "directory", "known_hosts", "reactor", "server", "tunnel", "user"],
        [n for n in _public_names(InboundConnection) if n.islower()],
    ],
    ids=["fixtures", "SSHTestServer", "FaultProxy", "MemoryPair", "pair", "InboundConnection"],
)
def test_testing_page_names_every_fixture_and_control(names: list[str]) -> None:
    text = _text(DOCS / "testing.md")
    missing = [n for n in names if not re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text)]
    assert missing == []


def test_testing_page_memory_pair_example_passes() -> None:
    """The memory pair's example runs as it is written, each of its tests."""
    code = _block(_text(DOCS / "testing.md"), "In memory: `MemoryPair`", "python")
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/testing.md: In memory", "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        assert callable(test)
        test()
