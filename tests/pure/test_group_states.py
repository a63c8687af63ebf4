"""The decisions of a tunnel group (rtunnel/_core/group.py), as plain functions of a time."""

from __future__ import annotations

import pytest

from rtunnel._core.group import (
    GroupMode,
    ServerHealth,
    choose_server,
    failback_due,
    group_ready,
    parse_mode,
    server_role,
)

UP = ServerHealth(up=True, up_since=0.0)
DOWN = ServerHealth(up=False)
FAILED = ServerHealth(up=False, failed=True)


def up_since(t: float) -> ServerHealth:
    return ServerHealth(up=True, up_since=t)


@pytest.mark.parametrize(
    ("servers", "current", "expected"),
    [
        # Nobody serves yet: the first server that is up, in list order.
        ([UP, UP, UP], None, 0),
        ([DOWN, UP, UP], None, 1),
        ([DOWN, DOWN, UP], None, 2),
        ([DOWN, DOWN, DOWN], None, None),
        ([FAILED, UP], None, 1),
        # The serving server is lost: the first one that is up, at once.
        ([DOWN, UP, UP], 0, 1),
        ([UP, DOWN, UP], 1, 0),
        ([DOWN, DOWN, UP], 1, 2),
        ([DOWN, DOWN, DOWN], 2, None),
        ([UP, FAILED], 1, 0),
        # The serving server is up: it stays (failback off), whoever else came back.
        ([UP, UP, UP], 1, 1),
        ([UP, UP, UP], 2, 2),
        # An index out of range (a shorter list after a change) is as none.
        ([UP], 3, 0),
    ],
)
def test_choose_without_failback(
    servers: list[ServerHealth], current: int | None, expected: int | None
) -> None:
    assert choose_server(servers, current, now=100.0, failback_after=None) == expected


def test_at_start_an_earlier_server_still_logging_on_is_waited_for() -> None:
    trying = ServerHealth(up=False, tried=False)
    assert choose_server([trying, UP], None, now=1.0, failback_after=None) is None
    assert choose_server([DOWN, trying, UP], None, now=1.0, failback_after=None) is None
    assert choose_server([UP, trying], None, now=1.0, failback_after=None) == 0
    assert choose_server([DOWN, UP, trying], None, now=1.0, failback_after=None) == 1
    # Once serving, a lost server is left at once, whoever is still trying.
    assert choose_server([trying, DOWN, UP], 1, now=1.0, failback_after=None) == 2


def test_failback_waits_until_the_first_server_has_been_up_long_enough() -> None:
    servers = [up_since(90.0), up_since(0.0)]
    assert choose_server(servers, 1, now=99.9, failback_after=10.0) == 1
    assert failback_due(servers, 1, now=99.9, failback_after=10.0) == 100.0
    assert choose_server(servers, 1, now=100.0, failback_after=10.0) == 0
    # Serving from the first: nothing earlier to fall back to.
    assert failback_due(servers, 0, now=100.0, failback_after=10.0) is None


def test_failback_goes_to_the_first_settled_server_in_order() -> None:
    servers = [up_since(95.0), up_since(50.0), up_since(0.0)]
    # The second has been up 50 s, the first 5 s: back to the second for now.
    assert choose_server(servers, 2, now=100.0, failback_after=30.0) == 1
    assert failback_due(servers, 1, now=100.0, failback_after=30.0) == 125.0
    assert choose_server(servers, 1, now=125.0, failback_after=30.0) == 0


def test_a_break_restarts_the_healthy_delay() -> None:
    # up_since is the last logon: a server that flapped is judged from its return.
    servers = [up_since(99.0), up_since(0.0)]
    assert choose_server(servers, 1, now=100.0, failback_after=60.0) == 1
    assert failback_due(servers, 1, now=100.0, failback_after=60.0) == 159.0
    down = [DOWN, up_since(0.0)]
    assert failback_due(down, 1, now=100.0, failback_after=60.0) is None


def test_no_failback_timer_when_off_or_nothing_earlier() -> None:
    assert failback_due([up_since(0.0), UP], 1, now=5.0, failback_after=None) is None
    assert failback_due([DOWN, UP], 1, now=5.0, failback_after=10.0) is None
    assert failback_due([FAILED, UP], 1, now=5.0, failback_after=10.0) is None
    assert failback_due([UP, UP], None, now=5.0, failback_after=10.0) is None


@pytest.mark.parametrize(
    ("mode", "serving", "up", "active", "ready"),
    [
        # failover: the serving server has every forward active.
        (GroupMode.FAILOVER, 0, [True, True], [[True, True], [False, False]], True),
        (GroupMode.FAILOVER, 0, [True, True], [[True, False], [True, True]], False),
        (GroupMode.FAILOVER, 1, [False, True], [[False, False], [True, True]], True),
        (GroupMode.FAILOVER, None, [False, False], [[False], [False]], False),
        (GroupMode.FAILOVER, 0, [False, True], [[True], [False]], False),
        (GroupMode.FAILOVER, 0, [True], [[]], True),
        (GroupMode.FAILOVER, None, [True], [[]], False),
        # all: every forward on at least one server.
        (GroupMode.ALL, None, [True, True], [[True, False], [False, True]], True),
        (GroupMode.ALL, None, [True, False], [[True, True], [False, False]], True),
        (GroupMode.ALL, None, [True, True], [[True, False], [True, False]], False),
        (GroupMode.ALL, None, [False, False], [[False], [False]], False),
        (GroupMode.ALL, None, [False, True], [[], []], True),
        (GroupMode.ALL, None, [False, False], [[], []], False),
    ],
)
def test_ready(
    mode: GroupMode,
    serving: int | None,
    up: list[bool],
    active: list[list[bool]],
    ready: bool,
) -> None:
    assert group_ready(mode, serving, up, active) is ready


@pytest.mark.parametrize(
    ("mode", "index", "serving", "health", "role"),
    [
        (GroupMode.FAILOVER, 0, 0, UP, "serving"),
        (GroupMode.FAILOVER, 1, 0, UP, "standby"),
        (GroupMode.FAILOVER, 1, 0, DOWN, "down"),
        (GroupMode.FAILOVER, 1, 0, FAILED, "failed"),
        (GroupMode.ALL, 1, None, UP, "serving"),
        (GroupMode.ALL, 1, None, DOWN, "down"),
    ],
)
def test_roles(
    mode: GroupMode, index: int, serving: int | None, health: ServerHealth, role: str
) -> None:
    assert server_role(mode, index, serving, health) == role


def test_modes() -> None:
    assert parse_mode("failover") is GroupMode.FAILOVER
    assert parse_mode("ALL") is GroupMode.ALL
    with pytest.raises(ValueError, match="give failover or all"):
        parse_mode("round-robin")
