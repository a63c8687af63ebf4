"""
The forward table on its own (rtunnel/_forward_table.py): a real ForwardingConnection over
a fake SSH transport that records the global requests, a task.Clock for the retries, and
a recording host in place of the tunnel. The server's answers are fed in by hand.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from rtunnel._core import wire
from rtunnel._forward_table import ForwardTable, new_forward
from rtunnel._model import Forward, ForwardState
from rtunnel.client.channels import connection as c
from rtunnel.errors import (
    ForwardingError,
    ForwardRetryLimitError,
    NotConnectedError,
    RTunnelError,
    SpecError,
)

U32 = struct.Struct(">L")


class _SSH:
    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.transport = None

    def sendPacket(self, message: int, payload: bytes) -> None:  # noqa: N802
        self.packets.append((message, bytes(payload)))

    def requests(self) -> list[tuple[bytes, int]]:
        """(request name, port) of every global request sent."""
        out = []
        for m, p in self.packets:
            if m == c.MSG_GLOBAL_REQUEST:
                name, rest = wire.decode_string(p, 0)
                _address, offset = wire.decode_string(p, rest + 1)
                out.append((name, U32.unpack_from(p, offset)[0]))
        return out


class _Host:
    """The tunnel's side, recorded; retries 5 s apart, at most ``max_retries``."""

    def __init__(self, clock: Clock, max_retries: int = 3) -> None:
        self.conn: c.ForwardingConnection | None = None
        self.reconnecting = False
        self.stop_on_refusal = False
        self.max_retries = max_retries
        self.retries: list[tuple[int, int]] = []
        self.states: list[tuple[int, ForwardState]] = []
        self.errors: list[RTunnelError] = []
        self.fatal: list[ForwardingError] = []

    def connection(self) -> c.ForwardingConnection | None:
        return self.conn

    def waiting_to_reconnect(self) -> bool:
        return self.reconnecting

    def next_retry(self, retry: int, error: Exception, port: int) -> float | None:
        self.retries.append((retry, port))
        return None if retry > self.max_retries else 5.0

    def refused_again(self, error: ForwardingError) -> bool:
        if self.stop_on_refusal:
            self.fatal.append(error)
        return self.stop_on_refusal

    def changed(self, forward: Forward) -> None:
        self.states.append((forward.requested_port, forward.state))

    def error(self, error: RTunnelError) -> None:
        self.errors.append(error)

    def log(self, level: int, message: str) -> None:
        pass


class _Rig:
    def __init__(self, max_retries: int = 3) -> None:
        self.clock = Clock()
        self.host = _Host(self.clock, max_retries)
        self.table = ForwardTable(self.clock, self.host, "server")
        self.connect()

    def connect(self) -> None:
        self.ssh = _SSH()
        conn = c.ForwardingConnection(
            None,  # type: ignore[arg-type]  # no channels in these tests
            window_size=1 << 16,
            max_packet=1 << 14,
            max_channels=4,
            on_started=lambda conn: None,
            on_stopped=lambda conn: None,
        )
        conn.transport = self.ssh  # type: ignore[assignment]
        conn.serviceStarted()
        self.host.conn = conn

    def lose(self) -> None:
        assert self.host.conn is not None
        self.host.conn.serviceStopped()
        self.host.conn = None
        self.table.lost()

    def agree(self, port: int | None = None) -> None:
        assert self.host.conn is not None
        payload = U32.pack(port) if port is not None else b""
        self.host.conn.packetReceived(c.MSG_REQUEST_SUCCESS, payload)

    def refuse(self) -> None:
        assert self.host.conn is not None
        self.host.conn.packetReceived(c.MSG_REQUEST_FAILURE, b"")

    def request(self, port: int) -> Deferred[Forward]:
        forward = new_forward("127.0.0.1", port, None, None, Factory.forProtocol(Protocol), None)
        return Deferred.fromCoroutine(self.table.request(forward))


