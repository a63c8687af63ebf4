"""
rtunnel side by side with OpenSSH's ``ssh -N -R`` (and asyncssh, when installed), through
one private OpenSSH ``sshd`` on loopback.

    python3 benchmarks/run.py                 # 3 rounds, the full sizes
    python3 benchmarks/run.py --quick         # a smoke run: tiny sizes, one round
    python3 benchmarks/run.py --cipher chacha20-poly1305@openssh.com --rounds 5

Per round, each implementation in turn (the order rotates between rounds) starts one
tunnel as its own process, forwarding a port of the sshd to a local target process, and
the same measurements run through that port: bulk upload and download on one connection,
sequential 64-byte round trips, sequential connect/echo/close, concurrent 1 MiB echoes; the
tunnel process's CPU time (``/proc/PID/stat``) over the bulk transfers and its peak RSS
(``VmHWM``). Medians over rounds are printed, with each implementation's ratio to OpenSSH:
this machine is shared, so absolute numbers drift and ratios within one run are what to
compare. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(_HERE))

import _load  # noqa: E402
from _openssh_client import ssh_reverse_command  # noqa: E402

from rtunnel.testing._keys import generate_client_key  # noqa: E402
from rtunnel.testing._openssh import OpenSSHServer, find_sshd  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30

#: Connections slower than this count as stalled in the sequential connection test.
STALL_SECONDS = 0.020


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each measurement does."""

    bulk_bytes: int
    round_trips: int
    connections: int
    concurrent: int
    concurrent_bytes: int


FULL = Sizes(
    bulk_bytes=256 * MIB, round_trips=5000, connections=500, concurrent=100, concurrent_bytes=MIB
)
QUICK = Sizes(
    bulk_bytes=4 * MIB, round_trips=200, connections=30, concurrent=10, concurrent_bytes=64 * 1024
)


@dataclasses.dataclass
class Setup:
    """What every tunnel command needs."""

    server: OpenSSHServer
    key: Path
    cipher: str
    target_port: int
    workdir: Path
    #: Where each rtunnel variant is imported from (name -> source tree).
    rtunnel_src: dict[str, Path] = dataclasses.field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rtunnel_command(setup: Setup, listen_port: int) -> list[str]:
    """rtunnel's command line (its CLI, ``python3 -m rtunnel.cli``)."""
    return [
        sys.executable,
        "-m",
        "rtunnel.cli",
        "-N",
        "-i",
        str(setup.key),
        "-c",
        setup.cipher,
        "-o",
        f"UserKnownHostsFile={setup.server.known_hosts_path}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ExitOnForwardFailure=yes",
        "-p",
        str(setup.server.port),
        "-R",
        f"127.0.0.1:{listen_port}:127.0.0.1:{setup.target_port}",
        f"{setup.server.user}@{setup.server.host}",
    ]


def openssh_command(setup: Setup, listen_port: int) -> list[str]:
    """OpenSSH's ``ssh -N -R``, with no configuration file, agent or other keys."""
    forward = f"127.0.0.1:{listen_port}:127.0.0.1:{setup.target_port}"
    return ssh_reverse_command(setup.server, setup.key, forward, "-c", setup.cipher)


def asyncssh_command(setup: Setup, listen_port: int) -> list[str]:
    """The asyncssh script (``_asyncssh_tunnel.py``)."""
    return [
        sys.executable,
        str(_HERE / "_asyncssh_tunnel.py"),
        setup.server.host,
        str(setup.server.port),
        setup.server.user,
        str(setup.key),
        str(setup.server.known_hosts_path),
        setup.cipher,
        str(listen_port),
        str(setup.target_port),
    ]


def environment(setup: Setup, name: str) -> dict[str, str]:
    """The environment for one implementation (an rtunnel variant imports from its tree)."""
    env = dict(os.environ)
    src = setup.rtunnel_src.get(name)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


IMPLEMENTATIONS: dict[str, Callable[[Setup, int], list[str]]] = {
    "openssh": openssh_command,
    "rtunnel": rtunnel_command,
    "asyncssh": asyncssh_command,
}


