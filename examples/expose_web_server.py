"""
Expose a local web server through an SSH server: ``ssh -N -R 0:127.0.0.1:8000 user@host``,
written with rtunnel (forwarding mode).

The SSH server listens on a port (``--remote-port``, 0: its choice) and every connection
made to it is carried back through the SSH connection and spliced to the local web server
(``--target``). Without ``--target`` this script serves a one-page site of its own, so it
can be tried with nothing else running::

    python examples/expose_web_server.py ssh.example.com -l me -i ~/.ssh/id_ed25519

``--once`` stops after one connection has come through and closed (used by the tests);
Ctrl-C logs off cleanly otherwise.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from typing_extensions import override

from rtunnel import (
    ChannelInfo,
    PrivateKeyFile,
    ReverseTunnel,
    RTunnelError,
    TunnelObserver,
    TunnelOptions,
)


class Hello(Resource):
    """The built-in site served when no ``--target`` is given: one page, any path."""

    isLeaf = True  # noqa: N815 (Twisted attribute)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web dispatch)
        """Say hello, naming the machine behind the tunnel."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"Hello from {socket.gethostname()}, served through rtunnel.\n".encode()


class ConnectionLog(TunnelObserver):
    """
    Prints each connection that comes through the tunnel, and fires :attr:`first_closed`
    when the first one has closed (for ``--once``).
    """

    def __init__(self) -> None:
        self.first_closed: Deferred[ChannelInfo] = Deferred()

    @override
    def channel_opened(self, info: ChannelInfo) -> None:
        print(
            f"channel {info.channel_id}: connection from {info.origin_address}:"
            f"{info.origin_port} -> {info.forwarding_host}:{info.forwarding_port}",
            flush=True,
        )

    @override
    def channel_closed(self, info: ChannelInfo) -> None:
        print(
            f"channel {info.channel_id}: closed, {info.bytes_received} bytes in, "
            f"{info.bytes_sent} bytes out",
            flush=True,
        )
        if not self.first_closed.called:
            self.first_closed.callback(info)


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) to a pair, for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Expose a local web server through an SSH server (ssh -R).",
    )
    parser.add_argument("host", help="the SSH server")
    parser.add_argument("-p", "--port", type=int, default=22, help="its port (default 22)")
    parser.add_argument("-l", "--user", default=getpass.getuser(), help="user to log on as")
    parser.add_argument(
        "-i", "--identity", type=Path, required=True, help="private key file to log on with"
    )
    parser.add_argument(
        "--known-hosts",
        type=Path,
        default=Path("~/.ssh/known_hosts").expanduser(),
        help="known_hosts file holding the server's host key (default ~/.ssh/known_hosts)",
    )
    parser.add_argument(
        "--bind-address",
        default="localhost",
        help="address the server listens on, as in -R ADDRESS:PORT:... (default localhost)",
    )
    parser.add_argument(
        "-R",
        "--remote-port",
        type=int,
        default=0,
        help="port the server listens on (default 0: the server picks one)",
    )
    parser.add_argument(
        "--target",
        type=parse_target,
        help="HOST:PORT of the web server to expose (default: a built-in one-page site)",
    )
    parser.add_argument(
        "--once", action="store_true", help="exit after one connection came through and closed"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="with --once: give up (exit 1) after this many seconds without a connection",
    )
    return parser.parse_args(argv)


async def main(reactor: Any, argv: list[str]) -> int:
    """Log on, forward, serve; return the exit status."""
    args = parse_args(argv)
    tcp = cast(IReactorTCP, reactor)
    if args.target is None:
        site = cast(ServerFactory, Site(Hello()))
        web = tcp.listenTCP(0, site, interface="127.0.0.1")
        target_host, target_port = "127.0.0.1", web.getHost().port  # type: ignore[attr-defined]
        print(f"serving the built-in site on http://127.0.0.1:{target_port}/", flush=True)
    else:
        target_host, target_port = args.target

    tunnel = ReverseTunnel(
        tcp,
        args.host,
        args.port,
        options=TunnelOptions.create(
            user=args.user, auth=[PrivateKeyFile(args.identity)], known_hosts=args.known_hosts
        ),
    )
    log = ConnectionLog()
    tunnel.add_observer(log)
    try:
        await tunnel.logon()
        print(f"logged on to {args.host} port {args.port} as {args.user}", flush=True)
        # Log off cleanly (cancel the forward, close channels) when the reactor stops.
        cast(IReactorCore, reactor).addSystemEventTrigger("before", "shutdown", tunnel.logoff)
        forward = await tunnel.request_forwarding(
            args.bind_address, args.remote_port, target_host, target_port
        )
    except RTunnelError as e:
        print(f"error {e.code}: {e}", file=sys.stderr, flush=True)
        await tunnel.logoff()
        return 1
    if args.remote_port == 0:
        # The line OpenSSH's ssh prints, so scripts can find the port the same way.
        print(
            f"Allocated port {forward.port} for remote forward to {target_host}:{target_port}",
            flush=True,
        )
    else:
        print(
            f"forwarding {args.bind_address}:{forward.port} on {args.host} "
            f"to {target_host}:{target_port}",
            flush=True,
        )

    if not args.once:
        # Serve until Ctrl-C (the shutdown trigger logs off) or until the connection drops.
        try:
            await tunnel.when_disconnected()
        except RTunnelError as e:
            print(f"error {e.code}: {e}", file=sys.stderr, flush=True)
            return 1
        return 0

    first = log.first_closed
    if args.timeout is not None:
        first.addTimeout(args.timeout, cast(IReactorTime, reactor))
    status = 0
    try:
        await first
    except Exception:
        print(f"no connection came through in {args.timeout} s", file=sys.stderr, flush=True)
        status = 1
    await tunnel.logoff()
    print("logged off", flush=True)
    return status


def run() -> None:
    """Run :func:`main` under ``react`` and exit with its status."""

    async def go(reactor: Any) -> None:
        status = await main(reactor, sys.argv[1:])
        if status:
            raise SystemExit(status)

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    run()
