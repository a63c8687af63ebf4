"""
The control socket, the HTTP listener and systemd notifications on real sockets (issue
#14), each reading a fixed StatusSource: who may open the control socket and what
``rtunnel status`` says, with nothing running or a stale socket left behind; what
``/healthz``, ``/readyz`` and ``/metrics`` answer; and what a fake ``NOTIFY_SOCKET``
receives, on a path and in the abstract namespace. The blocking clients run in a thread
(``deferToThread``) while the reactor serves.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from rtunnel.operations.control import ControlError, listen_control, query, status_main
from rtunnel.operations.http import listen_http
from rtunnel.operations.status import ForwardStatus, TunnelStatus
from rtunnel.operations.systemd import SystemdNotifier

UP = ForwardStatus("8080:127.0.0.1:80", "active", "localhost:8080", 8080, 1, 4, 100, 200)
DOWN = ForwardStatus("8080:127.0.0.1:80", "pending", "localhost:8080", None, 0, 4, 100, 200)


def _tunnel(state: str, forward: ForwardStatus) -> TunnelStatus:
    return TunnelStatus("gw", "alice@gw:22", state, 1000.0, 1, 2, None, None, (forward,))


class _Source:
    def __init__(self, tunnels: Sequence[TunnelStatus]) -> None:
        self.tunnels = tunnels

    def status(self) -> Sequence[TunnelStatus]:
        return self.tunnels


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rtunnel"
    directory.mkdir(mode=0o700)
    return directory


# -- the control socket ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_over_the_control_socket(private_dir: Path) -> None:
    path = private_dir / "1.sock"
    port = listen_control(reactor, path, _Source([_tunnel("connected", UP)]))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
        answer = await deferToThread(query, path)
        assert answer["ok"] is True and answer["pid"] == os.getpid()
        assert [t["state"] for t in answer["tunnels"]] == ["connected"]
        out, err = io.StringIO(), io.StringIO()
        status = await deferToThread(status_main, ["-S", str(path)], stdout=out, stderr=err)
        assert (status, err.getvalue()) == (0, "")
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("gw  alice@gw:22  connected since ")
        assert lines[2].split() == [
            "8080:127.0.0.1:80",
            "active",
            "localhost:8080",
            "1/4",
            "100",
            "200",
        ]
        out = io.StringIO()
        status = await deferToThread(status_main, ["--json", f"-S{path}"], stdout=out, stderr=err)
        (shown,) = json.loads(out.getvalue())["rtunnels"]
        assert (status, shown["socket"], shown["tunnels"][0]["forwards"][0]["bytes_out"]) == (
            0,
            str(path),
            200,
        )
        # A second rtunnel on the same socket is refused, and the first one keeps it.
        with pytest.raises(ControlError, match="another rtunnel already listens"):
            listen_control(reactor, path, _Source([]))
    finally:
        await port.stopListening()
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_a_request_line_too_long_is_refused(private_dir: Path) -> None:
    path = private_dir / "2.sock"
    port = listen_control(reactor, path, _Source([]))

    def ask() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b"x" * 10_000 + b"\n")
            return s.makefile("rb").readline()

    try:
        answer = json.loads(await deferToThread(ask))
        assert answer == {"ok": False, "error": "request too long"}
    finally:
        await port.stopListening()


def test_nothing_running(tmp_path: Path) -> None:
    err = io.StringIO()
    assert status_main([], stdout=io.StringIO(), stderr=err, environ={"HOME": str(tmp_path)}) == 255
    assert err.getvalue() == (
        f"rtunnel status: no rtunnel running (no control socket in {tmp_path}/.rtunnel; "
        "start rtunnel with -o ControlSocket=auto)\n"
    )
    err = io.StringIO()
    missing = tmp_path / "none.sock"
    assert status_main(["-S", str(missing)], stdout=io.StringIO(), stderr=err) == 255
    assert err.getvalue() == f"rtunnel status: no rtunnel running at {missing}\n"


def test_a_stale_socket_is_named_and_replaced(private_dir: Path) -> None:
    stale = private_dir / "3.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: what a killed rtunnel leaves
    err = io.StringIO()
    assert status_main(["-S", str(stale)], stdout=io.StringIO(), stderr=err) == 255
    assert err.getvalue() == (
        f"rtunnel status: no rtunnel running at {stale} (a socket left behind: remove it)\n"
    )
    port = listen_control(reactor, stale, _Source([]))
    try:
        assert stat.S_ISSOCK(stale.stat().st_mode)
    finally:
        port.stopListening()


def test_a_directory_others_can_enter_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(ControlError) as raised:
        listen_control(reactor, shared / "1.sock", _Source([]))
    assert str(raised.value) == (
        f"control socket directory {shared} is open to others (mode 0755): run chmod 700 {shared}"
    )
    assert list(shared.iterdir()) == []


# -- HTTP -------------------------------------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers["content-type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read().decode()


@pytest_twisted.ensureDeferred
async def test_health_ready_and_metrics() -> None:
    source = _Source([_tunnel("connected", UP)])
    listening = listen_http(reactor, source, "127.0.0.1", 0)
    port = listening.getHost().port  # type: ignore[attr-defined]
    try:
        assert await deferToThread(_get, port, "/healthz") == (
            200,
            "text/plain; charset=utf-8",
            "ok\n",
        )
        assert await deferToThread(_get, port, "/readyz") == (
            200,
            "text/plain; charset=utf-8",
            "ready\n",
        )
        code, kind, text = await deferToThread(_get, port, "/metrics")
        assert (code, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
        assert (
            'rtunnel_forward_sent_bytes_total{forward="8080:127.0.0.1:80",tunnel="gw"} 200.0'
            in text
        )
        source.tunnels = [_tunnel("connected", DOWN)]
        assert await deferToThread(_get, port, "/readyz") == (
            503,
            "text/plain; charset=utf-8",
            "not ready: tunnel gw: forward 8080:127.0.0.1:80: pending\n",
        )
        source.tunnels = [_tunnel("waiting", DOWN)]
        assert (await deferToThread(_get, port, "/readyz"))[2] == "not ready: tunnel gw: waiting\n"
        assert (await deferToThread(_get, port, "/healthz"))[0] == 200
        assert (await deferToThread(_get, port, "/other"))[0] == 404
    finally:
        await listening.stopListening()


# -- systemd -------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, socket.socket]]:
    """A fake systemd: a datagram socket and the NOTIFY_SOCKET value naming it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        s.bind(address)
        value = address
    else:
        name = f"rtunnel-test-{os.getpid()}-{id(s)}"
        s.bind("\0" + name)
        value = "@" + name
    s.setblocking(False)
    yield value, s
    s.close()


