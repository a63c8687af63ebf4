"""
One tunnel under test for the soak harness, as its own process (so that its RSS, file
descriptors and CPU are the tunnel's alone): rtunnel's library API, one remote forward to
a local target, reconnect and keepalives on.

    python3 benchmarks/_soak_tunnel.py '{"host": ..., "port": ..., ...}'

Writes JSON lines on stdout, each with ``"t"`` (``time.monotonic()``, the same clock in
every process of the machine):

- ``{"event": "ready", "port": P}`` once the forward is up;
- ``{"event": "stats", "tag": ..., ...}`` every ``stats_interval`` seconds (tag null) and
  for every ``stats TAG`` line read on stdin: the fields of
  :class:`rtunnel.TunnelStatistics`;
- ``connected``, ``disconnected`` (with the reason), ``forward`` (state changes),
  ``retry`` (each reconnect attempt scheduled: kind, count, delay) and ``log`` events.

rtunnel is imported from ``PYTHONPATH`` (``soak.py`` points it at the tree under test).
Logs off and exits when stdin closes. Exit status 1 (after a ``failed`` event) when the
first logon or forward fails.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

from twisted.internet import stdio, task
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver
from typing_extensions import override

from rtunnel import (
    Forward,
    PrivateKeyFile,
    ReconnectAttempt,
    ReconnectPolicy,
    ReverseTunnel,
    TunnelObserver,
    TunnelOptions,
)


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    line = json.dumps({"event": event, "t": time.monotonic(), **fields}, default=str)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Events(TunnelObserver):
    @override
    def connected(self) -> None:
        emit("connected")

    @override
    def disconnected(self, reason: Exception | None) -> None:
        emit("disconnected", reason=None if reason is None else str(reason))

    @override
    def forward_state_changed(self, forward: Forward) -> None:
        emit("forward", state=forward.state.value, port=forward.port)

    @override
    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        emit(
            "retry",
            kind=attempt.retry_type,
            count=attempt.retry_count,
            delay=attempt.retry_interval,
            error=str(attempt.error),
        )

    @override
    def log(self, level: int, message: str) -> None:
        emit("log", level=level, message=message)


class _Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, tunnel: ReverseTunnel, done: Deferred[None]) -> None:
        self._tunnel = tunnel
        self._done = done

    @override
    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if words[:1] == ["stats"]:
            report(self._tunnel, words[1] if len(words) > 1 else None)

    @override
    def connectionLost(self, reason: object = None) -> None:
        if not self._done.called:
            self._done.callback(None)


def report(tunnel: ReverseTunnel, tag: str | None) -> None:
    stats = tunnel.statistics()
    emit("stats", tag=tag, **dataclasses.asdict(stats))


async def run(reactor: Any, config: dict[str, Any]) -> None:
    policy = ReconnectPolicy(**config.get("reconnect", {}))
    tunnel = ReverseTunnel(
        reactor,
        config["host"],
        config["port"],
        options=TunnelOptions.create(
            user=config["user"],
            auth=[PrivateKeyFile(config["key"])],
            known_hosts=config["known_hosts"],
            global_known_hosts=[],
            ciphers=[config["cipher"]],
            window_size=config["window_size"],
            max_packet=config["max_packet"],
            rekey_bytes=config["rekey_bytes"],
            keepalive_interval=config["keepalive_interval"],
            keepalive_count_max=config["keepalive_count_max"],
            reconnect=policy,
            local_host=config.get("local_host"),
        ),
    )
    tunnel.add_observer(_Events())
    try:
        await tunnel.logon()
        forward = await tunnel.request_forwarding(
            "127.0.0.1", config["listen_port"], "127.0.0.1", config["target_port"]
        )
    except Exception as e:
        emit("failed", reason=f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None
    emit("ready", port=forward.port)
    done: Deferred[None] = Deferred()
    stdio.StandardIO(_Commands(tunnel, done), reactor=reactor)
    ticker = task.LoopingCall(report, tunnel, None)
    ticker.clock = reactor
    ticker.start(config.get("stats_interval", 1.0))
    await done
    ticker.stop()
    try:
        await tunnel.logoff()
    except Exception as e:
        emit("log", level=1, message=f"logoff: {e}")
    report(tunnel, "final")


def main() -> None:
    config = json.loads(sys.argv[1])
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, config)))  # exits


if __name__ == "__main__":
    main()
