"""
The soak harness: months of a reverse tunnel's life compressed into minutes, against real
OpenSSH ``sshd`` servers it starts itself (RELIABILITY.md section F, issue #12).

    python3 benchmarks/soak.py --short            # a minute or two; in the test command
    python3 benchmarks/soak.py --minutes 60       # the long run
    python3 benchmarks/soak.py --short --json out.json --keep

Six tunnels run at once, each as its own process (``_soak_tunnel.py``: rtunnel's library
API, reconnect and keepalives on) with its own sshd, forwarding to one local target
(``_soak_target.py``):

- ``client-up``, ``client-down``: rtunnel's rekey limit is the small one (sshd's is the
  default), so rtunnel must start every rekey; ``server-up``, ``server-down``: sshd's
  ``RekeyLimit`` is the small one, so sshd must start every one. "up" tunnels carry
  their bulk transfers from the forwarded port to the target, "down" ones back; every
  round each also runs short connections and a batch of concurrent ones (echoes, both ways
  at once). Key exchanges are then due every ``limit`` bytes of the busy direction.
- ``faults``: a steady stream of transfers while its sshd's session is killed
  (``SIGKILL``) or frozen (``SIGSTOP`` until rtunnel's keepalives give up on it); the
  forward must be back within a stated bound each time, the backoff starting again from
  its first step.
- ``idle``: no traffic between a first and a last echo; with keepalives on it must keep
  its one SSH session.

Every transfer is checked by sha256. Each window (``--window`` seconds) samples per tunnel
the throughput each way, RSS, open fds, channels in the table, key exchanges (rtunnel's
count and sshd's log) and reconnects. A table of windows, one of tunnels, one of faults
and a verdict are printed; the exit status is 1 when any check fails. See
``benchmarks/README.md`` ("Soak") for how to read them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(_HERE))

import _load  # noqa: E402
import _soak_load as load  # noqa: E402
from _soak_check import (  # noqa: E402
    Check,
    Failure,
    FaultWindow,
    KexLog,
    count_logons,
    growth,
    rekey_band,
    rekey_check,
    split_failures,
    verdict_lines,
)

from rtunnel.testing._keys import generate_client_key  # noqa: E402
from rtunnel.testing._openssh import OpenSSHServer, find_sshd  # noqa: E402

MIB = 1 << 20
CIPHER = "aes128-gcm@openssh.com"

#: Seconds a reconnect may take beyond its backoff wait: a TCP connect, key exchange,
#: log-on and forward request on a loaded two-core machine (each takes about 0.1 s idle).
RECONNECT_SLACK = 2.5
#: Seconds after a fault's forward is back during which a transfer may still fail by it.
FAULT_GRACE = 2.0
#: RSS may grow this much after the warm-up round (issue #12).
RSS_GROWTH_LIMIT = 16 * MIB
#: The last throughput probe must reach at least this fraction of the first (bytes per
#: second of the tunnel's CPU; see Soak.probe for why not per second of wall time).
THROUGHPUT_RATIO = 0.8

#: The channel window and largest packet the tunnels grant (ReverseTunnel's defaults,
#: passed explicitly so that the in-flight bound below is known).
WINDOW = 2 * MIB
MAX_PACKET = 32 * 1024
#: OpenSSH's window for a forwarded-tcpip channel it opens (channels.h,
#: CHAN_TCP_WINDOW_DEFAULT, 64 packets of 32 KiB).
SSHD_WINDOW = 2 * MIB
#: OpenSSH 9.2 (packet.c, ssh_packet_need_rekeying) adds the next packet's length in bytes
#: (ROUNDUP to the block size) to its count of 16-byte blocks sent, so sshd starts its own
#: rekey up to one 32 KiB packet times 16, 512 KiB, before its RekeyLimit (seen in its
#: log: "rekeying out ... 229656 blocks" with a limit of 262144).
SSHD_EARLY = 16 * (MAX_PACKET + 16)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much the run does."""

    #: Rounds of the same work on the rekey tunnels (the first is the warm-up); 0: as
    #: many as fit in ``minutes``.
    rounds: int
    minutes: float
    #: The small rekey limit (rtunnel's for the client-* tunnels, sshd's for server-*).
    limit: int
    #: Bytes of the bulk transfer per rekey tunnel and round, in the tunnel's direction.
    bulk_bytes: int
    #: Short connections (echo ``short_bytes``) per rekey tunnel and round.
    short: int
    short_bytes: int
    #: Connections at once per rekey tunnel and round, each echoing ``concurrent_bytes``.
    concurrent: int
    concurrent_bytes: int
    #: Idle seconds after each round (keepalives still run).
    pause: float
    #: The faults, injected in turn on the ``faults`` tunnel (repeated in a long run).
    faults: tuple[str, ...]
    #: Seconds the faults tunnel carries traffic after a fault's forward is back, before
    #: the next fault.
    settle: float
    #: Bytes of each upload and download on the faults tunnel.
    fault_bytes: int
    #: Keepalive interval and count (ServerAliveInterval, ServerAliveCountMax).
    keepalive_interval: float
    keepalive_count_max: int
    #: Seconds per sample window.
    window: float
    #: The throughput probe (after the warm-up round and at the end): this many bytes,
    #: ``probe_repeats`` times, one rekey tunnel at a time.
    probe_bytes: int
    probe_repeats: int

    @property
    def detect_bound(self) -> float:
        """A dead server is noticed within K·(N+1)+1 s (RELIABILITY.md)."""
        return self.keepalive_interval * (self.keepalive_count_max + 1) + 1


SHORT = Plan(
    rounds=10,
    minutes=0,
    limit=4 * MIB,
    bulk_bytes=24 * MIB,
    short=120,
    short_bytes=32,
    concurrent=100,
    concurrent_bytes=16 * 1024,
    pause=4.0,
    faults=("kill", "kill", "freeze", "kill", "kill", "freeze"),
    settle=3.0,
    fault_bytes=1 * MIB,
    keepalive_interval=1.0,
    keepalive_count_max=3,
    window=5.0,
    probe_bytes=24 * MIB,
    probe_repeats=8,
)