def _received(s: socket.socket) -> list[str]:
    """The datagrams waiting, sorted: timers due at the same moment run in any order."""
    messages = []
    while True:
        try:
            messages.append(s.recv(4096).decode())
        except BlockingIOError:
            return sorted(messages)


def test_systemd_hears_ready_once_then_status_changes_and_watchdog(
    notify_socket: tuple[str, socket.socket],
) -> None:
    value, listener = notify_socket
    clock = Clock()
    source = _Source([_tunnel("connecting", DOWN)])
    env = {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "4000000"}
    notifier = SystemdNotifier(clock, source, env, interval=1.0)
    notifier.start()
    assert _received(listener) == ["STATUS=gw: connecting, 0/1 forwards active", "WATCHDOG=1"]
    clock.advance(1)
    assert _received(listener) == []  # nothing changed, and the watchdog is every 2 s
    source.tunnels = [_tunnel("connected", UP)]
    clock.advance(1)
    assert _received(listener) == [
        "READY=1\nSTATUS=gw: connected, 1/1 forwards active",
        "WATCHDOG=1",
    ]
    source.tunnels = [_tunnel("waiting", DOWN)]
    clock.advance(1)
    source.tunnels = [_tunnel("connected", UP)]
    clock.advance(1)
    # READY=1 once only: after a reconnect it is a STATUS line like any other.
    assert _received(listener) == [
        "STATUS=gw: connected, 1/1 forwards active",
        "STATUS=gw: waiting, 0/1 forwards active",
        "WATCHDOG=1",
    ]
    source.tunnels = [_tunnel("failed", DOWN)]
    clock.advance(2)
    # A failed tunnel does not come back by itself: no more watchdog pings.
    assert _received(listener) == ["STATUS=gw: failed, 0/1 forwards active"]
    notifier.stop()
    assert _received(listener) == ["STOPPING=1"]
    assert clock.getDelayedCalls() == []


def test_without_notify_socket_nothing_is_sent() -> None:
    clock = Clock()
    notifier = SystemdNotifier(clock, _Source([_tunnel("connected", UP)]), {}, interval=1.0)
    notifier.start()
    notifier.stop()
    assert (notifier.enabled, notifier.ready_sent, clock.getDelayedCalls()) == (False, False, [])


def test_a_change_between_ticks_is_not_missed(tmp_path: Path) -> None:
    # Ready, then lost, within one interval: the tick alone would never see it ready.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)
    clock = Clock()
    source = _Source([_tunnel("connecting", DOWN)])
    notifier = SystemdNotifier(clock, source, {"NOTIFY_SOCKET": str(tmp_path / "notify")}, 10)
    notifier.start()
    clock.advance(1)
    source.tunnels = [_tunnel("connected", UP)]
    notifier.changed()
    notifier.changed()  # coalesced: one look
    clock.advance(0)
    source.tunnels = [_tunnel("waiting", DOWN)]
    notifier.changed()
    clock.advance(0)
    assert _received(listener) == [
        "READY=1\nSTATUS=gw: connected, 1/1 forwards active",
        "STATUS=gw: connecting, 0/1 forwards active",
        "STATUS=gw: waiting, 0/1 forwards active",
    ]
    notifier.stop()
    notifier.changed()  # after stop: nothing
    assert (_received(listener), clock.getDelayedCalls()) == (["STOPPING=1"], [])
    listener.close()
