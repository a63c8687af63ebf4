"""
A policy per forward (issue #15) against a real OpenSSH sshd, under load: clients connect
to the forwarded port from 127.0.0.1, from 127.0.0.2 (the client socket bound to that
source; Linux routes all of 127/8 to lo) and from ::1 when IPv6 loopback is there, so
sshd's ``forwarded-tcpip`` originator is each of them. Allowed ones get through, denied
ones are refused; the channel cap and the connection rate hold over hundreds of attempts
(counts bounded on both sides); another forward on the same tunnel works meanwhile; the
bandwidth cap is measured; the idle timeout closes only its forward's channel. Then the
command with ``-o ForwardPolicy``, its status and metrics.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from sockets import TargetServer, echo, eventually, in_thread
from twisted.internet import reactor

from rtunnel import Forward, ForwardPolicy, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.operations.control import query
from rtunnel.testing._openssh import OpenSSHServer

#: How long a client waits for anything (a loaded 2-core machine).
PATIENCE = 30.0


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_loopback()


def _tunnel(sshd: OpenSSHServer, key: Path, tmp_path: Path, **kw: Any) -> ReverseTunnel:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "".join(f"[127.0.0.1]:{sshd.port} {k}\n" for k in sshd.host_public_keys())
    )
    return ReverseTunnel(
        reactor,
        "127.0.0.1",
        sshd.port,
        options=TunnelOptions.create(
            user=sshd.user, auth=[PrivateKeyFile(key)], known_hosts=known_hosts, **kw
        ),
    )


def _attempt(port: int, source: str = "127.0.0.1", payload: bytes = b"ping") -> bool:
    """
    One client from ``source`` to the forwarded port: True when ``payload`` came back
    (through the target), False when sshd closed it (its channel open was refused).
    """
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    destination = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family) as s:
        s.settimeout(PATIENCE)
        s.bind((source, 0))
        s.connect((destination, port))
        s.sendall(payload)
        received = b""
        try:
            while len(received) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    return False
                received += chunk
        except ConnectionResetError:
            return False
    assert received == payload
    return True


def _held(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A client that connects and stays connected."""
    s = socket.socket()
    s.settimeout(PATIENCE)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


@pytest.fixture
def echo_server() -> Iterator[TargetServer]:
    server = TargetServer(echo)
    yield server
    server.close()


