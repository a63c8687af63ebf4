"""
A tunnel group's snapshot (issue #15) in every view, as plain functions on a fixed
snapshot: the ``rtunnel status`` table and its JSON, ``/metrics``, ``/readyz``'s reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from rtunnel.operations.control import format_status, status_from_json, status_to_json
from rtunnel.operations.http import unready_reason
from rtunnel.operations.metrics import render
from rtunnel.operations.status import ForwardStatus, GroupMember, GroupStatus, TunnelStatus

NOW = 1_800_000_000.0

WEB = ForwardStatus(
    "8080:127.0.0.1:80", "active", "localhost:8080", 8080, 1, 4, 100, 200, servers=("gw2",)
)
GROUP = GroupStatus(
    mode="failover",
    serving="gw2",
    ready=True,
    members=(
        GroupMember("gw1", "t@gw1:22", "down", "waiting", NOW - 30, 3, "Connection reset", ()),
        GroupMember("gw2", "t@gw2:22", "serving", "connected", NOW - 65, 0, None, (WEB.name,)),
        GroupMember("gw3", "t@gw3:2222", "standby", "connected", NOW - 65, 0, None, ()),
    ),
)
WEBGROUP = TunnelStatus(
    "web", "t@gw2:22", "connected", NOW - 65, 3, 4, None, None, (WEB,), group=GROUP
)


class _Source:
    def __init__(self, tunnels: Sequence[TunnelStatus]) -> None:
        self.tunnels = tunnels

    def status(self) -> Sequence[TunnelStatus]:
        return self.tunnels


def test_the_table_shows_each_server_and_where_each_forward_is() -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW - 65))
    assert format_status([WEBGROUP], NOW).splitlines() == [
        f"web  t@gw2:22  connected since {since} (1m05s)  reconnects 3",
        "  group failover, serving gw2, ready",
        "    SERVER  ADDRESS     ROLE     STATE      FOR",
        "    gw1     t@gw1:22    down     waiting    30s",
        "    gw2     t@gw2:22    serving  connected  1m05s",
        "    gw3     t@gw3:2222  standby  connected  1m05s",
        "  FORWARD            STATE   LISTEN          CHANNELS  BYTES IN  BYTES OUT  ON",
        "  8080:127.0.0.1:80  active  localhost:8080       1/4       100        200  gw2",
    ]


def test_the_json_round_trips_with_the_group() -> None:
    data = json.loads(json.dumps(status_to_json(WEBGROUP)))
    assert data["ready"] is True
    assert data["group"]["serving"] == "gw2"
    assert [m["role"] for m in data["group"]["members"]] == ["down", "serving", "standby"]
    assert data["forwards"][0]["servers"] == ["gw2"]
    assert status_from_json(data) == WEBGROUP


def test_ready_is_the_modes_condition() -> None:
    assert unready_reason([WEBGROUP]) is None
    # The group's own word counts, whatever one server's state.
    down = replace(WEBGROUP, group=replace(GROUP, ready=False, serving=None))
    assert unready_reason([down]) == "tunnel web: no server of the group is logged on"
    moving = replace(
        WEBGROUP,
        forwards=(replace(WEB, state="pending", servers=()),),
        group=replace(GROUP, ready=False),
    )
    assert (
        unready_reason([moving])
        == "tunnel web: forward 8080:127.0.0.1:80: not active on gw2 (pending)"
    )
    nowhere = replace(moving, group=replace(GROUP, mode="all", serving=None, ready=False))
    assert (
        unready_reason([nowhere])
        == "tunnel web: forward 8080:127.0.0.1:80: active on no server (pending)"
    )
    assert not down.ready and WEBGROUP.ready


def test_metrics_per_server() -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render(_Source([WEBGROUP])).decode())
        for s in family.samples
    }

    def server(name: str, metric: str, **extra: str) -> float:
        labels = tuple(sorted({"group": "web", "server": name, **extra}.items()))
        return samples[(metric, labels)]

    assert [server(n, "rtunnel_group_server_up") for n in ("gw1", "gw2", "gw3")] == [0, 1, 1]
    assert [server(n, "rtunnel_group_server_serving") for n in ("gw1", "gw2", "gw3")] == [
        0,
        1,
        0,
    ]
    assert server("gw3", "rtunnel_group_server_role", role="standby") == 1
    assert server("gw3", "rtunnel_group_server_role", role="serving") == 0
    roles = [k for k in samples if k[0] == "rtunnel_group_server_role"]
    assert len(roles) == 3 * 4
    on = (("forward", WEB.name), ("group", "web"))
    assert samples[("rtunnel_group_forward_servers", on)] == 1
    assert samples[("rtunnel_tunnel_ready", (("tunnel", "web"),))] == 1
