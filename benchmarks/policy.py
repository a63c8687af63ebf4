"""
What a forward's policy (issue #15) costs on the data path, in one run: the same rtunnel
command through one private OpenSSH ``sshd``, three ways,

- ``none``: no policy (the baseline);
- ``allow-list``: ``-o ForwardPolicy=... allow=127.0.0.0/8,::1`` (decided at each open,
  nothing per byte);
- ``bandwidth``: ``-o ForwardPolicy=... bandwidth=64G``, a cap far above the line rate
  (every write to the server goes through the forward's token bucket);

each its own process, the order rotating between rounds. Bulk upload and download on one
connection, the tunnel's CPU time per GiB, and sequential connect/echo/close (which pays
for the open decision); medians over rounds, and each variant's ratio to ``none``.

    python3 benchmarks/policy.py             # 3 rounds, 128 MiB each way, 500 connections
    python3 benchmarks/policy.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(_HERE))

import _load  # noqa: E402
import run  # noqa: E402

from rtunnel.testing._keys import generate_client_key  # noqa: E402
from rtunnel.testing._openssh import OpenSSHServer, find_sshd  # noqa: E402

MIB = run.MIB
GIB = run.GIB


def _policy(words: str) -> Callable[[run.Setup, int], list[str]]:
    def command(setup: run.Setup, port: int) -> list[str]:
        base = run.rtunnel_command(setup, port)
        # The -o option goes before the destination, the last argument.
        return [*base[:-1], "-o", f"ForwardPolicy=127.0.0.1:{port} {words}", base[-1]]

    return command


VARIANTS: dict[str, Callable[[run.Setup, int], list[str]]] = {
    "none": run.rtunnel_command,
    "allow-list": _policy("allow=127.0.0.0/8,::1"),
    "bandwidth": _policy("bandwidth=64G"),
}

#: (key, label, higher is better)
METRICS: list[tuple[str, str, bool]] = [
    ("upload_mbps", "bulk upload, MB/s", True),
    ("download_mbps", "bulk download (through the cap), MB/s", True),
    ("cpu_s_per_gib", "tunnel CPU s per GiB", False),
    ("conn_per_s", "sequential connections/s", True),
]


def measure(tunnel: run.Tunnel, bulk: int, connections: int) -> dict[str, float]:
    """One round through one tunnel."""
    port, pid = tunnel.listen_port, tunnel.process.pid
    cpu0 = run.cpu_seconds(pid)
    up = _load.bulk_upload(port, bulk)
    down = _load.bulk_download(port, bulk)
    cpu1 = run.cpu_seconds(pid)
    times = _load.connection_times(port, connections)
    return {
        "upload_mbps": bulk / up / 1e6,
        "download_mbps": bulk / down / 1e6,
        "cpu_s_per_gib": (cpu1 - cpu0) / (2 * bulk / GIB),
        "conn_per_s": len(times) / sum(times),
    }


def table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown: medians, each with its ratio to ``none``."""
    names = list(summary)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label, _ in METRICS:
        base = summary["none"][key]
        cells = []
        for name in names:
            value = summary[name][key]
            ratio = f" ({value / base:.2f}x)" if name != "none" and base else ""
            cells.append(f"{value:.4g}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3, quick 1)")
    parser.add_argument("--bulk-mib", type=int, default=0, help="MiB each way (default 128)")
    parser.add_argument("--connections", type=int, default=0, help="default 500")
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    parser.add_argument("--json", type=Path, help="write every round and the medians here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bulk = (args.bulk_mib or (4 if args.quick else 128)) * MIB
    connections = args.connections or (30 if args.quick else 500)
    rounds = args.rounds or (1 if args.quick else 3)
    sshd = find_sshd()
    if sshd is None:
        print("OpenSSH's sshd is needed: apt-get install openssh-server", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="rtunnel-policy-bench-"))
    key = generate_client_key("ed25519", workdir / "client")
    server = OpenSSHServer(
        workdir / "sshd",
        authorized_keys=[key.with_name(key.name + ".pub").read_text().strip()],
        extra_config=["LogLevel INFO"],
        sshd_path=sshd,
    )
    target = subprocess.Popen(
        [sys.executable, str(_HERE / "_target.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    names = list(VARIANTS)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        assert target.stdout is not None
        target_port = int(target.stdout.readline())
        server.start()
        setup = run.Setup(server, key, args.cipher, target_port, workdir)
        for round_no in range(rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                port = run._free_port()
                command = VARIANTS[name](setup, port)
                tunnel = run.Tunnel(name, command, dict(os.environ), port, workdir / f"{name}.log")
                try:
                    tunnel.wait_ready()
                    row = measure(tunnel, bulk, connections)
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
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for name, rows in results.items()
    }
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"\n{when}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, cipher {args.cipher}, medians of {rounds} round(s); "
        f"bulk {bulk // MIB} MiB each way, {connections} connections\n"
    )
    print(table(summary))
    if args.json:
        args.json.write_text(
            json.dumps({"date": when, "rounds": results, "medians": summary}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