def available(names: Sequence[str]) -> list[str]:
    """The implementations that can run here (asyncssh only when it is installed)."""
    out = []
    for name in names:
        if name == "asyncssh" and importlib.util.find_spec("asyncssh") is None:
            print("asyncssh is not installed: skipped (pip install asyncssh)", file=sys.stderr)
            continue
        out.append(name)
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process, from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident set size (``VmHWM``), from ``/proc/PID/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


class Tunnel:
    """One tunnel process under test."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], listen_port: int, log: Path
    ) -> None:
        self.name = name
        self.listen_port = listen_port
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until an echo through the forwarded port works."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode} before its "
                    f"forward was up; see {self._log.name}"
                )
            try:
                _load.echo_once(self.listen_port)
                return
            except (OSError, _load.BenchmarkError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name}: forward not up after {timeout} s; see {self._log.name}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


class Profiler:
    """
    Records py-spy stacks of a process per phase (``--profile``): ``DIR/NAME-PHASE.txt``,
    py-spy's "raw" format (collapsed stacks, one per line with its sample count), and a
    summary of the functions with the most samples printed to stderr.
    """

    def __init__(self, directory: Path, name: str, pid: int) -> None:
        self.directory = directory
        self.name = name
        self.pid = pid
        self._spy: subprocess.Popen[bytes] | None = None
        self._path: Path | None = None

    def start(self, phase: str) -> None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self._path = self.directory / f"{self.name}-{phase}.txt"
        self._spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--output",
                str(self._path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let it attach

    def stop(self) -> None:
        spy, self._spy = self._spy, None
        if spy is None or self._path is None:
            return
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        print(f"-- {self._path}", file=sys.stderr)
        print(summarize_raw(self._path.read_text()), file=sys.stderr)


def summarize_raw(text: str, top: int = 25) -> str:
    """Self and inclusive sample counts per function from py-spy's raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples; self% incl% function"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:5.1f} {100 * inclusive[frame] / total:5.1f}  {frame}")
    return "\n".join(lines)


def measure(tunnel: Tunnel, sizes: Sizes, profiler: Profiler | None = None) -> dict[str, float]:
    """One round of every measurement through one tunnel."""
    port, pid = tunnel.listen_port, tunnel.process.pid
    out: dict[str, float] = {}

    def phase(name: str, run: Callable[[], object]) -> object:
        if profiler is not None:
            profiler.start(name)
        try:
            return run()
        finally:
            if profiler is not None:
                profiler.stop()

    cpu0 = cpu_seconds(pid)
    up = phase("upload", lambda: _load.bulk_upload(port, sizes.bulk_bytes))
    cpu1 = cpu_seconds(pid)
    down = phase("download", lambda: _load.bulk_download(port, sizes.bulk_bytes))
    cpu2 = cpu_seconds(pid)
    assert isinstance(up, float) and isinstance(down, float)
    out["upload_mbps"] = sizes.bulk_bytes / up / 1e6
    out["download_mbps"] = sizes.bulk_bytes / down / 1e6
    out["cpu_s_per_gib"] = (cpu2 - cpu0) / (2 * sizes.bulk_bytes / GIB)
    out["upload_cpu_s_per_gib"] = (cpu1 - cpu0) / (sizes.bulk_bytes / GIB)
    out["download_cpu_s_per_gib"] = (cpu2 - cpu1) / (sizes.bulk_bytes / GIB)
    rtt = phase("latency", lambda: _load.round_trip_times(port, sizes.round_trips))
    assert isinstance(rtt, list)
    out["rtt_p50_us"] = percentile(rtt, 0.50) * 1e6
    out["rtt_p99_us"] = percentile(rtt, 0.99) * 1e6
    times = phase("connections", lambda: _load.connection_times(port, sizes.connections))
    assert isinstance(times, list)
    out["conn_per_s"] = len(times) / sum(times)
    out["conn_over_20ms"] = sum(1 for t in times if t > STALL_SECONDS)
    out["conn_p50_ms"] = percentile(times, 0.50) * 1e3
    times = phase(
        "connections-target-closes",
        lambda: _load.connection_times(port, sizes.connections, target_closes=True),
    )
    assert isinstance(times, list)
    out["conn2_over_20ms"] = sum(1 for t in times if t > STALL_SECONDS)
    concurrent = phase(
        "concurrent",
        lambda: _load.concurrent_echo(port, sizes.concurrent, sizes.concurrent_bytes),
    )
    assert isinstance(concurrent, float)
    out["concurrent_s"] = concurrent
    out["peak_rss_mib"] = peak_rss_bytes(pid) / MIB
    return out


