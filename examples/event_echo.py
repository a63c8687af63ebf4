"""
An echo service that lives behind an SSH server (rtunnel's event mode).

No local port is involved: the SSH server listens on a port, and every connection made to
it becomes a Twisted protocol in this process (``factory=``), here one that echoes what it
receives. An accept hook sees each connection first (the originator's address, the
address it arrived on) and may refuse it; this one logs it and accepts, unless
``--allow`` limits the originators::

    python examples/event_echo.py ssh.example.com -l me -i ~/.ssh/id_ed25519 -R 7000
    nc ssh.example.com 7000        # on the server (the forward binds to localhost there)

``--once`` stops after one connection has been served (used by the tests).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import react
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel import (
    AcceptHook,
    ChannelOpenRequest,
    PrivateKeyFile,
    ReverseTunnel,
    RTunnelError,
    TunnelOptions,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Echo(Protocol):
    """
    Send back every byte received; the transport is the SSH channel.

    :param done: fired with the number of bytes echoed when the connection ends (unless
        it already fired).
    """

    def __init__(self, done: Deferred[int]) -> None:
        self.done = done
        self.echoed = 0

    @override
    def dataReceived(self, data: bytes) -> None:
        self.echoed += len(data)
        assert self.transport is not None
        self.transport.write(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        origin = f"{peer.host}:{peer.port}" if isinstance(peer, IPv4Address | IPv6Address) else "?"
        print(f"echo: {origin} done, {self.echoed} bytes echoed", flush=True)
        if not self.done.called:
            self.done.callback(self.echoed)


class EchoFactory(Factory):
    """Builds an :class:`Echo` per connection; :attr:`first_done` fires when one ends."""

    protocol = Echo

    def __init__(self) -> None:
        self.first_done: Deferred[int] = Deferred()

    @override
    def buildProtocol(self, addr: Any) -> Echo:
        echo = Echo(self.first_done)
        echo.factory = self
        return echo


def make_accept_hook(allowed: list[Network]) -> AcceptHook:
    """
    The accept hook: log the originator; accept it if it is in one of ``allowed``
    (everything when the list is empty). It could also answer later, with a Deferred or a
    coroutine (a database look-up, say).
    """

    def accept(request: ChannelOpenRequest) -> bool:
        origin = ipaddress.ip_address(request.origin_address)
        ok = not allowed or any(origin in network for network in allowed)
        print(
            f"{'accepting' if ok else 'refusing'} channel {request.channel_id} from "
            f"{request.origin_address}:{request.origin_port} "
            f"(arrived on {request.connected_address}:{request.connected_port})",
            flush=True,
        )
        return ok

    return accept


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="An echo service behind an SSH server.")
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
    parser.add_argument("--bind-address", default="localhost", help="address the server listens on")
    parser.add_argument(
        "-R", "--remote-port", type=int, default=0, help="port the server listens on (0: any)"
    )
    parser.add_argument(
        "--allow",
        type=ipaddress.ip_network,
        action="append",
        default=[],
        metavar="NETWORK",
        help="accept only originators in this network (repeatable; default: everyone)",
    )
    parser.add_argument(
        "--once", action="store_true", help="exit after one connection has been served"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="with --once: give up (exit 1) after this many seconds without a connection",
    )
    return parser.parse_args(argv)


async def main(reactor: Any, argv: list[str]) -> int:
    """Log on, start the echo service behind the server; return the exit status."""
    args = parse_args(argv)
    tunnel = ReverseTunnel(
        cast(IReactorTCP, reactor),
        args.host,
        args.port,
        options=TunnelOptions.create(
            user=args.user, auth=[PrivateKeyFile(args.identity)], known_hosts=args.known_hosts
        ),
    )
    factory = EchoFactory()
    try:
        await tunnel.logon()
        cast(IReactorCore, reactor).addSystemEventTrigger("before", "shutdown", tunnel.logoff)
        forward = await tunnel.request_forwarding(
            args.bind_address,
            args.remote_port,
            factory=factory,
            accept=make_accept_hook(args.allow),
        )
    except RTunnelError as e:
        print(f"error {e.code}: {e}", file=sys.stderr, flush=True)
        await tunnel.logoff()
        return 1
    print(
        f"echo service listening on {args.bind_address}:{forward.port} at {args.host}",
        flush=True,
    )
    if not args.once:
        try:
            await tunnel.when_disconnected()
        except RTunnelError as e:
            print(f"error {e.code}: {e}", file=sys.stderr, flush=True)
            return 1
        return 0
    done = factory.first_done
    if args.timeout is not None:
        done.addTimeout(args.timeout, cast(IReactorTime, reactor))
    status = 0
    try:
        await done
    except Exception:
        print(f"no connection was served in {args.timeout} s", file=sys.stderr, flush=True)
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