@pytest.fixture
def hold_server() -> Iterator[TargetServer]:
    """Accepts and holds each connection until the client goes."""

    def hold(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    server = TargetServer(hold)
    yield server
    server.close()


async def _forward(
    tunnel: ReverseTunnel, port: int, policy: ForwardPolicy | None, bind: str = "127.0.0.1"
) -> Forward:
    forward: Forward = await tunnel.request_forwarding(bind, 0, "127.0.0.1", port, policy=policy)
    return forward


@pytest_twisted.ensureDeferred
async def test_allowed_originators_get_through_denied_ones_are_refused(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    tmp_path: Path,
    echo_server: TargetServer,
) -> None:
    tunnel = _tunnel(openssh_server, openssh_client_key, tmp_path)
    await tunnel.logon()
    try:
        guarded = await _forward(
            tunnel, echo_server.port, ForwardPolicy(allow=("127.0.0.0/8",), deny=("127.0.0.2",))
        )
        plain = await _forward(tunnel, echo_server.port, None)
        rounds = 100

        def load() -> dict[str, int]:
            counts = {"127.0.0.1": 0, "127.0.0.2": 0, "127.0.0.3": 0, "plain": 0}
            for _ in range(rounds):
                for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
                    counts[source] += _attempt(guarded.port, source)
                counts["plain"] += _attempt(plain.port, "127.0.0.2")
            return counts

        counts = await in_thread(load)
        assert counts == {
            "127.0.0.1": rounds,
            "127.0.0.2": 0,
            "127.0.0.3": rounds,
            "plain": rounds,  # the forward without a policy lets 127.0.0.2 in
        }
        await eventually(lambda: guarded.refused == {"denied": rounds})
        assert plain.refused == {} and plain.channels_total == rounds
        assert guarded.channels_total == 2 * rounds
    finally:
        await tunnel.logoff()


@pytest.fixture
def dual_stack_sshd(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path
) -> Iterator[OpenSSHServer]:
    """An sshd that listens for forwards on IPv6 too (the harness's is IPv4 only)."""
    if not IPV6:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    public = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text().strip()
    server = OpenSSHServer(
        tmp_path / "sshd6",
        authorized_keys=[public],
        sshd_path=openssh_sshd,
        extra_config=["AddressFamily any"],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_ipv6_originators_are_matched_too(
    dual_stack_sshd: OpenSSHServer,
    openssh_client_key: Path,
    tmp_path: Path,
    echo_server: TargetServer,
) -> None:
    tunnel = _tunnel(dual_stack_sshd, openssh_client_key, tmp_path)
    await tunnel.logon()
    try:
        # "localhost": sshd listens on 127.0.0.1 and ::1.
        only_v6 = await _forward(
            tunnel, echo_server.port, ForwardPolicy(allow=("::1",)), bind="localhost"
        )
        no_v6 = await _forward(
            tunnel, echo_server.port, ForwardPolicy(deny=("::/0",)), bind="localhost"
        )

        def load() -> list[bool]:
            results = []
            for _ in range(20):
                results += [_attempt(only_v6.port, "::1"), _attempt(only_v6.port, "127.0.0.1")]
                results += [_attempt(no_v6.port, "::1"), _attempt(no_v6.port, "127.0.0.1")]
            return results

        assert await in_thread(load) == [True, False, False, True] * 20
        await eventually(lambda: only_v6.refused == {"not-allowed": 20})
        await eventually(lambda: no_v6.refused == {"denied": 20})
    finally:
        await tunnel.logoff()


@pytest_twisted.ensureDeferred
async def test_the_cap_and_the_rate_hold_over_hundreds_of_attempts(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    tmp_path: Path,
    echo_server: TargetServer,
    hold_server: TargetServer,
) -> None:
    tunnel = _tunnel(openssh_server, openssh_client_key, tmp_path)
    await tunnel.logon()
    try:
        capped = await _forward(tunnel, hold_server.port, ForwardPolicy(max_channels=10))
        rate, burst = 20.0, 5
        limited = await _forward(tunnel, echo_server.port, ForwardPolicy(rate=rate, burst=burst))
        plain = await _forward(tunnel, echo_server.port, None)

        # 300 clients that stay: 10 reach the target, the other 290 are closed by sshd.
        clients: list[socket.socket] = []

        def flood() -> None:
            for _ in range(300):
                clients.append(_held(capped.port))

        await in_thread(flood)
        await eventually(lambda: sum(capped.refused.values()) == 290, timeout=PATIENCE)
        # The target's accept thread may lag the kernel's accept queue a little.
        await eventually(lambda: len(hold_server.connections) >= 10, timeout=PATIENCE)
        assert len(hold_server.connections) == 10
        assert capped.refused == {"max-channels": 290} and capped.channels_open == 10
        # Freed slots are taken again, up to the cap.
        for client in clients:
            client.close()
        await eventually(lambda: capped.channels_open == 0, timeout=PATIENCE)
        more: list[socket.socket] = []
        await in_thread(lambda: more.extend(_held(capped.port) for _ in range(30)))
        await eventually(lambda: sum(capped.refused.values()) == 290 + 20, timeout=PATIENCE)
        await eventually(lambda: len(hold_server.connections) >= 20, timeout=PATIENCE)
        assert len(hold_server.connections) == 20
        for client in more:
            client.close()

        # 300 attempts at about 100 a second against 20 a second, burst 5; a forward
        # without a policy is used all along and never refuses.
        def paced() -> tuple[int, int, float]:
            accepted = plain_ok = 0
            start = time.monotonic()
            for i in range(300):
                accepted += _attempt(limited.port)
                if i % 10 == 0:
                    plain_ok += _attempt(plain.port)
                time.sleep(max(0.0, start + (i + 1) * 0.01 - time.monotonic()))
            return accepted, plain_ok, time.monotonic() - start

        accepted, plain_ok, elapsed = await in_thread(paced)
        assert plain_ok == 30
        # Tokens earned in the run, plus the burst; the ends of the run are each a
        # fraction of a second from where sshd's opens were decided.
        expected = burst + rate * elapsed
        assert expected - rate * 0.5 - 2 <= accepted <= expected + rate * 0.2 + 1
        assert limited.refused == {"rate": 300 - accepted}
    finally:
        await tunnel.logoff()


@pytest_twisted.ensureDeferred
async def test_the_bandwidth_cap_is_measured_and_other_forwards_run_free(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    size, cap = 1 << 20, 256 * 1024

    def send_all(conn: socket.socket) -> None:
        conn.sendall(os.urandom(size))
        conn.shutdown(socket.SHUT_WR)

    source = TargetServer(send_all)
    tunnel = _tunnel(openssh_server, openssh_client_key, tmp_path)
    await tunnel.logon()
    try:
        capped = await _forward(tunnel, source.port, ForwardPolicy(bandwidth=cap))
        plain = await _forward(tunnel, source.port, None)

        def download(port: int) -> tuple[int, float]:
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as s:
                total = 0
                while chunk := s.recv(256 * 1024):
                    total += len(chunk)
            return total, time.monotonic() - start

        results: dict[str, tuple[int, float]] = {}

        def both() -> None:
            slow = threading.Thread(target=lambda: results.update(capped=download(capped.port)))
            slow.start()
            time.sleep(0.3)
            results["plain"] = download(plain.port)  # while the capped one runs
            slow.join(PATIENCE)

        await in_thread(both)
        capped_bytes, capped_time = results["capped"]
        plain_bytes, plain_time = results["plain"]
        assert capped_bytes == plain_bytes == size
        burst = cap / 10  # TokenBucket's default: a tenth of a second's worth
        expected = (size - burst) / cap  # 3.9 s
        assert 0.9 * expected <= capped_time <= 1.25 * expected + 0.3
        assert plain_time < 0.5 * expected
    finally:
        await tunnel.logoff()
        source.close()


@pytest_twisted.ensureDeferred
async def test_the_idle_timeout_closes_only_its_forwards_channel(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    tmp_path: Path,
    echo_server: TargetServer,
) -> None:
    tunnel = _tunnel(openssh_server, openssh_client_key, tmp_path)
    await tunnel.logon()
    try:
        timeout = 1.0
        idle = await _forward(tunnel, echo_server.port, ForwardPolicy(idle_timeout=timeout))
        plain = await _forward(tunnel, echo_server.port, None)

        def watch() -> tuple[float, bool]:
            quiet = _held(idle.port)
            busy = _held(plain.port)
            quiet.sendall(b"x")
            assert quiet.recv(1) == b"x"
            started = time.monotonic()
            with quiet:
                gone = quiet.recv(1)  # EOF once the idle channel is closed
            closed_after = time.monotonic() - started
            assert gone == b""
            time.sleep(1.0)
            with busy:
                busy.sendall(b"y")
                alive = busy.recv(1) == b"y"
            return closed_after, alive

        closed_after, alive = await in_thread(watch)
        # RELIABILITY.md C12's bound: T to T + T/20 after the last byte, plus the trip.
        assert timeout * 0.95 <= closed_after <= timeout * 1.1 + 0.5
        assert alive
    finally:
        await tunnel.logoff()


def test_the_command_with_o_forward_policy_status_and_metrics(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    echo_server: TargetServer,
    tmp_path: Path,
) -> None:
    control_dir = tmp_path / "control"
    control_dir.mkdir(mode=0o700)
    control = control_dir / "rtunnel.sock"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SSH_")},
        "HOME": str(home),
    }
    spec = f"0:127.0.0.1:{echo_server.port}"
    argv = [
        *[sys.executable, "-m", "rtunnel.cli", "-v", "-N", "-o", "BatchMode=yes"],
        *["-o", f"UserKnownHostsFile={openssh_server.known_hosts_path}"],
        *["-i", str(openssh_client_key), "-p", str(openssh_server.port)],
        *["-o", f"ControlSocket={control}", "-o", "HttpListen=127.0.0.1:0", "-R", spec],
        *["-o", "ForwardPolicy=0 deny=127.0.0.2 max_channels=50"],
        f"{openssh_server.user}@{openssh_server.host}",
    ]
    child = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    try:
        lines = _Lines(child)
        port = int(lines.wait_for(r"^Allocated port (\d+) for remote forward").group(1))
        http = int(lines.wait_for(r"Health and metrics on http://127\.0\.0\.1:(\d+)/").group(1))
        results = [_attempt(port, source) for source in ["127.0.0.1", "127.0.0.2"] * 20]
        assert results == [True, False] * 20
        deadline = time.monotonic() + PATIENCE
        while True:
            (tunnel,) = query(control)["tunnels"]
            (forward,) = tunnel["forwards"]
            if forward["refused"].get("denied") == 20 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert forward["policy"] == "deny=127.0.0.2/32 max_channels=50"
        assert forward["refused"] == {"denied": 20, "not-allowed": 0, "max-channels": 0, "rate": 0}
        assert forward["channels_total"] == 20
        status = subprocess.run(
            [sys.executable, "-m", "rtunnel.cli", "status", "-S", str(control)],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            env=env,
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=PATIENCE) as r:
            text = r.read().decode()
        refused = {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "rtunnel_forward_refused_total"
        }
        assert refused == {"denied": 20, "not-allowed": 0, "max-channels": 0, "rate": 0}
        assert status.stdout.splitlines()[-1] == (
            f"  {spec} policy: deny=127.0.0.2/32 max_channels=50; refused: denied 20, "
            "not-allowed 0, max-channels 0, rate 0"
        )
    finally:
        child.terminate()
        child.wait(PATIENCE)


class _Lines:
    """A child's stderr, read into lines by a thread; every wait has a deadline."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._child = child
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._child.stderr is not None
        for line in self._child.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; stderr:\n" + "\n".join(self.lines))


def _config_tunnel(server: OpenSSHServer, key: Path, forward: str) -> str:
    return f"""[tunnel.web]
host = "{server.host}"
Port = {server.port}
User = "{server.user}"
IdentityFile = "{key}"
UserKnownHostsFile = "{server.known_hosts_path}"
forwards = [{forward}]
"""


def test_the_config_file_runs_a_forward_table_policy_and_check_names_mistakes(
    openssh_server: OpenSSHServer,
    openssh_client_key: Path,
    echo_server: TargetServer,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SSH_")}, "HOME": str(home)}
    config = tmp_path / "tunnels.toml"
    target = f"127.0.0.1:{echo_server.port}"
    config.write_text(
        _config_tunnel(
            openssh_server,
            openssh_client_key,
            f'{{ listen = "0", target = "{target}", deny = ["127.0.0.2"], max_channels = 5 }}',
        )
    )
    check = [sys.executable, "-m", "rtunnel.cli", "--config", str(config), "--check"]
    run = subprocess.run(check, capture_output=True, text=True, env=env, timeout=PATIENCE)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    child = subprocess.Popen(
        [sys.executable, "-m", "rtunnel.cli", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        lines = _Lines(child)
        port = int(lines.wait_for(r"^\[web\] Allocated port (\d+) for remote forward").group(1))
        assert [_attempt(port, s) for s in ["127.0.0.2", "127.0.0.1"] * 10] == [False, True] * 10
    finally:
        child.terminate()
        child.wait(PATIENCE)

    config.write_text(
        _config_tunnel(
            openssh_server,
            openssh_client_key,
            f'{{ listen = "0", target = "{target}", deny = ["127.0.0.2/8"], rate = "lots" }}',
        )
        + 'ForwardPolicy = "9999 max_channels=1"\n'
    )
    run = subprocess.run(check, capture_output=True, text=True, env=env, timeout=PATIENCE)
    assert (run.returncode, run.stdout) == (255, "")
    assert run.stderr.splitlines() == [
        f"{config} line 7: tunnel.web.forwards[0].deny: '127.0.0.2/8' has host bits set: "
        "give the block's first address (127.0.0.0/8)",
        f"{config} line 7: tunnel.web.forwards[0].rate: 'lots' is not a rate: give N, N/s, "
        "N/m or N/h connections",
        f"{config} line 8: tunnel.web.ForwardPolicy: ForwardPolicy 9999: no remote forward "
        "listens there (give the listen side of one -R forward)",
    ]