def _outcome(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_a_request_agreed_is_active_and_matched() -> None:
    rig = _Rig()
    seen = _outcome(rig.request(0))
    assert rig.ssh.requests() == [(b"tcpip-forward", 0)] and seen == []
    rig.agree(40001)
    (forward,) = seen
    assert forward.port == 40001 and forward.state is ForwardState.ACTIVE
    assert rig.table.find("127.0.0.1", 40001) is forward
    assert rig.table.find("127.0.0.1", 40002) is None
    assert rig.table.active() == [forward]
    assert rig.host.states == [(0, ForwardState.ACTIVE)]


def test_a_refused_first_request_is_forgotten() -> None:
    rig = _Rig()
    seen = _outcome(rig.request(7000))
    rig.refuse()
    assert isinstance(seen[0], Failure) and seen[0].check(ForwardingError)
    assert str(seen[0].value) == "remote port forwarding failed for listen port 7000"
    assert rig.table.forwards == [] and rig.host.states == [(7000, ForwardState.FAILED)]


def test_not_connected_and_not_reconnecting_is_an_error() -> None:
    rig = _Rig()
    rig.host.conn = None
    seen = _outcome(rig.request(7000))
    assert seen[0].check(NotConnectedError) and rig.table.forwards == []


def test_bad_arguments_name_what_is_wrong() -> None:
    with pytest.raises(SpecError, match="Bad listen port 70000"):
        new_forward("", 70000, "h", 1, None, None)
    with pytest.raises(SpecError, match="Bad local port 0"):
        new_forward("", 1, "h", 0, None, None)


def test_after_a_loss_each_forward_is_asked_again_and_refusals_retried_on_the_clock() -> None:
    # A9: the re-request is refused (a stale session holds the port); retried every 5 s
    # on the clock until agreed; the backoff bookkeeping is per forward.
    rig = _Rig()
    first = _outcome(rig.request(7000))
    rig.agree()
    (forward,) = first
    rig.lose()
    assert forward.state is ForwardState.PENDING
    rig.connect()
    again = _outcome(Deferred.fromCoroutine(rig.table.reestablish()))
    rig.refuse()
    assert again == [None] and forward.state is ForwardState.RETRYING
    assert len(rig.clock.getDelayedCalls()) == 1
    rig.clock.advance(5)
    rig.refuse()
    rig.clock.advance(5)
    rig.agree()
    assert forward.state is ForwardState.ACTIVE and rig.clock.getDelayedCalls() == []
    assert rig.host.retries == [(1, 7000), (2, 7000)]
    assert rig.ssh.requests() == [(b"tcpip-forward", 7000)] * 3
    assert rig.table.working_from is not None


def test_retries_give_up_after_the_policy_limit() -> None:
    rig = _Rig(max_retries=2)
    _outcome(rig.request(7000))
    rig.agree()
    rig.lose()
    rig.connect()
    Deferred.fromCoroutine(rig.table.reestablish())
    for _ in range(3):
        rig.refuse()
        rig.clock.advance(5)
    assert rig.table.forwards == [] and rig.clock.getDelayedCalls() == []
    (error,) = rig.host.errors
    assert isinstance(error, ForwardRetryLimitError) and "after 2 retries" in str(error)
    assert rig.host.states[-1] == (7000, ForwardState.FAILED)
    assert rig.ssh.requests() == [(b"tcpip-forward", 7000)] * 3


def test_exit_on_forward_failure_hands_the_refusal_to_the_tunnel() -> None:
    rig = _Rig()
    _outcome(rig.request(7000))
    rig.agree()
    rig.lose()
    rig.connect()
    rig.host.stop_on_refusal = True
    Deferred.fromCoroutine(rig.table.reestablish())
    rig.refuse()
    assert len(rig.host.fatal) == 1 and rig.clock.getDelayedCalls() == []


def test_a_request_waiting_for_the_reconnect_is_answered_by_the_re_request() -> None:
    rig = _Rig()
    rig.host.conn = None
    rig.host.reconnecting = True
    seen = _outcome(rig.request(7000))
    assert seen == [] and [f.state for f in rig.table.forwards] == [ForwardState.PENDING]
    rig.connect()
    Deferred.fromCoroutine(rig.table.reestablish())
    rig.agree()
    assert len(seen) == 1 and seen[0].state is ForwardState.ACTIVE


def test_stop_fails_the_waiting_requests_and_ends_every_forward() -> None:
    rig = _Rig()
    _outcome(rig.request(7000))
    rig.agree()
    rig.host.conn = None
    rig.host.reconnecting = True
    waiting = _outcome(rig.request(7001))
    rig.table.stop(None, Failure(ForwardingError("stopped")))
    assert waiting[0].check(ForwardingError) and rig.table.forwards == []
    assert rig.host.states[-2:] == [(7000, ForwardState.CANCELLED), (7001, ForwardState.CANCELLED)]


def test_cancel_of_a_port_zero_re_request_cancels_the_port_the_server_allocates() -> None:
    # The cancel names the old allocation; the re-request's agreement names another
    # port, which is cancelled too: nothing of ours stays listening.
    rig = _Rig()
    first = _outcome(rig.request(0))
    rig.agree(40001)
    (forward,) = first
    rig.lose()
    rig.connect()
    Deferred.fromCoroutine(rig.table.reestablish())
    cancelled = _outcome(Deferred.fromCoroutine(rig.table.cancel("127.0.0.1", 40001)))
    rig.agree(40002)  # the re-request's
    rig.agree()  # the cancel's of 40001
    assert cancelled == [None] and forward.state is ForwardState.CANCELLED
    assert rig.ssh.requests() == [  # on the new connection
        (b"tcpip-forward", 0),
        (b"cancel-tcpip-forward", 40001),
        (b"cancel-tcpip-forward", 40002),
    ]


def test_a_caller_giving_up_on_a_refused_request_sends_no_cancel() -> None:
    rig = _Rig()
    seen = rig.request(7000)
    seen.cancel()
    assert _outcome(seen)[0].check(CancelledError)
    rig.refuse()
    assert rig.ssh.requests() == [(b"tcpip-forward", 7000)]
    assert rig.host.states == [(7000, ForwardState.CANCELLED)]
