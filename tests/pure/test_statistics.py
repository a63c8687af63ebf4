"""The tunnel's counters on their own (rtunnel/_statistics.py), and the pure test of
whether a connection showed that reconnecting works (rtunnel/_core/policy.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rtunnel._core.policy import connection_worked
from rtunnel._model import ChannelInfo
from rtunnel._statistics import CounterAlias, TunnelCounters


@dataclass
class _Transport:
    key_exchanges: int
    rekeys_by_us: int
    rekeys_by_peer: int


@dataclass
class _Channel:
    info: ChannelInfo


@dataclass
class _Conn:
    channels: dict[int, _Channel] = field(default_factory=dict)
    stopped: bool = False


@dataclass
class _Keepalive:
    sent: int


def _info(channel_id: int, sent: int, received: int) -> ChannelInfo:
    return ChannelInfo(
        channel_id, "forwarded-tcpip", "127.0.0.1", 8022, "10.0.0.9", 50000,
        bytes_sent=sent, bytes_received=received,
    )  # fmt: skip


def test_ended_sessions_and_closed_channels_add_to_the_live_ones() -> None:
    counters = TunnelCounters()
    counters.session_started()
    counters.channels_opened += 3
    counters.closed_bytes_sent += 100
    counters.closed_bytes_received += 7
    counters.session_ended(_Transport(key_exchanges=3, rekeys_by_us=1, rekeys_by_peer=1))
    counters.session_started()
    conn = _Conn({0: _Channel(_info(0, 10, 20)), 1: _Channel(_info(1, 1, 2))})
    stats = counters.snapshot(conn, _Transport(2, 1, 0), _Keepalive(4), forwards_active=2)
    assert stats.connected is True and stats.sessions == 2
    assert (stats.key_exchanges, stats.rekeys_by_us, stats.rekeys_by_server) == (2, 1, 0)
    assert (stats.total_key_exchanges, stats.total_rekeys_by_us) == (5, 2)
    assert stats.total_rekeys_by_server == 1
    assert stats.keepalives_sent == 4 and stats.forwards_active == 2
    assert (stats.channels_open, stats.channels_opened) == (2, 3)
    assert (stats.bytes_sent, stats.bytes_received) == (111, 29)


def test_between_sessions_only_what_ended_counts() -> None:
    counters = TunnelCounters()
    counters.session_started()
    counters.closed_bytes_sent = 5
    counters.session_ended(_Transport(1, 0, 0))
    stopped = _Conn({0: _Channel(_info(0, 1000, 1000))}, stopped=True)
    for conn in (None, stopped):
        stats = counters.snapshot(conn, None, None, forwards_active=0)
        assert stats.connected is False and stats.channels_open == 0
        assert (stats.bytes_sent, stats.bytes_received) == (5, 0)
        assert (stats.key_exchanges, stats.total_key_exchanges) == (0, 1)
        assert stats.keepalives_sent == 0 and stats.sessions == 1


class _Owner:
    opened = CounterAlias("channels_opened")
    sent = CounterAlias("closed_bytes_sent")

    def __init__(self) -> None:
        self._statistics = TunnelCounters()


def test_a_counter_alias_reads_and_writes_the_counter() -> None:
    owner = _Owner()
    owner.opened += 1
    owner.opened += 1
    owner.sent += 42
    assert (owner._statistics.channels_opened, owner._statistics.closed_bytes_sent) == (2, 42)
    owner._statistics.channels_opened = 7
    assert owner.opened == 7
    assert not hasattr(_Owner, "opened")  # on the class: no counter to read


@pytest.mark.parametrize(
    ("lasted", "received", "working_from", "worked"),
    [
        (60.0, 0, None, True),  # lasted reset_after: worked whatever it carried
        (59.9, 10, None, False),  # forwards never all re-established
        (5.0, 10, 10, False),  # re-established, but nothing from the server since
        (5.0, 11, 10, True),  # a packet after every forward was re-established
    ],
)
def test_a_connection_worked_when_it_lasted_or_carried_a_packet_after_the_forwards(
    lasted: float, received: int, working_from: int | None, worked: bool
) -> None:
    assert connection_worked(lasted, 60.0, received, working_from) is worked
