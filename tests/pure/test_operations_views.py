"""
The views of a status snapshot (issue #14), as plain functions on a fixed snapshot: the
``rtunnel status`` table and its JSON, the control protocol's answers, ``/metrics``
parsed back with prometheus_client's own parser, ``/readyz``'s reason, systemd's
``STATUS=`` text and variables, and a JSON log line. No socket, no reactor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import LogLevel

from rtunnel.operations.control import (
    format_status,
    handle_request,
    resolve_socket_path,
    status_from_json,
    status_to_json,
)
from rtunnel.operations.http import unready_reason
from rtunnel.operations.logs import MAX_MESSAGE, json_line
from rtunnel.operations.metrics import render
from rtunnel.operations.status import ForwardStatus, TunnelStatus
from rtunnel.operations.systemd import notify_address, summary, watchdog_interval

NOW = 1_800_000_000.0

WEB = ForwardStatus("8080:127.0.0.1:80", "active", "localhost:8080", 8080, 2, 17, 12345, 678)
SSH = ForwardStatus("0:127.0.0.1:22", "retrying", "localhost:0", None, 0, 3, 10, 20)
GW = TunnelStatus(
    name="gw",
    server="alice@gw.example.com:22",
    state="connected",
    since=NOW - 3723,
    reconnects=2,
    key_exchanges=5,
    last_error="Connection to gw.example.com closed by remote host.",
    last_error_time=NOW - 3724,
    forwards=(WEB, SSH),
)
IDLE = TunnelStatus("db", "bob@[::1]:2222", "waiting", NOW - 5, 0, 0, None, None, ())


class _Source:
    def __init__(self, tunnels: Sequence[TunnelStatus]) -> None:
        self.tunnels = tunnels

    def status(self) -> Sequence[TunnelStatus]:
        return self.tunnels


def _local(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def test_the_table_shows_every_field_an_operator_asked_for() -> None:
    since, error_at = _local(NOW - 3723), _local(NOW - 3724)
    assert format_status([GW, IDLE], NOW).splitlines() == [
        f"gw  alice@gw.example.com:22  connected since {since} (1h02m)  reconnects 2",
        f"  last error {error_at}: Connection to gw.example.com closed by remote host.",
        "  FORWARD            STATE     LISTEN          CHANNELS  BYTES IN  BYTES OUT",
        "  8080:127.0.0.1:80  active    localhost:8080      2/17     12345        678",
        "  0:127.0.0.1:22     retrying  localhost:0          0/3        10         20",
        f"db  bob@[::1]:2222  waiting since {_local(NOW - 5)} (5s)  reconnects 0",
        "  FORWARD  STATE  LISTEN  CHANNELS  BYTES IN  BYTES OUT",
    ]


def test_the_json_round_trips() -> None:
    data = json.loads(json.dumps(status_to_json(GW)))
    assert data["ready"] is False  # a forward is retrying
    assert data["forwards"][0] == {
        "name": "8080:127.0.0.1:80",
        "state": "active",
        "listen": "localhost:8080",
        "allocated_port": 8080,
        "channels_open": 2,
        "channels_total": 17,
        "bytes_in": 12345,
        "bytes_out": 678,
        "policy": "",
        "refused": {},
    }
    assert status_from_json(data) == GW


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"status", "a request is one JSON object per line"),
        (b'{"command": "stop"}', 'unknown command: send {"command": "status"}'),
        (b"[1]", 'unknown command: send {"command": "status"}'),
    ],
)
def test_the_control_protocol_refuses_what_it_does_not_know(line: bytes, error: str) -> None:
    assert handle_request(line, _Source([GW]), NOW) == {"ok": False, "error": error}


def test_the_control_protocol_answers_status() -> None:
    answer = handle_request(b'{"command": "status"}', _Source([GW, IDLE]), NOW)
    assert answer["ok"] is True and answer["now"] == NOW
    assert [status_from_json(t) for t in answer["tunnels"]] == [GW, IDLE]


def test_socket_paths() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/a"}
    assert str(resolve_socket_path("auto", pid=42, environ=env)) == "/run/user/1000/rtunnel/42.sock"
    assert str(resolve_socket_path("AUTO", pid=7, environ={"HOME": "/home/a"})) == (
        "/home/a/.rtunnel/7.sock"
    )
    assert resolve_socket_path("none", environ=env) is None
    assert str(resolve_socket_path("/tmp/x.sock", environ=env)) == "/tmp/x.sock"


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_carry_every_number_of_the_snapshot() -> None:
    samples = _samples(render(_Source([GW, IDLE])))
    gw, web = (("tunnel", "gw"),), (("forward", "8080:127.0.0.1:80"), ("tunnel", "gw"))
    ssh = (("forward", "0:127.0.0.1:22"), ("tunnel", "gw"))
    assert samples[("rtunnel_tunnel_ready", gw)] == 0
    assert samples[("rtunnel_tunnel_state", (("state", "connected"), ("tunnel", "gw")))] == 1
    assert samples[("rtunnel_tunnel_state", (("state", "waiting"), ("tunnel", "gw")))] == 0
    assert samples[("rtunnel_tunnel_state", (("state", "waiting"), ("tunnel", "db")))] == 1
    assert samples[("rtunnel_tunnel_state_since_seconds", gw)] == NOW - 3723
    assert samples[("rtunnel_tunnel_reconnects_total", gw)] == 2
    assert samples[("rtunnel_tunnel_key_exchanges_total", gw)] == 5
    assert samples[("rtunnel_tunnel_last_error_timestamp_seconds", gw)] == NOW - 3724
    assert ("rtunnel_tunnel_last_error_timestamp_seconds", (("tunnel", "db"),)) not in samples
    assert samples[("rtunnel_forward_state", (*web[:1], ("state", "active"), web[1]))] == 1
    assert samples[("rtunnel_forward_state", (*ssh[:1], ("state", "retrying"), ssh[1]))] == 1
    assert samples[("rtunnel_forward_allocated_port", web)] == 8080
    assert ("rtunnel_forward_allocated_port", ssh) not in samples
    assert samples[("rtunnel_forward_channels_open", web)] == 2
    assert samples[("rtunnel_forward_channels_total", web)] == 17
    assert samples[("rtunnel_forward_received_bytes_total", web)] == 12345
    assert samples[("rtunnel_forward_sent_bytes_total", web)] == 678
    # Five tunnel states for each of two tunnels, five forward states for each of two
    # forwards: nothing else is invented.
    states = [k for k in samples if k[0] == "rtunnel_tunnel_state"]
    forward_states = [k for k in samples if k[0] == "rtunnel_forward_state"]
    assert (len(states), len(forward_states)) == (10, 10)


def test_readyz_names_the_first_thing_not_up() -> None:
    ready = TunnelStatus("gw", "a@h:22", "connected", NOW, 0, 1, None, None, (WEB,))
    assert unready_reason([ready]) is None
    assert unready_reason([ready, GW]) == "tunnel gw: forward 0:127.0.0.1:22: retrying"
    assert unready_reason([IDLE]) == "tunnel db: waiting"
    assert unready_reason([]) == "no tunnel configured"


def test_systemd_status_line_and_variables() -> None:
    assert summary([GW, IDLE]) == (
        "gw: connected, 1/2 forwards active; db: waiting, 0/0 forwards active"
    )
    long = summary([GW] * 50)
    assert len(long) == 200 + len("...") and long.endswith("...")
    assert notify_address({"NOTIFY_SOCKET": "@sd-notify"}) == "\0sd-notify"
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert notify_address({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval({}) is None


def test_a_json_log_line_is_one_escaped_capped_object() -> None:
    forged = 'banner\n{"level": "critical"}\x1b[2J' + "x" * (2 * MAX_MESSAGE)
    line = json_line(NOW + 0.25, LogLevel.warn, "gw", forged, "boom\r\nagain")
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["time"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW)) + ".250Z"
    assert (record["level"], record["tunnel"]) == ("warn", "gw")
    message = record["message"]
    # The original is cut at MAX_MESSAGE characters; the one ESC grew by 3 when escaped.
    assert "\x1b" not in message and len(message) == MAX_MESSAGE + 3 + len("...")
    assert record["message"].startswith("banner\n")  # a banner keeps its lines (D17)
    assert "\r" not in record["error"]
