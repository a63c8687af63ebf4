"""
How long the command takes to start: from exec to its ``Allocated port`` line, for
``rtunnel -N -R 0:127.0.0.1:P`` and OpenSSH's ``ssh -N -R 0:127.0.0.1:P`` against the same
private ``sshd`` on loopback, beside the interpreter's own floor.

    python3 benchmarks/start_time.py              # 10 rounds
    python3 benchmarks/start_time.py --rounds 3   # a short run (the harness test's)
    python3 benchmarks/start_time.py --baseline ../main   # before/after, interleaved

Each round runs every command once, in an order that rotates between rounds (so a burst of
load on this shared machine hits each in turn): the two tunnels, ``ssh`` again with
rtunnel's key exchange (``-o KexAlgorithms=curve25519-sha256``; its default,
sntrup761x25519-sha512, costs it more), ``python -c pass``,
``python -c "import twisted.internet.reactor"`` (the floor the interpreter and Twisted set
before rtunnel runs a line of its own) and ``python -c "import rtunnel.cli"``. A tunnel's
time ends when the line arrives on its stderr; it is then stopped. Medians over rounds are
printed with the ratio of rtunnel's to ``ssh``'s, against the target of issue #17 (at most
1.5x). When rtunnel misses it (or with ``--profile``), the import profile of one rtunnel
start (``-X importtime`` up to the ``Allocated port`` line, so imports made while
connecting count too) is printed, summed by package. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(_HERE))

from _openssh_client import ssh_reverse_command  # noqa: E402

from rtunnel.testing._keys import generate_client_key  # noqa: E402
from rtunnel.testing._openssh import OpenSSHServer, find_sshd  # noqa: E402

#: Issue #17's target: rtunnel's start at most this many times ``ssh``'s.
TARGET_RATIO = 1.5

#: The key exchange rtunnel negotiates with OpenSSH 9.2's sshd. ``ssh`` picks
#: sntrup761x25519-sha512 by default, which costs it tens of milliseconds more: ``ssh`` is
#: also measured with this one, to show what the same work costs it.
SAME_KEX = "curve25519-sha256"

#: The line both commands print once the server allocated the forward's port.
ALLOCATED = "Allocated port "

#: The interpreter-only commands measured beside the tunnels (name -> Python code).
FLOORS: dict[str, str] = {
    "python -c pass": "pass",
    "import twisted.internet.reactor": "import twisted.internet.reactor",
    "import rtunnel.cli": "import rtunnel.cli",
}


class StartError(RuntimeError):
    """A command did not print its ``Allocated port`` line."""


@dataclass
class Setup:
    """What every command needs: the server, the client key, where rtunnel comes from."""

    server: OpenSSHServer
    key: Path
    target_port: int
    rtunnel_src: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)


def ssh_command(setup: Setup, *options: str) -> list[str]:
    """``ssh -N -R 0:127.0.0.1:P``, with no configuration file, agent or other keys."""
    forward = f"0:127.0.0.1:{setup.target_port}"
    return ssh_reverse_command(setup.server, setup.key, forward, *options)


def rtunnel_command(setup: Setup, *python_flags: str) -> list[str]:
    """The same forward through rtunnel's command (``python3 -m rtunnel.cli``)."""
    return [
        sys.executable,
        *python_flags,
        "-m",
        "rtunnel.cli",
        "-N",
        "-i",
        str(setup.key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={setup.server.known_hosts_path}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ExitOnForwardFailure=yes",
        "-p",
        str(setup.server.port),
        "-R",
        f"0:127.0.0.1:{setup.target_port}",
        f"{setup.server.user}@{setup.server.host}",
    ]


def environment(rtunnel_src: Path) -> dict[str, str]:
    """
    The environment every command runs in: rtunnel imported from ``rtunnel_src`` (the
    commands run in the work directory: ``python -m`` puts the current directory first
    on ``sys.path``, and run from a checkout that checkout's rtunnel would win), no
    agent, and bytecode caching on (an installed rtunnel has its ``.pyc`` files; with
    ``PYTHONDONTWRITEBYTECODE`` and no cache every start would compile the sources).
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SSH_AUTH_SOCK", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(rtunnel_src), env.get("PYTHONPATH")]))
    return env


def cpu_seconds(pid: int) -> float:
    """
    The CPU time of a running process so far, all its threads, in nanoseconds' resolution
    (``/proc/PID/task/*/schedstat``; ``/proc/PID/stat`` counts in 10 ms ticks).
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def time_tunnel(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0
) -> tuple[float, float, str]:
    """
    Run ``command`` until it prints its ``Allocated port`` line on stderr, then stop it.

    :return: the seconds from just before exec to that line, the CPU seconds the process
        had used by then, and the line.
    :raises StartError: if it exits, or prints no such line within ``timeout`` seconds.
    """
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        cwd=cwd,
    )
    seen: list[str] = []
    try:
        assert process.stderr is not None
        deadline = start + timeout
        for line in process.stderr:
            if line.startswith(ALLOCATED):
                elapsed = time.perf_counter() - start
                return elapsed, cpu_seconds(process.pid), line.strip()
            seen.append(line)
            if time.perf_counter() > deadline:
                break
        raise StartError(
            f"{Path(command[0]).name} printed no {ALLOCATED!r} line (exit status "
            f"{process.poll()}); its stderr:\n" + "".join(seen[-30:])
        )
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def time_python(code: str, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """The seconds from exec to exit of ``python -c code``, and its CPU seconds."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=cwd)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise StartError(f"python -c {code!r} exited with status {process.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime


def import_profile(setup: Setup, top: int = 15) -> str:
    """
    One rtunnel start under ``-X importtime``, up to its ``Allocated port`` line: the
    import time summed by top-level package (self times, so nothing counts twice) and the
    modules that cost most including what they import.
    """
    process = subprocess.Popen(
        rtunnel_command(setup, "-X", "importtime"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=setup.env,
        text=True,
        cwd=setup.workdir,
    )
    rows: list[tuple[str, int, int]] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith(ALLOCATED):
                break
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
            rows.append((name.rstrip(), int(self_us), int(cumulative_us)))
    finally:
        process.terminate()
        process.wait(10)
    return format_profile(rows, top)


def format_profile(rows: Sequence[tuple[str, int, int]], top: int = 15) -> str:
    """
    The report :func:`import_profile` prints, from ``-X importtime`` rows (indented module
    name, self microseconds, cumulative microseconds).
    """
    by_package: dict[str, int] = {}
    for name, self_us, _ in rows:
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0) + self_us
    total = sum(by_package.values())
    lines = [f"import profile of one rtunnel start: {len(rows)} modules, {total / 1000:.0f} ms"]
    lines.append("  by top-level package (self time):")
    for package, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {us / 1000:7.1f} ms  {us / total:5.1%}  {package}")
    lines.append("  most expensive imports (with what they import):")
    for name, _, cumulative in sorted(rows, key=lambda row: -row[2])[:top]:
        lines.append(f"    {cumulative / 1000:7.1f} ms  {name.strip()}")
    return "\n".join(lines)


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def report(runs: dict[str, list[float]], cpu: dict[str, list[float]]) -> tuple[str, float]:
    """
    The Markdown table of medians (wall clock, and the command's own CPU time, which the
    machine's other load disturbs less) and rtunnel's wall-clock ratio to ``ssh``.
    """
    ssh = statistics.median(runs["ssh"])
    ssh_cpu = statistics.median(cpu["ssh"])
    ratio = statistics.median(runs["rtunnel"]) / ssh
    lines = [
        "| command | median, ms | min | max | x ssh | CPU, ms | CPU x ssh |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, values in runs.items():
        used = statistics.median(cpu[name])
        lines.append(
            f"| {name} | {median_ms(values):.0f} | {min(values) * 1000:.0f} | "
            f"{max(values) * 1000:.0f} | {statistics.median(values) / ssh:.2f}x | "
            f"{used * 1000:.0f} | {used / ssh_cpu:.2f}x |"
        )
    return "\n".join(lines), ratio


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--json", type=Path, help="write every run's time to this file")
    parser.add_argument(
        "--profile", action="store_true", help="print the import profile even on target"
    )
    parser.add_argument(
        "--rtunnel-src",
        type=Path,
        default=_HERE.parent,
        help="the source tree rtunnel is imported from (default: this checkout)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure the rtunnel of this source tree, as rtunnel-base (before/after)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sshd = find_sshd()
    if sshd is None or shutil.which("ssh") is None:
        print("OpenSSH (sshd and ssh) is needed: apt-get install openssh-server", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="rtunnel-start-"))
    key = generate_client_key("ed25519", workdir / "client")
    server = OpenSSHServer(
        workdir / "sshd",
        authorized_keys=[key.with_name(key.name + ".pub").read_text().strip()],
        extra_config=["LogLevel INFO"],
        sshd_path=sshd,
    )
    # The forwards' destination: a port nobody connects to, held so no one else takes it.
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen()
    same_kex = f"ssh, {SAME_KEX}"
    runs: dict[str, list[float]] = {"ssh": [], same_kex: [], "rtunnel": []}
    if args.baseline is not None:
        runs["rtunnel-base"] = []
    runs.update({name: [] for name in FLOORS})
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    load_before = os.getloadavg()[0]
    lines: dict[str, str] = {}
    try:
        server.start()
        setup = Setup(server, key, target.getsockname()[1], args.rtunnel_src.resolve(), workdir)
        setup.env = environment(setup.rtunnel_src)
        envs = {"ssh": setup.env, same_kex: setup.env, "rtunnel": setup.env}
        tunnels = {
            "ssh": ssh_command(setup),
            same_kex: ssh_command(setup, "-o", f"KexAlgorithms={SAME_KEX}"),
            "rtunnel": rtunnel_command(setup),
        }
        if args.baseline is not None:
            envs["rtunnel-base"] = environment(args.baseline.resolve())
            tunnels["rtunnel-base"] = rtunnel_command(setup)
        # A warm-up start of each, not counted: writes rtunnel's .pyc files and fills the
        # page cache, as any start after the first finds them.
        for name, command in tunnels.items():
            time_tunnel(command, envs[name], workdir)
        names = list(runs)
        for round_no in range(args.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                if name in tunnels:
                    seconds, used, lines[name] = time_tunnel(tunnels[name], envs[name], workdir)
                else:
                    seconds, used = time_python(FLOORS[name], setup.env, workdir)
                runs[name].append(seconds)
                cpu[name].append(used)
            print(
                f"round {round_no + 1}: "
                + ", ".join(f"{name} {values[-1] * 1000:.0f} ms" for name, values in runs.items()),
                file=sys.stderr,
            )
        table, ratio = report(runs, cpu)
        floor = statistics.median(runs["import twisted.internet.reactor"])
        floor_ratio = floor / statistics.median(runs["ssh"])
        profile = import_profile(setup) if args.profile or ratio > TARGET_RATIO else None
    finally:
        server.stop()
        target.close()
        shutil.rmtree(workdir, ignore_errors=True)

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"{when}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {_openssh_version()}; medians of {args.rounds} "
        f"interleaved round(s), exec to the {ALLOCATED.strip()!r} line; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    )
    print(table)
    print()
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"{verdict}  rtunnel {ratio:.2f}x ssh (target: at most {TARGET_RATIO}x)")
    same_kex_ratio = statistics.median(runs["rtunnel"]) / statistics.median(runs[same_kex])
    print(f"       rtunnel {same_kex_ratio:.2f}x ssh with rtunnel's key exchange ({SAME_KEX})")
    print(f"floor: the interpreter and Twisted's reactor alone take {floor_ratio:.2f}x ssh")
    for name, line in lines.items():
        print(f"{name}: {line}")
    if profile is not None:
        print()
        print(profile)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": when,
                    "rounds": args.rounds,
                    "runs": runs,
                    "cpu": cpu,
                    "medians": {name: statistics.median(v) for name, v in runs.items()},
                    "ratio": ratio,
                    "load_average": [load_before, os.getloadavg()[0]],
                    "same_kex_ratio": same_kex_ratio,
                    "floor_ratio": floor_ratio,
                    "lines": lines,
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