LONG = Plan(
    rounds=0,
    minutes=60,
    limit=16 * MIB,
    bulk_bytes=256 * MIB,
    short=1000,
    short_bytes=32,
    concurrent=200,
    concurrent_bytes=16 * 1024,
    pause=10.0,
    faults=("kill", "kill", "freeze", "kill", "kill", "kill", "freeze"),
    settle=20.0,
    fault_bytes=4 * MIB,
    keepalive_interval=2.0,
    keepalive_count_max=3,
    window=10.0,
    probe_bytes=64 * MIB,
    probe_repeats=5,
)


@dataclasses.dataclass(frozen=True)
class Role:
    """What one tunnel is for."""

    name: str
    #: "up" (forwarded port -> target) or "down" for the rekey tunnels.
    direction: str | None = None
    #: Whose rekey limit is the small one: "client" or "server".
    limited: str | None = None

    @property
    def rekeys(self) -> bool:
        return self.direction is not None

    def rekey_slack(self, plan: Plan) -> tuple[int, int]:
        """
        How early and how late (bytes) an exchange may come around the limit (see
        _soak_check.rekey_check): the side that starts it sends the busy direction in
        client-down and server-up, and receives it in client-up and server-down, where
        the sender may fill its windows meanwhile: the bulk channel's and every echo's.
        """
        echoes = plan.concurrent * plan.concurrent_bytes
        if self.limited == "client":
            return (0, MAX_PACKET + 1024) if self.direction == "down" else (0, WINDOW + echoes)
        if self.direction == "up":
            return (SSHD_EARLY, MAX_PACKET + 1024)
        return (0, SSHD_WINDOW + echoes)


ROLES = [
    Role("client-up", "up", "client"),
    Role("client-down", "down", "client"),
    Role("server-up", "up", "server"),
    Role("server-down", "down", "server"),
    Role("faults"),
    Role("idle"),
]


class HarnessError(Exception):
    """The harness itself could not run (not a failed check)."""


def free_port() -> int:
    """
    A free port for a forward, below Linux's ephemeral range (32768-60999). A port in it
    may be taken, while the forward is down between sessions, by any process's bind(0)
    (other test runs on this machine start echo servers that way) or be a connecting
    socket's own source port (see _soak_load.SelfConnected); the load would then talk to
    a stranger. One run on the code before issue #12's fixes, with forwards on ports from
    bind(0), reported 62 short echoes on one tunnel as corrupted; none has since.
    """
    for _ in range(1000):
        port = random.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise HarnessError("no free port in 20000-32767 for a forward")