#: (key, label, higher is better)
METRICS: list[tuple[str, str, bool]] = [
    ("upload_mbps", "bulk upload, MB/s", True),
    ("download_mbps", "bulk download, MB/s", True),
    ("cpu_s_per_gib", "tunnel CPU s per GiB", False),
    ("upload_cpu_s_per_gib", "  of which upload", False),
    ("download_cpu_s_per_gib", "  of which download", False),
    ("rtt_p50_us", "64 B round trip p50, µs", False),
    ("rtt_p99_us", "64 B round trip p99, µs", False),
    ("conn_per_s", "sequential connections/s", True),
    ("conn_over_20ms", "connections over 20 ms", False),
    ("conn_p50_ms", "connection p50, ms", False),
    ("conn2_over_20ms", "the same, target closes first: over 20 ms", False),
    ("concurrent_s", "concurrent echo, s", False),
    ("peak_rss_mib", "tunnel peak RSS, MiB", False),
]


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The median of each metric over rounds."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def table(results: dict[str, dict[str, float]], sizes: Sizes) -> str:
    """A Markdown table: medians, and the ratio to OpenSSH in parentheses."""
    names = list(results)
    base = results.get("openssh")
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key, label, _higher in METRICS:
        label = label.replace("concurrent echo", f"{sizes.concurrent} x echo")
        cells = []
        for name in names:
            value = results[name][key]
            cell = f"{value:.0f}" if value >= 100 or key.endswith("over_20ms") else f"{value:.3g}"
            if base is not None and name != "openssh" and base[key]:
                cell += f" ({value / base[key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict[str, float]], sizes: Sizes) -> list[str]:
    """The issue's bar, checked on this run's medians."""
    r, o, a = results.get("rtunnel"), results.get("openssh"), results.get("asyncssh")
    if r is None:
        return []
    checks: list[tuple[str, bool]] = []
    if o is not None:
        for key in ("upload_mbps", "download_mbps"):
            checks.append((f"{key} >= 0.8 x OpenSSH", r[key] >= 0.8 * o[key]))
        checks.append(("rtt p50 <= OpenSSH", r["rtt_p50_us"] <= o["rtt_p50_us"]))
        checks.append(("concurrent echo <= OpenSSH", r["concurrent_s"] <= o["concurrent_s"]))
    if a is not None:
        for key in ("upload_mbps", "download_mbps"):
            checks.append((f"{key} >= 1.2 x asyncssh", r[key] >= 1.2 * a[key]))
        checks.append(("CPU/GiB <= asyncssh", r["cpu_s_per_gib"] <= a["cpu_s_per_gib"]))
    checks.append(("no connection over 20 ms", r["conn_over_20ms"] == 0))
    checks.append(("no connection over 20 ms, target closes first", r["conn2_over_20ms"] == 0))
    if sizes.concurrent >= 100:
        checks.append(("peak RSS < 64 MiB", r["peak_rss_mib"] < 64))
    return [f"{'PASS' if ok else 'FAIL'}  {text}" for text, ok in checks]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="rtunnel vs OpenSSH ssh -R (and asyncssh) through one local sshd."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke)")
    parser.add_argument("--rounds", type=int, help="rounds per implementation (default 3)")
    parser.add_argument(
        "--cipher",
        default="aes128-gcm@openssh.com",
        help="the cipher every implementation must use (default aes128-gcm@openssh.com; "
        "also chacha20-poly1305@openssh.com, aes256-gcm@openssh.com, aes128-ctr)",
    )
    parser.add_argument(
        "--impl",
        action="append",
        choices=sorted(IMPLEMENTATIONS),
        help="run only these (repeatable; default all that are installed)",
    )
    parser.add_argument(
        "--rtunnel-src",
        type=Path,
        default=_HERE.parent,
        help="the source tree rtunnel is run from (default: this checkout)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another rtunnel source tree, measured too as 'rtunnel-base' (before/after)",
    )
    parser.add_argument("--bulk-mib", type=int, help="MiB each way for the bulk tests")
    parser.add_argument("--round-trips", type=int, help="sequential 64-byte round trips")
    parser.add_argument("--connections", type=int, help="sequential connections")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy stacks of the rtunnel process per phase into this directory",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = QUICK if args.quick else FULL
    if args.bulk_mib:
        sizes = dataclasses.replace(sizes, bulk_bytes=args.bulk_mib * MIB)
    if args.round_trips:
        sizes = dataclasses.replace(sizes, round_trips=args.round_trips)
    if args.connections:
        sizes = dataclasses.replace(sizes, connections=args.connections)
    rounds = args.rounds or (1 if args.quick else 3)
    names = available(args.impl or list(IMPLEMENTATIONS))
    rtunnel_src = {"rtunnel": args.rtunnel_src.resolve()}
    if args.baseline is not None:
        names.append("rtunnel-base")
        rtunnel_src["rtunnel-base"] = args.baseline.resolve()
    sshd = find_sshd()
    if sshd is None or shutil.which("ssh") is None:
        print("OpenSSH (sshd and ssh) is needed: apt-get install openssh-server", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="rtunnel-bench-"))
    key = generate_client_key("ed25519", workdir / "client")
    server = OpenSSHServer(
        workdir / "sshd",
        authorized_keys=[key.with_name(key.name + ".pub").read_text().strip()],
        # The harness logs at DEBUG3, which costs sshd time per channel; INFO still
        # prints the line the harness waits for.
        extra_config=["LogLevel INFO"],
        sshd_path=sshd,
    )
    target = subprocess.Popen(
        [sys.executable, str(_HERE / "_target.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        assert target.stdout is not None
        target_port = int(target.stdout.readline())
        server.start()
        setup = Setup(server, key, args.cipher, target_port, workdir, rtunnel_src)
        print(
            f"sshd {server.port}, target {target_port}, cipher {args.cipher}, "
            f"{rounds} round(s), implementations {', '.join(names)}",
            file=sys.stderr,
        )
        for round_no in range(rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                port = _free_port()
                command = IMPLEMENTATIONS[name.removesuffix("-base")](setup, port)
                log = workdir / f"{name}.log"
                tunnel = Tunnel(name, command, environment(setup, name), port, log)
                try:
                    tunnel.wait_ready()
                    profiler = None
                    if args.profile is not None and name.startswith("rtunnel"):
                        args.profile.mkdir(parents=True, exist_ok=True)
                        profiler = Profiler(args.profile, name, tunnel.process.pid)
                    row = measure(tunnel, sizes, profiler)
                finally:
                    tunnel.stop()
                results[name].append(row)
                line = ", ".join(f"{k}={v:.4g}" for k, v in row.items())
                print(f"round {round_no + 1} {name}: {line}", file=sys.stderr)
    finally:
        server.stop()
        if target.stdin is not None:
            target.stdin.close()
        target.wait(10)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {name: medians(rows) for name, rows in results.items()}
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"\n{when}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {_openssh_version()}, cipher {args.cipher}, "
        f"medians of {rounds} round(s); bulk {sizes.bulk_bytes // MIB} MiB each way, "
        f"{sizes.round_trips} round trips, {sizes.connections} connections, "
        f"{sizes.concurrent} x {sizes.concurrent_bytes // 1024} KiB concurrent echo\n"
    )
    print(table(summary, sizes))
    checks = verdicts(summary, sizes)
    if checks:
        print("\n" + "\n".join(checks))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": when,
                    "cipher": args.cipher,
                    "sizes": dataclasses.asdict(sizes),
                    "rounds": results,
                    "medians": summary,
                },
                indent=2,
            )
        )
    return 0


def _openssh_version() -> str:
    result = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().split(",")[0]


if __name__ == "__main__":
    sys.exit(main())
