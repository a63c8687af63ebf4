"""
The service gap (issue #15): how long a forwarded service is unreachable after a fault.

Three private OpenSSH sshds on 127.0.0.1 (as the tests start them) and one local echo
target. Per mode, a tunnel (in this process, on the reactor) forwards a port-0 listener
of its server(s) to the target, and a probe thread connects to the forwarded port of the
server that should serve every ``--interval`` (20 ms), sending 8 bytes and reading the
echo (each try times out after ``--probe-timeout``). A fault is injected, and the gap is
the time from the fault until a probe through the port that should now serve gets an
answer:

- ``single``: one server, one ReverseTunnel with reconnect (the library's default policy:
  first retry after 1 s, jitter 0.2): the gap is noticing the loss, the wait before the
  retry, a logon and the forward request; through the forward's new port.
- ``failover``: a TunnelGroup of the three servers, hot standby: the gap is noticing the
  loss and one round of ``tcpip-forward`` on the next server; through that server's port.
- ``all``: a TunnelGroup holding the forward on all three; the fault hits the first, and
  the second's port is probed for ``--window`` seconds (4) from the fault: the gap is the
  longest time from the fault or an answer to the next answer (one probe interval when
  nothing is lost), and every probe that failed is counted.

Faults (``--faults``): ``kill`` (the serving sshd session is SIGKILLed: the connection
closes at once), ``freeze`` (SIGSTOP: nothing closes; only the keepalive notices, with
ServerAliveInterval 1 s and CountMax 2, so about 2-3 s), ``stop`` (the sshd and its
sessions stopped outright; started again after the measurement). After each fault the
server is restored and the tunnel(s) settle before the next.

    python3 benchmarks/service_gap.py                  # 5 repeats of each (a minute or two)
    python3 benchmarks/service_gap.py --repeats 2 --modes failover,all --faults kill

Prints a Markdown table: median and worst gap per mode and fault, and the probes that got
no answer (for ``single`` and ``failover`` these include the ticks before the new port
was known; for ``all``, every one is a connection the survivor failed).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from twisted.internet import threads  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import deferLater, react  # noqa: E402

from rtunnel import (  # noqa: E402
    ForwardState,
    PrivateKeyFile,
    ReconnectPolicy,
    ReverseTunnel,
    TunnelOptions,
)
from rtunnel.group import GroupForward, GroupServer, TunnelGroup  # noqa: E402
from rtunnel.testing import OpenSSHServer, generate_client_key  # noqa: E402
from rtunnel.testing._openssh import find_sshd  # noqa: E402

MODES = ("single", "failover", "all")
FAULTS = ("kill", "freeze", "stop")
#: Seconds a measurement waits at most for the service to come back.
GIVE_UP = 30.0


class Echo:
    """A threaded echo server on 127.0.0.1: the forwarded service."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def probe_once(port: int, timeout: float) -> bool:
    """One connection through the forward: 8 bytes there and back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
            c.sendall(b"gapprobe")
            got = b""
            while len(got) < 8:
                data = c.recv(8 - len(got))
                if not data:
                    return False
                got += data
            return got == b"gapprobe"
    except OSError:
        return False


def wait_for_service(
    port_now: Callable[[], int | None], start: float, interval: float, timeout: float
) -> tuple[float | None, int]:
    """
    Probe every ``interval`` from ``start`` (monotonic) on the port ``port_now()`` names
    (None: not known yet); the seconds from ``start`` to the first answer (None: none
    within GIVE_UP) and how many probes failed before it.
    """
    failed = 0
    while time.monotonic() - start < GIVE_UP:
        began = time.monotonic()
        port = port_now()
        if port is not None and probe_once(port, timeout):
            return time.monotonic() - start, failed
        failed += 1
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    return None, failed


def longest_silence(
    port_now: Callable[[], int | None], start: float, interval: float, timeout: float, window: float
) -> tuple[float, int]:
    """
    ``all``: probe for ``window`` seconds from ``start``; the longest time from the fault
    or an answered probe to the next answered probe, and how many probes failed.
    """
    failed = 0
    last_answer = start
    longest = 0.0
    while time.monotonic() - start < window:
        began = time.monotonic()
        port = port_now()
        if port is not None and probe_once(port, timeout):
            now = time.monotonic()
            longest = max(longest, now - last_answer)
            last_answer = now
        else:
            failed += 1
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    return longest, failed


def active_port(forward: Any) -> int | None:
    if forward is not None and forward.state is ForwardState.ACTIVE and forward.port:
        return int(forward.port)
    return None


class Bench:
    def __init__(self, reactor: Any, args: argparse.Namespace, work: Path) -> None:
        self.reactor = reactor
        self.args = args
        sshd = find_sshd()
        if sshd is None:
            raise SystemExit("service_gap: needs OpenSSH's sshd (apt-get install openssh-server)")
        self.key = generate_client_key("ed25519", work / "client")
        public = self.key.with_name(self.key.name + ".pub").read_text().strip()
        self.servers = [
            OpenSSHServer(
                work / f"sshd{n}",
                authorized_keys=[public],
                extra_config=["LogLevel INFO"],
                sshd_path=sshd,
            )
            for n in range(3)
        ]
        for server in self.servers:
            server.start()
        self.echo = Echo()

    def options(self, server: OpenSSHServer, policy: ReconnectPolicy) -> TunnelOptions:
        return TunnelOptions.create(
            user=server.user,
            auth=[PrivateKeyFile(self.key)],
            known_hosts=server.known_hosts_path,
            reconnect=policy,
            keepalive_interval=1,
            keepalive_count_max=2,
        )

    def on_reactor(self, f: Callable[[], Any]) -> Any:
        return threads.blockingCallFromThread(self.reactor, f)

    async def settle(self, check: Callable[[], bool], timeout: float = GIVE_UP) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit("service_gap: the tunnel(s) did not settle in time")
            await deferLater(self.reactor, 0.05, lambda: None)

    def inject(self, server: OpenSSHServer, fault: str) -> None:
        if fault == "kill":
            server.kill_sessions()
        elif fault == "freeze":
            server.freeze_sessions()
        else:
            server.stop()

    def restore(self, server: OpenSSHServer, fault: str) -> None:
        if fault == "freeze":
            server.thaw_sessions()
        elif fault == "stop":
            server.start()

    async def measure(
        self,
        server: OpenSSHServer,
        fault: str,
        port_now: Callable[[], int | None],
        all_mode: bool = False,
    ) -> tuple[float | None, int]:
        """Inject ``fault`` into ``server`` and time the gap (in a thread)."""

        def run() -> tuple[float | None, int]:
            start = time.monotonic()
            self.inject(server, fault)
            if all_mode:
                # The survivor is probed through the whole outage, not only once.
                return longest_silence(
                    lambda: self.on_reactor(port_now),
                    start,
                    self.args.interval,
                    self.args.probe_timeout,
                    self.args.window,
                )
            return wait_for_service(
                lambda: self.on_reactor(port_now),
                start,
                self.args.interval,
                self.args.probe_timeout,
            )

        result: tuple[float | None, int] = await threads.deferToThread(run)
        await threads.deferToThread(self.restore, server, fault)
        return result

    # -- the modes

    async def single(self, fault: str) -> list[tuple[float | None, int]]:
        server = self.servers[0]
        tunnel = ReverseTunnel(
            self.reactor, server.host, server.port, options=self.options(server, ReconnectPolicy())
        )
        await tunnel.logon()
        forward = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", self.echo.port)
        results = []
        try:
            for _ in range(self.args.repeats):
                before = forward.port
                assert await threads.deferToThread(probe_once, before, 2.0)

                def moved() -> int | None:
                    # The forward's port once it is active again after the fault.
                    port = active_port(forward)
                    return port if tunnel.connected else None

                results.append(await self.measure(server, fault, moved))
                await self.settle(lambda: tunnel.connected and active_port(forward) is not None)
        finally:
            await tunnel.logoff()
        return results

    async def group(self, mode: str, fault: str) -> list[tuple[float | None, int]]:
        policy = ReconnectPolicy(initial_delay=0.5, max_delay=2.0)
        group = TunnelGroup(
            self.reactor,
            [
                GroupServer(s.host, s.port, self.options(s, policy), f"s{n}")
                for n, s in enumerate(self.servers)
            ],
            [GroupForward("127.0.0.1", 0, "127.0.0.1", self.echo.port)],
            mode=mode,
        )
        await group.start()
        results = []

        def all_settled() -> bool:
            servers = group.servers()
            if not all(s.up for s in servers):
                return False
            if mode == "all":
                return all(s.active[0] for s in servers)
            return group.ready

        try:
            await self.settle(all_settled)
            for _ in range(self.args.repeats):
                if mode == "all":
                    victim, survivor = 0, 1
                else:
                    victim = next(i for i, s in enumerate(group.servers()) if s.role == "serving")
                    survivor = -1
                served_by = [s.name for s in group.servers()]

                def port_now(
                    victim: int = victim, survivor: int = survivor, served_by: list[str] = served_by
                ) -> int | None:
                    servers = group.servers()
                    if mode == "all":
                        return active_port(servers[survivor].forwards[0])
                    # failover: whichever other server serves now.
                    if group.serving is None or group.serving == served_by[victim]:
                        return None
                    index = served_by.index(group.serving)
                    return active_port(servers[index].forwards[0])

                results.append(
                    await self.measure(self.servers[victim], fault, port_now, mode == "all")
                )
                await self.settle(all_settled)
        finally:
            await group.stop()
        return results


def summary(rows: dict[tuple[str, str], list[tuple[float | None, int]]]) -> str:
    lines = [
        "| mode | fault | repeats | median gap, s | worst gap, s | probes unanswered (total) |",
        "|---|---|---|---|---|---|",
    ]
    for (mode, fault), results in rows.items():
        gaps = [g for g, _ in results if g is not None]
        lost = len(results) - len(gaps)
        median = f"{statistics.median(gaps):.3f}" if gaps else "-"
        worst = f"{max(gaps):.3f}" if gaps else "-"
        if lost:
            worst += f" ({lost} over {GIVE_UP:.0f} s)"
        failed = sum(f for _, f in results)
        lines.append(f"| {mode} | {fault} | {len(results)} | {median} | {worst} | {failed} |")
    return "\n".join(lines)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rtunnel-gap-") as work:
        bench = Bench(reactor, args, Path(work))
        rows: dict[tuple[str, str], list[tuple[float | None, int]]] = {}
        try:
            for mode in args.modes:
                for fault in args.faults:
                    if mode == "single" and fault == "stop":
                        continue  # one server stopped: nothing to serve until it is back
                    began = time.monotonic()
                    if mode == "single":
                        rows[mode, fault] = await bench.single(fault)
                    else:
                        rows[mode, fault] = await bench.group(mode, fault)
                    took = time.monotonic() - began
                    print(f"{mode}/{fault}: {rows[mode, fault]} ({took:.1f} s)", file=sys.stderr)
        finally:
            for server in bench.servers:
                server.stop()
        print(
            f"Service gap, {args.repeats} faults each, probes every {args.interval * 1000:.0f} ms"
            f" (keepalive 1 s x 2):\n"
        )
        print(summary(rows))


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="faults per mode (default 5)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}"
    )
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between probes")
    parser.add_argument(
        "--probe-timeout", type=float, default=0.25, help="seconds a probe waits at most"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=4.0,
        help="all: seconds the survivor is probed after each fault (longer than the "
        "keepalive's 2-3 s, so that a frozen server is noticed meanwhile)",
    )
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.faults = [f for f in args.faults.split(",") if f]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}: give {', '.join(MODES)}")
    for fault in args.faults:
        if fault not in FAULTS:
            parser.error(f"unknown fault {fault!r}: give {', '.join(FAULTS)}")
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    return args


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