def rss_bytes(pid: int) -> int:
    """Resident set size (``VmRSS``) from ``/proc/PID/status``; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """Open file descriptors (``/proc/PID/fd``); -1 when gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float:
    """
    CPU seconds a process ran, to the nanosecond: the sum over its threads of
    ``/proc/PID/task/TID/schedstat``'s first field (``/proc/PID/stat`` counts 10 ms
    ticks, too coarse for a 16 MiB transfer); 0 when gone.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


class Server:
    """One sshd and its log, read as it grows."""

    def __init__(self, directory: Path, key: Path, extra: list[str]) -> None:
        self.sshd = OpenSSHServer(
            directory,
            authorized_keys=[key.with_name(key.name + ".pub").read_text().strip()],
            # DEBUG1: the KEXINIT lines (see _soak_check.KexLog); the harness default,
            # DEBUG3, costs sshd time on every packet.
            extra_config=["LogLevel DEBUG1", *extra],
        )
        self.kex = KexLog()
        self._offset = 0

    def read_log(self) -> None:
        """Feed what sshd logged since the last call to :attr:`kex`."""
        try:
            with self.sshd.log_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        self.kex.feed(data.decode(errors="replace"))


class Tunnel:
    """One tunnel process (``_soak_tunnel.py``) and what it reported."""

    def __init__(
        self,
        role: Role,
        server: Server,
        config: dict[str, Any],
        workdir: Path,
        rtunnel_src: Path,
    ) -> None:
        self.role = role
        self.name = role.name
        self.server = server
        self.config = config
        self.port: int = config["listen_port"]
        self.tally = load.Tally()
        self.events: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        #: session number -> the most (rekeys by us, rekeys by the server) seen in it:
        #: statistics() counts those for the current session only.
        self._events_file = (workdir / f"{role.name}.events.jsonl").open("w")
        self._tagged: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._stderr = (workdir / f"{role.name}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(_HERE / "_soak_tunnel.py"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": str(rtunnel_src)},
        )
        self.pid = self.process.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._tag = 0
        self._write_lock = threading.Lock()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message["event"] != "stats" or message.get("tag") is None:
                self._events_file.write(line)
            with self._cond:
                if message["event"] == "stats":
                    self.latest = message
                    if message.get("tag"):
                        self._tagged[message["tag"]] = message
                else:
                    self.events.append(message)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event["event"] == "ready":
                        return
                    if event["event"] == "failed":
                        raise HarnessError(f"{self.name}: {event['reason']}")
                if self.process.poll() is not None:
                    raise HarnessError(
                        f"{self.name} exited ({self.process.returncode}) before its forward "
                        f"was up; see {self._stderr.name}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{self.name}: forward not up after {timeout} s")
                self._cond.wait(min(left, 0.5))

    def stats(self, timeout: float = 15.0) -> dict[str, Any]:
        """A fresh :class:`rtunnel.TunnelStatistics` from the tunnel, as a dict."""
        assert self.process.stdin is not None
        try:
            with self._write_lock:
                self._tag += 1
                tag = f"q{self._tag}"
                self.process.stdin.write(f"stats {tag}\n")
                self.process.stdin.flush()
        except (OSError, ValueError):  # closed
            return dict(self.latest)
        deadline = time.monotonic() + timeout
        with self._cond:
            while tag not in self._tagged:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    return dict(self.latest)  # a busy or dead tunnel: the last report
                self._cond.wait(min(left, 0.5))
            return self._tagged.pop(tag)

    def events_since(self, t: float, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["t"] >= t and e["event"] == kind]

    def wait_event(self, t: float, kind: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e["t"] >= t and e["event"] == kind]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def stop(self) -> dict[str, Any]:
        """Close stdin (the tunnel logs off and exits); the final statistics."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                with self._write_lock:
                    self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        self._stderr.close()
        self._events_file.close()
        with self._cond:
            return dict(self.latest)

    def rekeys(self) -> tuple[int, int]:
        """Rekeys started by rtunnel and by the server over all sessions, as the last
        report counted them."""
        with self._cond:
            latest = self.latest or {}
            return (
                int(latest.get("total_rekeys_by_us", 0)),
                int(latest.get("total_rekeys_by_server", 0)),
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclasses.dataclass
class Outage:
    """One injected fault on the faults tunnel, and how the tunnel came back."""

    kind: str
    at: float
    bound: float
    detected_after: float | None = None
    back_after: float | None = None
    first_retry: int | None = None
    retries: list[float] = dataclasses.field(default_factory=list)
    sessions_before: int = 0


class Soak:
    """One run."""

    def __init__(
        self, plan: Plan, workdir: Path, log: Callable[[str], None], rtunnel_src: Path
    ) -> None:
        self.plan = plan
        self.rtunnel_src = rtunnel_src
        self.workdir = workdir
        self.log = log
        self.tunnels: dict[str, Tunnel] = {}
        self.servers: dict[str, Server] = {}
        self.target: subprocess.Popen[str] | None = None
        self.failures: list[Failure] = []
        self.fault_transfers = {"total": 0, "retried": 0, "incomplete": 0}
        self.outages: list[Outage] = []
        self.windows: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.baseline: dict[str, dict[str, int]] = {}
        self.round_rss: dict[str, list[int]] = {}
        self.idle_stretch: tuple[float, float] | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop_faults = threading.Event()
        self._stop_sampling = threading.Event()
        self._fault_load_ran = threading.Event()
        # Set while the faults tunnel's load may run; _fault_load_waiting while it waits.
        self._fault_gate = threading.Event()
        self._fault_gate.set()
        self._fault_load_waiting = threading.Event()
        #: label -> tunnel -> {"bytes", "wall", "cpu"} summed over the probe's runs.
        self.probes: dict[str, dict[str, dict[str, float]]] = {}
        self.notes: list[str] = []

    # -- setup -----------------------------------------------------------------------

    def start(self) -> None:
        key = generate_client_key("ed25519", self.workdir / "client")
        self.target = subprocess.Popen(
            [sys.executable, str(_HERE / "_soak_target.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.target.stdout is not None
        target_port = int(self.target.stdout.readline())
        plan = self.plan
        for role in ROLES:
            extra = []
            if role.limited == "server":
                extra.append(f"RekeyLimit {plan.limit}")
            server = Server(self.workdir / f"sshd-{role.name}", key, extra)
            server.sshd.start()
            self.servers[role.name] = server
        for role in ROLES:
            sshd = self.servers[role.name].sshd
            config = {
                "host": sshd.host,
                "port": sshd.port,
                "user": sshd.user,
                "key": str(key),
                "known_hosts": str(sshd.known_hosts_path),
                "cipher": CIPHER,
                # 0: no volume limit of rtunnel's own (the cipher's RFC 4344 one is 64 GiB).
                "rekey_bytes": plan.limit if role.limited == "client" else 0,
                "window_size": WINDOW,
                "max_packet": MAX_PACKET,
                "keepalive_interval": plan.keepalive_interval,
                "keepalive_count_max": plan.keepalive_count_max,
                "listen_port": free_port(),
                "target_port": target_port,
                "stats_interval": 1.0,
            }
            self.tunnels[role.name] = Tunnel(
                role, self.servers[role.name], config, self.workdir, self.rtunnel_src
            )
        for tunnel in self.tunnels.values():
            tunnel.wait_ready()
        # One echo through each forward: it works, and the idle stretch starts here.
        for tunnel in self.tunnels.values():
            load.echo(tunnel.port, 64, tunnel.tally)
        self.idle_stretch = (time.monotonic(), 0.0)
        time.sleep(1.0)
        for name, tunnel in self.tunnels.items():
            self.baseline[name] = {"fds": fd_count(tunnel.pid)}
            self.round_rss[name] = []
        self.log(
            "tunnels up: "
            + ", ".join(
                f"{t.name} (pid {t.pid}, sshd {t.server.sshd.port}, port {t.port})"
                for t in self.tunnels.values()
            )
        )

    def stop(self) -> dict[str, dict[str, Any]]:
        finals = {}
        for name, tunnel in self.tunnels.items():
            finals[name] = tunnel.stop()
        for server in self.servers.values():
            server.sshd.stop()
        if self.target is not None and self.target.poll() is None:
            assert self.target.stdin is not None
            self.target.stdin.close()
            try:
                self.target.wait(10)
            except subprocess.TimeoutExpired:
                self.target.kill()
        return finals

    def abort(self) -> None:
        """After an error: end every process we started."""
        for tunnel in self.tunnels.values():
            tunnel.kill()
        for server in self.servers.values():
            server.sshd.stop()
        if self.target is not None and self.target.poll() is None:
            self.target.kill()

    # -- load ------------------------------------------------------------------------

    def _record(self, tunnel: str, kind: str, start: float, error: Exception) -> None:
        corrupted = isinstance(error, load.Corrupted)
        text = f"{type(error).__name__}: {error}"
        with self._lock:
            self.failures.append(Failure(tunnel, kind, start, time.monotonic(), text, corrupted))

    def _guarded(self, tunnel: Tunnel, kind: str, run: Callable[[], object]) -> bool:
        start = time.monotonic()
        try:
            run()
        except Exception as e:  # OSError, BenchmarkError, EOFError, TimeoutError, ...
            self._record(tunnel.name, kind, start, e)
            return False
        return True

    def _round_work(self, tunnel: Tunnel, result: dict[str, Any]) -> None:
        plan = self.plan
        port = tunnel.port

        def bulk() -> None:
            move = load.upload if tunnel.role.direction == "up" else load.download
            start = time.perf_counter()
            if self._guarded(tunnel, "bulk", lambda: move(port, plan.bulk_bytes, tunnel.tally)):
                result["bulk_s"] = time.perf_counter() - start

        def short() -> None:
            for _ in range(plan.short):
                self._guarded(
                    tunnel, "short", lambda: load.echo(port, plan.short_bytes, tunnel.tally)
                )

        def concurrent() -> None:
            self._guarded(
                tunnel,
                "concurrent",
                lambda: load.concurrent_echoes(
                    port, plan.concurrent, plan.concurrent_bytes, tunnel.tally
                ),
            )

        threads = [threading.Thread(target=f, daemon=True) for f in (bulk, short, concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def one_round(self, number: int) -> None:
        """The same work on every rekey tunnel at once: bulk, short and concurrent."""
        plan = self.plan
        rekey_tunnels = [t for t in self.tunnels.values() if t.role.rekeys]
        results: dict[str, dict[str, Any]] = {t.name: {} for t in rekey_tunnels}
        start = time.monotonic()
        before = {t.name: t.stats() for t in rekey_tunnels}
        threads = [
            threading.Thread(target=self._round_work, args=(t, results[t.name]), daemon=True)
            for t in rekey_tunnels
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = {t.name: t.stats() for t in rekey_tunnels}
        row: dict[str, Any] = {"round": number, "start": start, "end": time.monotonic()}
        for t in rekey_tunnels:
            res = results[t.name]
            kex = after[t.name]["total_key_exchanges"] - before[t.name]["total_key_exchanges"]
            row[t.name] = {
                "bulk_mbps": plan.bulk_bytes / res["bulk_s"] / 1e6 if "bulk_s" in res else None,
                "key_exchanges": kex,
            }
        for name, tunnel in self.tunnels.items():
            self.round_rss[name].append(rss_bytes(tunnel.pid))
        self.rounds.append(row)
        self.log(
            f"round {number}: {row['end'] - start:.1f} s; bulk MB/s and key exchanges: "
            + ", ".join(
                f"{t.name} {_fmt(row[t.name]['bulk_mbps'])}/{row[t.name]['key_exchanges']}"
                for t in rekey_tunnels
            )
        )

    def probe(self, label: str) -> None:
        """
        Throughput, the same work at the start and at the end: each rekey tunnel in turn
        moves ``probe_bytes`` in its direction ``probe_repeats`` times, with the faults
        tunnel's load held back. Both the wall time and the tunnel's CPU time are kept.
        The check uses bytes per CPU second: on this shared two-core machine two
        identical tunnels measured in turn differed by up to 1.9x in wall-clock MB/s,
        but by at most 1.15x in MB per CPU second (5 x 32 MiB each way, six tries).
        """
        plan = self.plan
        self._fault_gate.clear()
        self._fault_load_waiting.wait(60)
        result: dict[str, dict[str, float]] = {}
        try:
            for tunnel in self.tunnels.values():
                if not tunnel.role.rekeys:
                    continue
                move = load.upload if tunnel.role.direction == "up" else load.download
                sums = {"bytes": 0.0, "wall": 0.0, "cpu": 0.0}
                for _ in range(plan.probe_repeats):
                    run = functools.partial(move, tunnel.port, plan.probe_bytes, tunnel.tally)
                    cpu = cpu_seconds(tunnel.pid)
                    start = time.perf_counter()
                    if self._guarded(tunnel, "probe", run):
                        sums["wall"] += time.perf_counter() - start
                        sums["cpu"] += cpu_seconds(tunnel.pid) - cpu
                        sums["bytes"] += plan.probe_bytes
                result[tunnel.name] = sums
        finally:
            self._fault_gate.set()
        self.probes[label] = result
        self.log(
            f"throughput probe ({label}), MB/s of wall time / of tunnel CPU: "
            + ", ".join(
                f"{name} {_rate(r, 'wall')}/{_rate(r, 'cpu')}" for name, r in result.items()
            )
        )

    # -- faults ----------------------------------------------------------------------

    def fault_load(self) -> None:
        """Transfers through the faults tunnel until told to stop; each retried until it
        completes (a fault may cut it; split_failures() decides whether one did)."""
        tunnel = self.tunnels["faults"]
        plan = self.plan
        port = tunnel.port
        cycle: list[tuple[str, Callable[[], object]]] = [
            ("upload", lambda: load.upload(port, plan.fault_bytes, timeout=30)),
            ("download", lambda: load.download(port, plan.fault_bytes, timeout=30)),
            ("echo", lambda: load.short_connections(port, 10, 64)),
        ]
        try:
            self._fault_load_loop(tunnel, cycle)
        finally:
            self._fault_load_waiting.set()  # a probe need not wait for it any more

    def _fault_load_loop(
        self, tunnel: Tunnel, cycle: list[tuple[str, Callable[[], object]]]
    ) -> None:
        i = 0
        while not self._stop_faults.is_set():
            if not self._fault_gate.is_set():
                self._fault_load_waiting.set()
                self._fault_gate.wait()
                self._fault_load_waiting.clear()
                continue
            kind, run = cycle[i % len(cycle)]
            i += 1
            with self._lock:
                self.fault_transfers["total"] += 1
            attempts = 0
            while True:
                attempts += 1
                if self._guarded(tunnel, kind, run):
                    self._fault_load_ran.set()
                    break
                if self._stop_faults.is_set():
                    with self._lock:
                        self.fault_transfers["incomplete"] += 1
                    break
                time.sleep(0.1)
            if attempts > 1:
                with self._lock:
                    self.fault_transfers["retried"] += 1
            time.sleep(0.05)

    def _forward_back(self, tunnel: Tunnel, sessions_before: int, cap: float) -> float | None:
        """Probe the forward until an echo works through a new session; when, or None."""
        deadline = time.monotonic() + cap
        while time.monotonic() < deadline:
            try:
                _load.echo_once(tunnel.port, timeout=1.0)
            except (OSError, _load.BenchmarkError):
                time.sleep(0.05)
                continue
            stats = tunnel.stats()
            if stats.get("sessions", 0) > sessions_before:
                return time.monotonic()
            time.sleep(0.05)
        return None

    def inject_faults(self, deadline: float | None) -> None:
        plan = self.plan
        tunnel = self.tunnels["faults"]
        server = self.servers["faults"].sshd
        initial = 1.0 * 1.2  # ReconnectPolicy defaults: initial_delay 1 s, jitter 0.2
        bounds = {
            # The first retry, then a log-on.
            "kill": initial + RECONNECT_SLACK,
            # Keepalives give up, the first retry, a log-on, and at most one retry of the
            # forward while the thawed session lets go of the port.
            "freeze": plan.detect_bound + 2 * initial + RECONNECT_SLACK,
        }
        index = 0
        while not self._stop_faults.is_set():
            if plan.rounds and index >= len(plan.faults):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            kind = plan.faults[index % len(plan.faults)]
            index += 1
            # Traffic through the current session first: a reconnect that carried traffic.
            self._fault_load_ran.clear()
            time.sleep(plan.settle)
            if not self._fault_load_ran.wait(30):
                self.notes.append(f"fault {index}: no traffic got through before it")
            sessions_before = tunnel.stats().get("sessions", 0)
            outage = Outage(kind, time.monotonic(), bounds[kind], sessions_before=sessions_before)
            self.outages.append(outage)
            if kind == "kill":
                server.kill_sessions()
                lost = tunnel.wait_event(outage.at, "disconnected", plan.detect_bound)
            else:
                frozen = server.freeze_sessions()
                lost = tunnel.wait_event(outage.at, "disconnected", plan.detect_bound + 1)
                # As a server that comes back: the stale session sees its client gone,
                # exits and lets go of the forwarded port.
                for pid in frozen:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
            if lost is not None:
                outage.detected_after = lost["t"] - outage.at
            # A backoff past its cap (60 s, plus jitter) is as good as never; an unnoticed
            # freeze never brings a new session.
            back = self._forward_back(tunnel, sessions_before, cap=80.0 if lost else 10.0)
            if back is not None:
                outage.back_after = back - outage.at
            retries = [
                e
                for e in tunnel.events_since(outage.at, "retry")
                if e["kind"] == "ssh" and (back is None or e["t"] <= back)
            ]
            outage.retries = [round(e["delay"], 2) for e in retries]
            outage.first_retry = retries[0]["count"] if retries else None
            self.log(
                f"fault {index} ({kind}): noticed after {_fmt(outage.detected_after)} s, "
                f"forward back after {_fmt(outage.back_after)} s (bound {outage.bound:.1f} s), "
                f"retries {outage.retries} starting at #{outage.first_retry}"
            )
            if back is None:
                self.notes.append(f"fault {index}: the forward did not come back; faults stop")
                break

    # -- sampling --------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        row: dict[str, Any] = {"t": round(now - self.started, 1), "tunnels": {}}
        for name, tunnel in self.tunnels.items():
            stats = tunnel.stats()
            server = self.servers[name]
            server.read_log()
            row["tunnels"][name] = {
                "bytes_up": stats.get("bytes_received", 0),
                "bytes_down": stats.get("bytes_sent", 0),
                "key_exchanges": stats.get("total_key_exchanges", 0),
                "sshd_key_exchanges": server.kex.initial + server.kex.rekeys,
                "sessions": stats.get("sessions", 0),
                "channels": stats.get("channels_open", 0),
                "rss": rss_bytes(tunnel.pid),
                "fds": fd_count(tunnel.pid),
                "cpu": cpu_seconds(tunnel.pid),
            }
        row["mono"] = now
        return row

    def sampler(self) -> None:
        previous = self.sample()
        while not self._stop_sampling.wait(self.plan.window):
            current = self.sample()
            self.windows.append(_window(previous, current))
            previous = current

    # -- the run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """
        Warm-up round, first probe, then rounds while the faults are injected, last
        probe, and a quiet end.
        """
        plan = self.plan
        deadline = self.started + plan.minutes * 60 if plan.minutes and not plan.rounds else None
        sampler = threading.Thread(target=self.sampler, daemon=True)
        sampler.start()
        fault_load = threading.Thread(target=self.fault_load, daemon=True)
        fault_load.start()
        self.one_round(1)
        time.sleep(plan.pause)
        self.probe("first")
        injector = threading.Thread(target=self.inject_faults, args=(deadline,), daemon=True)
        injector.start()
        number = 1
        while True:
            number += 1
            if plan.rounds and number > plan.rounds:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.one_round(number)
            time.sleep(plan.pause)
        injector.join()
        self._stop_faults.set()
        self._fault_gate.set()
        fault_load.join(60)
        self.probe("last")
        # Quiet: every channel closes, fds and the table go back to where they started.
        settled = self._settle()
        idle = self.tunnels["idle"]
        idle_stats = idle.stats()
        assert self.idle_stretch is not None
        self.idle_stretch = (self.idle_stretch[0], time.monotonic())
        self._guarded(idle, "echo", lambda: load.echo(idle.port, 64, idle.tally))
        self._stop_sampling.set()
        sampler.join(30)
        for name, tunnel in self.tunnels.items():
            self.round_rss[name].append(rss_bytes(tunnel.pid))
        end_stats = {name: t.stats() for name, t in self.tunnels.items()}
        finals = self.stop()
        for server in self.servers.values():
            server.read_log()
        return {
            "settled": settled,
            "end_stats": end_stats,
            "finals": finals,
            "idle_stats": idle_stats,
        }

    def _settle(self, timeout: float = 20.0) -> dict[str, dict[str, int]]:
        deadline = time.monotonic() + timeout
        while True:
            state = {
                name: {
                    "fds": fd_count(t.pid),
                    "channels": t.stats().get("channels_open", -1),
                }
                for name, t in self.tunnels.items()
            }
            done = all(
                s["channels"] == 0 and s["fds"] == self.baseline[name]["fds"]
                for name, s in state.items()
            )
            if done or time.monotonic() >= deadline:
                return state
            time.sleep(0.5)


def _window(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    seconds = max(1e-6, b["mono"] - a["mono"])
    out: dict[str, Any] = {"t": b["t"], "seconds": round(seconds, 2), "tunnels": {}}
    for name, cur in b["tunnels"].items():
        prev = a["tunnels"][name]
        out["tunnels"][name] = {
            "up_mbps": (cur["bytes_up"] - prev["bytes_up"]) / seconds / 1e6,
            "down_mbps": (cur["bytes_down"] - prev["bytes_down"]) / seconds / 1e6,
            "key_exchanges": cur["key_exchanges"] - prev["key_exchanges"],
            "sshd_key_exchanges": cur["sshd_key_exchanges"] - prev["sshd_key_exchanges"],
            "reconnects": cur["sessions"] - prev["sessions"],
            "channels": cur["channels"],
            "rss_mib": cur["rss"] / MIB,
            "fds": cur["fds"],
            "cpu_pct": 100 * (cur["cpu"] - prev["cpu"]) / seconds,
        }
    return out


def _rate(sums: dict[str, float], per: str) -> str:
    return _fmt(sums["bytes"] / sums[per] / 1e6 if sums.get(per) else None, 0)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- the verdict ---------------------------------------------------------------------


probe_keys = ("bytes", "wall", "cpu")


def evaluate(soak: Soak, result: dict[str, Any]) -> tuple[list[Check], dict[str, Any]]:
    """Every check, and the per-tunnel summary."""
    plan = soak.plan
    checks: list[Check] = []
    tunnels: dict[str, Any] = {}
    end_stats = result["end_stats"]

    windows = [
        FaultWindow(o.at, o.at + (o.back_after if o.back_after is not None else 1e9) + FAULT_GRACE)
        for o in soak.outages
    ]
    split = split_failures(soak.failures, windows)
    on_faults = [f for f in split.cut if f.tunnel == "faults"]
    cut_elsewhere = [f for f in split.cut if f.tunnel != "faults"]
    lost = split.lost + cut_elsewhere  # only the faults tunnel has faults
    checks.append(
        Check(
            "zero bytes lost or corrupted",
            not lost and not split.corrupted,
            f"{len(lost)} transfers failed outside a fault, {len(split.corrupted)} "
            f"corrupted, {len(on_faults)} attempts cut by a fault (retried)"
            + "".join(f"; {f.tunnel} {f.kind}: {f.error}" for f in (lost + split.corrupted)[:5]),
        )
    )
    checks.append(
        Check(
            "every transfer completes",
            soak.fault_transfers["incomplete"] == 0 and not lost,
            f"{len(lost)} failed without a fault; faults tunnel: "
            f"{soak.fault_transfers['total']} transfers, "
            f"{soak.fault_transfers['retried']} retried after a cut, "
            f"{soak.fault_transfers['incomplete']} never completed",
        )
    )

    for name, tunnel in soak.tunnels.items():
        role = tunnel.role
        stats = end_stats.get(name) or {}
        server = soak.servers[name]
        sessions = stats.get("sessions", 0)
        by_us, by_server = tunnel.rekeys()
        info: dict[str, Any] = {
            "sessions": sessions,
            "logons_in_sshd_log": count_logons(server.sshd.log_text()),
            "total_key_exchanges": stats.get("total_key_exchanges"),
            # Each session's first exchange is not a rekey.
            "rekeys": stats.get("total_key_exchanges", 0) - sessions,
            "rekeys_by_us": by_us,
            "rekeys_by_server": by_server,
            "sshd_initial_key_exchanges": server.kex.initial,
            "sshd_rekeys_by_client": server.kex.by_client,
            "sshd_rekeys_by_server": server.kex.by_server,
            "bytes_up": stats.get("bytes_received"),
            "bytes_down": stats.get("bytes_sent"),
            "load_written": tunnel.tally.written,
            "load_read": tunnel.tally.read,
            "transfers": tunnel.tally.transfers,
            "keepalives_sent": stats.get("keepalives_sent"),
            "fds_baseline": soak.baseline[name]["fds"],
            "fds_end": result["settled"][name]["fds"],
            "channels_end": result["settled"][name]["channels"],
            "rss_baseline_mib": None,
            "rss_growth_mib": None,
        }
        tunnels[name] = info
        if role.rekeys:
            assert role.limited is not None and role.direction is not None
            nbytes = stats.get("bytes_received" if role.direction == "up" else "bytes_sent", 0)
            early, late = role.rekey_slack(plan)
            nominal, low, high = rekey_band(nbytes, plan.limit, early, late)
            info["expected_rekeys"] = nominal
            info["allowed_rekeys"] = [low, high]
            checks += rekey_check(
                name,
                role.limited,
                role.direction,
                nbytes,
                plan.limit,
                info["rekeys"],
                (by_us, by_server),
                (server.kex.by_client, server.kex.by_server),
                early,
                late,
            )
            checks.append(
                Check(
                    f"{name}: rtunnel and sshd count the same key exchanges",
                    abs(info["rekeys"] - server.kex.rekeys) <= 1 and server.kex.initial == sessions,
                    f"rtunnel {info['rekeys']} rekeys and {sessions} sessions, sshd "
                    f"{server.kex.rekeys} rekeys and {server.kex.initial} first exchanges",
                )
            )
        if name != "faults":
            checks.append(
                Check(
                    f"{name}: one SSH session all along",
                    stats.get("sessions") == 1 and info["logons_in_sshd_log"] == 1,
                    f"{stats.get('sessions')} sessions by rtunnel's count, "
                    f"{info['logons_in_sshd_log']} log-ons in sshd's log",
                )
            )
            failed = sum(f.tunnel == name for f in soak.failures)
            # A failed transfer leaves bytes the load did not count: no comparison then
            # (the failure fails the run already).
            if not failed:
                checks.append(
                    Check(
                        f"{name}: tunnel's byte counts = the load's",
                        stats.get("bytes_received") == tunnel.tally.written
                        and stats.get("bytes_sent") == tunnel.tally.read,
                        f"received {stats.get('bytes_received')} of {tunnel.tally.written} "
                        f"written, sent {stats.get('bytes_sent')} of {tunnel.tally.read} read",
                    )
                )
        rss = soak.round_rss[name]
        if len(rss) >= 2:
            grew = growth(rss[0], rss[1:])
            info["rss_baseline_mib"] = rss[0] / MIB
            info["rss_growth_mib"] = grew / MIB
            checks.append(
                Check(
                    f"{name}: RSS growth after warm-up < {RSS_GROWTH_LIMIT // MIB} MiB",
                    grew < RSS_GROWTH_LIMIT,
                    f"{rss[0] / MIB:.1f} MiB after round 1, at most {max(rss[1:]) / MIB:.1f} "
                    f"MiB later",
                )
            )
        checks.append(
            Check(
                f"{name}: fds and channel table back to baseline",
                info["fds_end"] == info["fds_baseline"] and info["channels_end"] == 0,
                f"fds {info['fds_baseline']} -> {info['fds_end']}, channels {info['channels_end']}"
                # Between sessions the SSH socket is missing from the count.
                + ("" if stats.get("connected") else "; not connected at the end"),
            )
        )

    # Same work, at the start and at the end, per direction (both tunnels of it).
    first, last = soak.probes.get("first", {}), soak.probes.get("last", {})
    for direction in ("up", "down"):
        names = [r.name for r in ROLES if r.direction == direction]
        rates: dict[str, dict[str, float | None]] = {}
        for label, probe in (("first", first), ("last", last)):
            total = {k: sum(probe.get(n, {}).get(k, 0.0) for n in names) for k in probe_keys}
            rates[label] = {
                per: total["bytes"] / total[per] / 1e6 if total[per] else None
                for per in ("cpu", "wall")
            }
        a, b = rates["first"]["cpu"], rates["last"]["cpu"]
        wa, wb = rates["first"]["wall"], rates["last"]["wall"]
        checks.append(
            Check(
                f"throughput {direction}, end >= {THROUGHPUT_RATIO} x start "
                "(MB per tunnel CPU second)",
                a is not None and b is not None and b >= THROUGHPUT_RATIO * a,
                f"{_fmt(a, 0)} -> {_fmt(b, 0)}"
                + (f" ({b / a:.2f}x)" if a and b is not None else "")
                + f"; wall-clock {_fmt(wa, 0)} -> {_fmt(wb, 0)} MB/s"
                + (f" ({wb / wa:.2f}x)" if wa and wb is not None else "")
                + f"; {' + '.join(names)}, {plan.probe_repeats} x "
                f"{plan.probe_bytes // MIB} MiB each",
            )
        )

    # The idle tunnel.
    idle = soak.tunnels["idle"]
    if soak.idle_stretch is not None:
        start, end = soak.idle_stretch
        stretch = end - start
        sent = (result.get("idle_stats") or {}).get("keepalives_sent", 0)
        low = 0.5 * stretch / plan.keepalive_interval
        high = stretch / plan.keepalive_interval + 2
        tunnels["idle"]["idle_seconds"] = stretch
        checks.append(
            Check(
                "idle: keepalives sent through the idle stretch",
                low <= sent <= high,
                f"{sent} in {stretch:.0f} s at {plan.keepalive_interval:g} s, expected "
                f"{low:.0f}-{high:.0f} on the one session",
            )
        )
    del idle

    # Faults.
    planned = len(plan.faults) if plan.rounds else None
    if planned is not None:
        checks.append(
            Check(
                "faults: all injected",
                len(soak.outages) == planned,
                f"{len(soak.outages)} of {planned}",
            )
        )
    for i, o in enumerate(soak.outages, 1):
        ok = o.back_after is not None and o.back_after <= o.bound
        detail = f"back after {_fmt(o.back_after)} s, bound {o.bound:.1f} s; waits {o.retries}"
        checks.append(Check(f"fault {i} ({o.kind}): forward back within bound", ok, detail))
        checks.append(
            Check(
                f"fault {i} ({o.kind}): backoff starts at its first step",
                o.first_retry == 1,
                f"first retry #{o.first_retry}",
            )
        )
        if o.kind == "freeze":
            checks.append(
                Check(
                    f"fault {i} (freeze): noticed within K*(N+1)+1 = {plan.detect_bound:g} s",
                    o.detected_after is not None and o.detected_after <= plan.detect_bound,
                    f"after {_fmt(o.detected_after)} s",
                )
            )
    return checks, tunnels


# -- output ----------------------------------------------------------------------------

SHORT_NAMES = {
    "client-up": "cu",
    "client-down": "cd",
    "server-up": "su",
    "server-down": "sd",
    "faults": "f",
    "idle": "i",
}


def window_table(windows: list[dict[str, Any]]) -> str:
    """One row per window: totals over tunnels, then RSS and fds per tunnel."""
    names = list(SHORT_NAMES)
    head = (
        "|  t s | up MB/s | down MB/s | kex rt/sshd | reconn | chans | "
        + " | ".join(f"{SHORT_NAMES[n]} MiB/fds" for n in names)
        + " |"
    )
    lines = [head, "|" + "---|" * (6 + len(names))]
    for w in windows:
        ts = w["tunnels"]
        up = sum(t["up_mbps"] for t in ts.values())
        down = sum(t["down_mbps"] for t in ts.values())
        kex = sum(t["key_exchanges"] for t in ts.values())
        skex = sum(t["sshd_key_exchanges"] for t in ts.values())
        rec = sum(t["reconnects"] for t in ts.values())
        ch = sum(t["channels"] for t in ts.values())
        cells = [f"{ts[n]['rss_mib']:.1f}/{ts[n]['fds']}" for n in names if n in ts]
        lines.append(
            f"| {w['t']:4.0f} | {up:7.1f} | {down:9.1f} | {kex:5d}/{skex:<5d} | {rec:6d} | "
            f"{ch:5d} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def tunnel_table(tunnels: dict[str, Any]) -> str:
    lines = [
        "| tunnel | sessions | rekeys rt us/srv | rekeys sshd cl/srv | bytes/limit (allowed) | "
        "MiB up/down | RSS MiB r1 +growth | fds | chans |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in tunnels.items():
        expected = t.get("expected_rekeys")
        allowed = t.get("allowed_rekeys")
        band = f"{_fmt(expected)} ({allowed[0]:.0f}-{allowed[1]:.0f})" if allowed else "-"
        lines.append(
            f"| {name} | {t['sessions']} | {t['rekeys_by_us']}/{t['rekeys_by_server']} | "
            f"{t['sshd_rekeys_by_client']}/{t['sshd_rekeys_by_server']} | "
            f"{band} | {(t['bytes_up'] or 0) / MIB:.0f}/"
            f"{(t['bytes_down'] or 0) / MIB:.0f} | "
            f"{_fmt(t['rss_baseline_mib'])} +{_fmt(t['rss_growth_mib'])} | "
            f"{t['fds_baseline']}->{t['fds_end']} | {t['channels_end']} |"
        )
    return "\n".join(lines)


def fault_table(outages: list[Outage]) -> str:
    lines = [
        "| # | fault | noticed after s | forward back after s | bound s | backoff waits s |",
        "|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outages, 1):
        lines.append(
            f"| {i} | {o.kind} | {_fmt(o.detected_after)} | {_fmt(o.back_after)} | "
            f"{o.bound:.1f} | {', '.join(f'{d:g}' for d in o.retries) or '-'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The soak harness: rtunnel against real OpenSSH sshds, months in minutes."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--short", action="store_true", help="a minute or two (the test command runs it)"
    )
    mode.add_argument(
        "--minutes", type=float, help="the long mode: run this long (60 or more for the record)"
    )
    parser.add_argument("--rekey-mib", type=int, help="the small rekey limit, MiB (4-32)")
    parser.add_argument("--window", type=float, help="seconds per sample window")
    parser.add_argument(
        "--rtunnel-src",
        type=Path,
        default=_HERE.parent,
        help="the source tree the tunnels run rtunnel from (default: this checkout)",
    )
    parser.add_argument("--json", type=Path, help="write the machine-readable summary here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if not args.short and args.minutes is None:
        parser.error("give --short or --minutes N")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.rekey_mib is not None and not 1 <= args.rekey_mib <= 1024:
        parser.error("--rekey-mib must be 1-1024")
    return args


def plan_from(args: argparse.Namespace) -> Plan:
    plan = SHORT if args.short else dataclasses.replace(LONG, minutes=args.minutes)
    if args.rekey_mib:
        plan = dataclasses.replace(plan, limit=args.rekey_mib * MIB)
    if args.window:
        plan = dataclasses.replace(plan, window=args.window)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = plan_from(args)
    if find_sshd() is None:
        print("OpenSSH's sshd is needed: apt-get install openssh-server", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="rtunnel-soak-"))

    def log(message: str) -> None:
        print(f"[{time.monotonic() - soak.started:6.1f}] {message}", file=sys.stderr, flush=True)

    soak = Soak(plan, workdir, log, args.rtunnel_src.resolve())
    mode = "short" if args.short else f"long ({plan.minutes:g} min)"
    log(f"soak {mode}: work directory {workdir}")
    try:
        soak.start()
        result = soak.run()
    except BaseException:
        soak.abort()
        print(f"the harness failed; logs are in {workdir}", file=sys.stderr)
        raise
    checks, tunnels = evaluate(soak, result)
    ok = all(c.ok for c in checks)
    duration = time.monotonic() - soak.started

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"\nrtunnel soak, {mode}: {when}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {_openssh_version()}, cipher {CIPHER}, "
        f"rekey limit {plan.limit // MIB} MiB, {len(soak.rounds)} rounds, "
        f"{duration:.0f} s\n"
    )
    print(f"Windows of {plan.window:g} s (all tunnels; RSS/fds per tunnel):\n")
    print(window_table(soak.windows))
    print("\nRounds (bulk MB/s / key exchanges per rekey tunnel):\n")
    names = [r.name for r in ROLES if r.rekeys]
    for row in soak.rounds:
        print(
            f"  round {row['round']} ({row['end'] - row['start']:.1f} s): "
            + ", ".join(
                f"{n} {_fmt(row[n]['bulk_mbps'])}/{row[n]['key_exchanges']}"
                for n in names
                if n in row
            )
        )
    print(
        f"\nThroughput probes ({plan.probe_repeats} x {plan.probe_bytes // MIB} MiB per "
        "tunnel, one at a time; MB per second of wall time / of the tunnel's CPU):\n"
    )
    for label, probe in soak.probes.items():
        print(
            f"  {label}: "
            + ", ".join(f"{n} {_rate(r, 'wall')}/{_rate(r, 'cpu')}" for n, r in probe.items())
        )
    print("\nTunnels:\n")
    print(tunnel_table(tunnels))
    print("\nFaults (on the faults tunnel):\n")
    print(fault_table(soak.outages))
    for note in soak.notes:
        print(f"\nnote: {note}")
    print("\n" + "\n".join(verdict_lines(checks)))
    failed = [c.name for c in checks if not c.ok]
    print(f"\n{'PASS' if ok else 'FAIL'}: {len(checks) - len(failed)} of {len(checks)} checks")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": when,
                    "mode": "short" if args.short else "long",
                    "ok": ok,
                    "duration_s": duration,
                    "plan": dataclasses.asdict(plan),
                    "checks": [dataclasses.asdict(c) for c in checks],
                    "failed": failed,
                    "tunnels": tunnels,
                    "rounds": soak.rounds,
                    "windows": soak.windows,
                    "faults": [dataclasses.asdict(o) for o in soak.outages],
                    "fault_transfers": soak.fault_transfers,
                    "failures": [dataclasses.asdict(f) for f in soak.failures],
                    "notes": soak.notes,
                },
                indent=2,
                default=str,
            )
        )
    if args.keep:
        print(f"\nlogs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def _openssh_version() -> str:
    result = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().split(",")[0]


if __name__ == "__main__":
    sys.exit(main())
