"""
The operations examples (issue #14) say what they claim: the systemd unit is a notify
service restarted on failure with a watchdog, its ExecStart is a command line rtunnel
accepts (parsed by the command's own parser), and the Prometheus scrape config scrapes
the address that command line listens on.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from rtunnel.cli import parse_command_line

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((EXAMPLES / "rtunnel.service").read_text())
    return unit


def test_the_unit_is_a_notify_service_with_a_watchdog() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert int(service["WatchdogSec"]) > 0
    assert service["RuntimeDirectoryMode"] == "0700"


def test_the_unit_runs_a_command_line_rtunnel_accepts() -> None:
    service = _unit()["Service"]
    program, *args = shlex.split(service["ExecStart"])
    assert program.endswith("/rtunnel")
    invocation = parse_command_line(args)
    options = invocation.options
    assert invocation.host == "gw.example.com"
    assert options.control_socket == f"/run/{service['RuntimeDirectory']}/control.sock"
    assert options.http_listen == "127.0.0.1:9180"
    assert options.exit_on_forward_failure


def test_prometheus_scrapes_where_the_unit_listens() -> None:
    service = _unit()["Service"]
    listen = re.search(r"HttpListen=(\S+)", service["ExecStart"])
    assert listen is not None
    scrape = (EXAMPLES / "prometheus.yml").read_text()
    assert re.findall(r'targets: \["([^"]+)"\]', scrape) == [listen.group(1)]
