"""
A reverse tunnel you can watch, with nothing outside this process: ``python3 -m rtunnel.demo``.

It starts the bundled SSH server (:class:`rtunnel.testing.SSHTestServer`) and a small local
web site, logs a :class:`~rtunnel.ReverseTunnel` on with a freshly written key and the
server's ``known_hosts``, asks the server to listen on a port of its choosing and forward
connections to the web site (``ssh -R 0:127.0.0.1:WEBPORT``), fetches a page through that
port, prints what happened, then logs off and stops everything. Exit status 0 means the
page came back through the tunnel.

This is a program, not library code: it runs its own reactor with
:func:`twisted.internet.task.react`.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.conch.ssh.keys import Key
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import react
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from typing_extensions import override

from rtunnel import ChannelInfo, PrivateKeyFile, ReverseTunnel, TunnelObserver, TunnelOptions

__all__ = ["BODY", "ChannelRecorder", "main", "run"]

#: What the demo web site answers; the demo checks that this came back through the tunnel.
BODY = b"Hello from 127.0.0.1, through an SSH reverse tunnel!\n"

#: The SSH user the demo logs on as.
USER = "demo"

#: Seconds before the demo gives up on any one step (it normally takes well under one).
STEP_TIMEOUT = 8.0


class _Hello(Resource):
    """The demo's web site: one page, whatever the path."""

    isLeaf = True  # noqa: N815 (Twisted attribute)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web dispatch)
        """Answer every GET with :data:`BODY`."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return BODY


@dataclass
class SeenChannel:
    """
    One channel as the demo saw it.

    :ivar info: the tunnel's row for the channel (updated live, so byte counts are final
        once the channel closed).
    :ivar closed: whether ``channel_closed`` was seen.
    """

    info: ChannelInfo
    closed: bool = False


class ChannelRecorder(TunnelObserver):
    """
    A :class:`~rtunnel.TunnelObserver` that keeps every channel it is told about, so the
    demo can print the channel table after the fact.

    :ivar seen: the channels, by channel id, in the order they opened.
    """

    def __init__(self) -> None:
        self.seen: dict[int, SeenChannel] = {}
        self._all_closed: list[Deferred[None]] = []

    @override
    def channel_opened(self, info: ChannelInfo) -> None:
        self.seen[info.channel_id] = SeenChannel(info)

    @override
    def channel_closed(self, info: ChannelInfo) -> None:
        seen = self.seen.setdefault(info.channel_id, SeenChannel(info))
        seen.closed = True
        if self.all_closed():
            waiters, self._all_closed = self._all_closed, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> bool:
        """Whether at least one channel was seen and every one seen has closed."""
        return bool(self.seen) and all(s.closed for s in self.seen.values())

    def when_all_closed(self) -> Deferred[None]:
        """A Deferred that fires once :meth:`all_closed` is true."""
        if self.all_closed():
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._all_closed.append(d)
        return d


def _read_body(response: IResponse) -> Deferred[bytes]:
    """
    :func:`twisted.web.client.readBody`, without its warning: Twisted 26.10's own
    ``Agent`` hands the body a ``TransportProxyProducer``, which has no
    ``abortConnection``, and ``readBody`` then warns about it on every call.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Using readBody with a transport", category=DeprecationWarning
        )
        return readBody(response)


def _table(seen: dict[int, SeenChannel]) -> list[str]:
    lines = [f"  {'id':>3}  {'origin':<22} {'bytes in':>9} {'bytes out':>10}  state"]
    for channel_id, s in seen.items():
        origin = f"{s.info.origin_address}:{s.info.origin_port}"
        lines.append(
            f"  {channel_id:>3}  {origin:<22} {s.info.bytes_received:>9} "
            f"{s.info.bytes_sent:>10}  {'closed' if s.closed else 'open'}"
        )
    return lines


async def main(reactor: Any, out: Any = None) -> int:
    """
    Run the demo once.

    :param reactor: a reactor providing ``IReactorTCP`` and ``IReactorTime``.
    :param out: where to print (default ``sys.stdout``).
    :return: 0 when the page came back through the tunnel, 1 otherwise.
    """
    # Imported here so that importing this module does not import Conch's server side.
    from rtunnel.testing import SSHTestServer, generate_client_key

    stream = out if out is not None else sys.stdout

    def say(line: str = "") -> None:
        print(line, file=stream, flush=True)

    tcp: IReactorTCP = reactor
    clock: IReactorTime = reactor
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rtunnel-demo-") as tmp:
        directory = Path(tmp)
        key_path = generate_client_key("ed25519", directory)
        server = SSHTestServer(tcp)
        server.add_user(USER, authorized_keys=[Key.fromFile(str(key_path) + ".pub")])
        await server.start()
        known_hosts = server.write_known_hosts(directory / "known_hosts")
        site = cast(ServerFactory, Site(_Hello()))  # Site is typed as a plain Factory
        web = tcp.listenTCP(0, site, interface="127.0.0.1")
        web_port: int = web.getHost().port  # type: ignore[attr-defined]
        tunnel = ReverseTunnel(
            tcp,
            server.host,
            server.port,
            options=TunnelOptions.create(
                user=USER, auth=[PrivateKeyFile(key_path)], known_hosts=known_hosts
            ),
        )
        recorder = ChannelRecorder()
        tunnel.add_observer(recorder)
        status = 1
        try:
            say("rtunnel demo: ssh -R through an in-process SSH server, no network needed")
            say(f"SSH server:  {server.host}:{server.port} (rtunnel.testing.SSHTestServer)")
            say(f"web site:    http://127.0.0.1:{web_port}/ (twisted.web, local only)")
            await tunnel.logon().addTimeout(STEP_TIMEOUT, clock)
            say(f"logged on:   as {USER!r}, ed25519 key, host key checked in known_hosts")
            forward = await tunnel.request_forwarding(
                "127.0.0.1", 0, "127.0.0.1", web_port
            ).addTimeout(STEP_TIMEOUT, clock)
            # The line OpenSSH's ssh prints for ssh -R 0:127.0.0.1:WEBPORT.
            say(f"Allocated port {forward.port} for remote forward to 127.0.0.1:{web_port}")
            url = f"http://{server.host}:{forward.port}/"
            response = (
                await Agent(reactor).request(b"GET", url.encode()).addTimeout(STEP_TIMEOUT, clock)
            )
            body = await _read_body(response).addTimeout(STEP_TIMEOUT, clock)
            phrase = response.phrase.decode("latin-1")
            say(f"GET {url} -> HTTP {response.code} {phrase}")
            say(f"body:        {body.decode('utf-8', 'replace').rstrip()}")
            # The client's connection closes after the response; wait for its channel.
            await recorder.when_all_closed().addTimeout(STEP_TIMEOUT, clock)
            say("channels seen by the tunnel (bytes in: from the server; out: to it):")
            for line in _table(recorder.seen):
                say(line)
            if response.code == 200 and body == BODY:
                status = 0
        except Exception as e:
            say(f"demo failed: {type(e).__name__}: {e}")
        finally:
            await tunnel.logoff()
            await defer.maybeDeferred(web.stopListening)
            await server.stop()
        say(f"logged off, everything stopped ({time.monotonic() - started:.2f} s)")
    return status


def run() -> None:
    """Entry point for ``python -m rtunnel.demo``: run :func:`main` under ``react``."""

    async def go(reactor: Any) -> None:
        status = await main(reactor)
        if status:
            raise SystemExit(status)

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    run()
