"""
The tunnel's table of remote forwards: requesting (``tcpip-forward``,
``streamlocal-forward@openssh.com``), cancelling, asking again after a reconnect, the
per-forward retries on the clock, the answers to ``request_forwarding()`` calls that wait
for a reconnect, and matching an inbound open to a forward. Every change of a forward's
state goes through the transition table of :mod:`rtunnel._core.forwards`.

What the table needs of the tunnel (the live connection, the retry policy and its
announcements, observers) is a :class:`ForwardTableHost`.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtunnel._core import wire
from rtunnel._core.forward_policy import ForwardPolicy
from rtunnel._core.forwards import (
    ForwardEvent,
    allows,
    match_forward,
    match_socket_forward,
    next_state,
)
from rtunnel._model import AcceptHook, Forward, ForwardState
from rtunnel.client.channels.connection import ForwardingConnection
from rtunnel.errors import (
    ConnectionLostError,
    ForwardingError,
    ForwardRetryLimitError,
    NotConnectedError,
    RTunnelError,
    SpecError,
)

__all__ = ["ForwardTable", "ForwardTableHost", "new_forward"]

# The facade's namespace, as before these lines moved out of rtunnel/tunnel.py.
_log = Logger(namespace="rtunnel.tunnel")


class ForwardTableHost(Protocol):
    """What the :class:`ForwardTable` asks of the tunnel it serves."""

    def connection(self) -> ForwardingConnection | None:
        """The live connection, or None between connections."""

    def waiting_to_reconnect(self) -> bool:
        """Between connections, with a reconnect scheduled or its logon under way."""

    def next_retry(self, retry: int, error: Exception, port: int) -> float | None:
        """Announce retry ``retry`` of the forward of ``port``; its delay, or None to give up."""

    def refused_again(self, error: ForwardingError) -> bool:
        """A re-request after a reconnect was refused: True when the tunnel stops for it
        (``exit_on_forward_failure``), False to retry the forward on its own schedule."""

    def changed(self, forward: Forward) -> None:
        """``forward`` changed state (observers' ``forward_state_changed``)."""

    def error(self, error: RTunnelError) -> None:
        """An error that fails no call of the user's."""

    def log(self, level: int, message: str) -> None:
        """A log line at the reference's ``level`` (1 info, 2 verbose)."""


def check_policy(policy: object, listen_path: str | None) -> None:
    """Refuse what is not a policy, or allow and deny lists for a socket forward."""
    if policy is not None and not isinstance(policy, ForwardPolicy):
        raise SpecError("policy must be a ForwardPolicy (or None).")
    if policy is not None and listen_path is not None and policy.filters_originators:
        raise SpecError(
            "A socket forward has no originator address: allow and deny cannot apply to it."
        )


def new_forward(
    bind_address: str,
    port: int,
    host: str | None,
    host_port: int | None,
    factory: IProtocolFactory | None,
    accept: AcceptHook | None,
    dynamic: bool = False,
    target_path: str | None = None,
    listen_path: str | None = None,
    policy: ForwardPolicy | None = None,
) -> Forward:
    """A new pending forward; :class:`~rtunnel.errors.SpecError` for arguments that do not
    describe one (the arguments of ``request_forwarding()``)."""
    if not 0 <= port <= 65535:
        raise SpecError(f"Bad listen port {port}: give 0-65535 (0: the server chooses).")
    if factory is not None and host is not None:
        raise SpecError("Give either a local host:port (forwarding) or a factory (event).")
    if dynamic and (factory is not None or host is not None or host_port is not None):
        raise SpecError("A dynamic forward takes no local host:port or factory.")
    if target_path is not None:
        if dynamic or factory is not None or host is not None or host_port is not None:
            raise SpecError("A Unix-socket target takes no local host:port or factory.")
        if not target_path:
            raise SpecError("The target socket path is empty.")
    elif factory is None and not dynamic:
        if not host or host_port is None:
            raise SpecError(
                "Forwarding mode needs a local host and port; event mode needs a factory."
            )
        if not 0 < host_port <= 65535:
            raise SpecError(f"Bad local port {host_port}: give 1-65535.")
    check_policy(policy, listen_path)
    return Forward(
        bind_address,
        port,
        host,
        host_port,
        factory,
        accept,
        dynamic=dynamic,
        target_path=target_path,
        listen_path=listen_path,
        policy=policy,
    )


class ForwardTable:
    """
    The forwards of one tunnel, over all its connections.

    :param clock: runs the per-forward retries.
    :param host: the tunnel's side.
    :param server: names the server in messages.
    """

    def __init__(self, clock: IReactorTime, host: ForwardTableHost, server: str) -> None:
        self._clock = clock
        self._host = host
        self._server = server
        #: The forwards wanted (pending, active, retrying), in the order requested.
        self.forwards: list[Forward] = []
        # request_forwarding() calls waiting for a reconnect to establish their forward
        # (the connection was lost before the server answered, or was being made again
        # when they were called), by id(forward).
        self._first_answers: dict[int, Deferred[Forward]] = {}
        # id(forward) -> (retries so far, the timer of the next one).
        self._retries: dict[int, tuple[int, IDelayedCall | None]] = {}
        # Forwards whose request is on its way, and those of them already followed by a
        # cancel (the server answers in order, RFC 4254 §4: the cancel finds the listener).
        self._asking: set[int] = set()
        self._cancel_sent: dict[int, int] = {}  # id(forward) -> the port the cancel named
        #: conn.packets_received once every forward was (re-)established on the current
        #: connection: a packet after that shows a reconnect worked (None: not yet).
        self.working_from: int | None = None

    @staticmethod
    def move(forward: Forward, event: ForwardEvent) -> None:
        """Move ``forward`` by ``event``, as the table in rtunnel/_core/forwards.py allows
        (else ForwardTransitionError: a bug, not a user mistake)."""
        forward.state = next_state(forward.state, event)

    # -- matching

    def find(self, address: str, port: int) -> Forward | None:
        """The active forward a ``forwarded-tcpip`` open names."""
        return match_forward(self.forwards, address, port)

    def find_socket(self, path: str) -> Forward | None:
        """The active socket forward a ``forwarded-streamlocal@openssh.com`` open names."""
        return match_socket_forward(self.forwards, path)

    def active(self) -> list[Forward]:
        """The forwards the server listens for now."""
        return [f for f in self.forwards if f.state is ForwardState.ACTIVE]

    # -- requesting

    async def request(self, forward: Forward) -> Forward:
        """
        Ask for ``forward`` now, or on the next connection while waiting for a reconnect;
        fires once the server agrees (see ``ReverseTunnel.request_forwarding``).
        """
        conn = self._host.connection()
        if conn is None and not self._host.waiting_to_reconnect():
            raise NotConnectedError("Not logged on: call logon() first.")
        self.forwards.append(forward)
        if conn is not None:
            try:
                if await self._establish(forward, conn):
                    return forward
                raise ForwardingError(
                    f"The forward of listen port {forward.requested_port} was cancelled "
                    "before the server agreed to it."
                )
            except ConnectionLostError:
                # The connection went first. What happens next is decided when the
                # tunnel hears of the loss, just after this: a reconnect, which asks for
                # the forward again, or the end of the tunnel.
                pass
            except defer.CancelledError:
                self._drop(forward, ForwardEvent.ABANDON)
                raise
            except BaseException:
                # Refused: a forward that never worked is not kept for reconnects.
                self._drop(forward, ForwardEvent.REFUSED)
                raise
        if forward not in self.forwards:
            # The tunnel has stopped already (it forgets its forwards when it does).
            raise ConnectionLostError(
                f"The connection to {self._server} was lost before the server agreed to "
                "the forward."
            )
        answer: Deferred[Forward] = Deferred()
        self._first_answers[id(forward)] = answer
        try:
            return await answer
        except defer.CancelledError:
            self._first_answers.pop(id(forward), None)
            self._drop(forward, ForwardEvent.ABANDON)
            raise

    def _drop(self, forward: Forward, event: ForwardEvent) -> None:
        """Forget a forward whose request was refused or given up by its caller."""
        if forward not in self.forwards:
            return  # settled already: cancelled, or the tunnel stopped and said so
        self.move(forward, event)
        self.forwards.remove(forward)
        self._stop_retrying(forward)
        self._host.changed(forward)

    def _answer_first(self, forward: Forward, failure: Failure | None = None) -> None:
        """The forward a request_forwarding() call waits for is active, or failed."""
        answer = self._first_answers.pop(id(forward), None)
        if answer is None:
            return
        if failure is None:
            answer.callback(forward)
        else:
            answer.errback(failure)

    async def _establish(self, forward: Forward, conn: ForwardingConnection) -> bool:
        """Send ``tcpip-forward`` for ``forward``; mark it active (True), or find it
        cancelled meanwhile (False), or raise."""
        self.move(forward, ForwardEvent.REQUEST)
        asked = self._ask(forward, conn)
        # The request stays on its way when our caller gives up: the server still answers
        # it (and may listen), and that late answer is handled below.
        answer: Deferred[int] = Deferred()

        def relay(result: Any) -> Any:
            if answer.called:
                return result  # the caller gave up: to the handler added below
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)
            return None

        asked.addBoth(relay)
        self._asking.add(id(forward))
        try:
            port = await answer
        except defer.CancelledError:
            named = self._cancel_sent.pop(id(forward), None)
            asked.addCallbacks(
                lambda port: self._agreed_too_late(forward, conn, port, named), lambda _f: None
            )
            raise
        finally:
            self._asking.discard(id(forward))
        named = self._cancel_sent.pop(id(forward), None)
        if not allows(forward.state, ForwardEvent.AGREED):
            # Cancelled or abandoned while the request was on its way: the late agreement
            # must not revive it, and its listener must not stay behind.
            self._agreed_too_late(forward, conn, port, named)
            return False
        forward.port = port
        self.move(forward, ForwardEvent.AGREED)
        self._host.log(
            2,
            f"Remote forward of {forward.bind_address or '*'} port {forward.port} active "
            f"(to {forward.describe_target()}).",
        )
        self._host.changed(forward)
        self._answer_first(forward)
        return True

    def _ask(self, forward: Forward, conn: ForwardingConnection) -> Deferred[int]:
        """The global request for ``forward``: fires with the listening port."""
        requested = forward.requested_port
        if forward.listen_path is not None:
            name, data = (
                b"streamlocal-forward@openssh.com",
                wire.encode_string(forward.listen_path.encode("utf-8")),
            )
        else:
            name, data = (
                b"tcpip-forward",
                wire.encode_tcpip_forward(forward.bind_address, requested),
            )

        def listening(reply: bytes) -> int:
            if forward.listen_path is not None:
                return forward.port
            return wire.decode_tcpip_forward_reply(requested, reply)

        def refused(failure: Failure) -> Failure:
            e = failure.value
            if not isinstance(e, (ForwardingError, wire.WireError)):
                return failure
            # OpenSSH's words (ssh.c), so operators recognise it.
            what = (
                f"path {forward.listen_path}"
                if forward.listen_path is not None
                else f"port {requested}"
            )
            return Failure(
                ForwardingError(
                    f"remote port forwarding failed for listen {what}"
                    + ("" if isinstance(e, ForwardingError) else f": {e}")
                )
            )

        return conn.send_global_request(name, data).addCallbacks(listening, refused)

    def _agreed_too_late(
        self, forward: Forward, conn: ForwardingConnection, port: int, named: int | None
    ) -> None:
        """
        The server agreed to a forward nobody wants any more (abandoned by its caller, or
        cancelled naming another port than the one allocated now): it listens, so cancel
        it. ``named``: the port a cancel sent after the request named.
        """
        if named == port:
            return  # that cancel follows the request and finds the listener
        if conn.stopped:
            return  # the server forgets the session's listeners
        where = (
            f"socket {forward.listen_path}"
            if forward.listen_path is not None
            else f"{forward.bind_address or '*'} port {port}"
        )
        self._host.log(2, f"Cancelling the forward of {where}: it was given up meanwhile.")
        d = self._send_cancel(conn, forward.bind_address, port, forward.listen_path)
        d.addErrback(lambda f: _log.debug("cancel of a given-up forward: {f.value}", f=f))

    # -- cancelling

    async def cancel(self, bind_address: str, port: int, listen_path: str | None = None) -> None:
        """``cancel_forwarding()``: forget the forward at once, then tell the server (not
        between connections: the server's listener went with the lost session, and the
        reconnect will not ask for it again)."""
        conn = self._host.connection()
        if conn is None and not self._host.waiting_to_reconnect():
            raise NotConnectedError("Not logged on: call logon() first.")
        where = (
            f"socket {listen_path}" if listen_path is not None else f"{bind_address!r} port {port}"
        )
        forward = next(
            (
                f
                for f in self.forwards
                if self._names(f, bind_address, port, listen_path)
                and allows(f.state, ForwardEvent.CANCEL)
            ),
            None,
        )
        if forward is None:
            raise ForwardingError(f"No active forward on {where}.")
        was = forward.state
        asking = id(forward) in self._asking
        # Refuse new opens at once: opens that race the cancel are refused (B4).
        self.move(forward, ForwardEvent.CANCEL)
        self.forwards.remove(forward)
        self._stop_retrying(forward)
        self._answer_first(
            forward,
            Failure(
                ForwardingError(
                    f"The forward on {where} was cancelled before the server agreed to it."
                )
            ),
        )
        try:
            # Only a listener the server has, or may make for a request already sent,
            # needs a cancel (a retrying forward has none); should a re-request allocate
            # another port than the one named here, _agreed_too_late cancels that too.
            if conn is not None and (was is ForwardState.ACTIVE or asking):
                named = forward.port or port
                if asking:
                    self._cancel_sent[id(forward)] = named
                await self._send_cancel(conn, bind_address, named, listen_path)
        except ForwardingError:
            raise ForwardingError(f"The server refused to cancel the forward on {where}.") from None
        finally:
            self._host.changed(forward)

    @staticmethod
    def _names(forward: Forward, bind_address: str, port: int, listen_path: str | None) -> bool:
        """Whether a cancel for (bind_address, port) or listen_path means ``forward``:
        its listening port, or the fixed port it asks for while not yet agreed."""
        if listen_path is not None:
            return forward.listen_path == listen_path
        return (
            forward.listen_path is None
            and forward.bind_address == bind_address
            and port != 0
            and (forward.port or forward.requested_port) == port
        )

    @staticmethod
    def _send_cancel(
        conn: ForwardingConnection, bind_address: str, port: int, listen_path: str | None
    ) -> Deferred[bytes]:
        if listen_path is not None:
            return conn.send_global_request(
                b"cancel-streamlocal-forward@openssh.com",
                wire.encode_string(listen_path.encode("utf-8")),
            )
        return conn.send_global_request(
            b"cancel-tcpip-forward", wire.encode_tcpip_forward(bind_address, port)
        )

    def forget(self, forward: Forward) -> None:
        """
        Forget ``forward`` without a word to the server: its connection is gone (a
        tunnel group moving its forwards off a lost server, issue #15). The reconnect
        does not ask for it again; a ``request_forwarding()`` call waiting for it fails.
        """
        if forward not in self.forwards:
            return
        self._drop(forward, ForwardEvent.CANCEL)
        self._answer_first(
            forward,
            Failure(ForwardingError("The forward was moved to another server of its group.")),
        )

    def cancel_active(self) -> list[Deferred[None]]:
        """Cancel every active forward (a logoff's first step)."""
        return [
            Deferred.fromCoroutine(self.cancel(f.listen_path, 0, f.listen_path))
            if f.listen_path is not None
            else Deferred.fromCoroutine(self.cancel(f.bind_address, f.port))
            for f in self.active()
        ]

    # -- across connections

    def lost(self) -> None:
        """The connection ended and a reconnect follows: every forward waits for it."""
        self.cancel_retries()
        self._cancel_sent.clear()  # the requests they followed failed with the loss
        for forward in self.forwards:
            self.move(forward, ForwardEvent.LOST)
            self._host.changed(forward)

    async def reestablish(self) -> None:
        """A reconnect logged on: ask for every forward the lost connection had."""
        for forward in list(self.forwards):
            if forward.state is ForwardState.PENDING:
                await self.retry(forward)
        self._note_if_working()

    async def retry(self, forward: Forward) -> None:
        """Ask for ``forward`` again on the live connection; a refusal is retried later."""
        conn = self._host.connection()
        if conn is None or forward not in self.forwards:
            return
        try:
            await self._establish(forward, conn)
        except ForwardingError as e:
            if forward not in self.forwards:
                return  # cancelled meanwhile: the refusal changes nothing
            if not self._host.refused_again(e):
                self._schedule_retry(forward, e)
            return
        except ConnectionLostError:
            return  # the tunnel hears of the loss and takes it from there
        self._retries.pop(id(forward), None)
        self._note_if_working()

    def _schedule_retry(self, forward: Forward, error: ForwardingError) -> None:
        # A server that still holds the port for a stale session of ours refuses it until
        # it notices (RELIABILITY.md A9); retry this forward alone on its own schedule.
        count = self._retries.get(id(forward), (0, None))[0] + 1
        delay = self._host.next_retry(count, error, forward.requested_port)
        if delay is None:
            self.move(forward, ForwardEvent.REFUSED)
            self.forwards.remove(forward)
            self._retries.pop(id(forward), None)
            limit = ForwardRetryLimitError(
                f"Gave up re-establishing the forward of listen port "
                f"{forward.requested_port} after {count - 1} retries: {error}"
            )
            self._host.error(limit)
            self._host.changed(forward)
            self._answer_first(forward, Failure(limit))
            return
        self.move(forward, ForwardEvent.RETRY_LATER)
        self._host.changed(forward)

        def retry() -> None:
            d = Deferred.fromCoroutine(self.retry(forward))
            d.addErrback(lambda f: _log.failure("retrying a forward failed unexpectedly", f))

        self._retries[id(forward)] = (count, self._clock.callLater(delay, retry))

    def _stop_retrying(self, forward: Forward) -> None:
        _count, call = self._retries.pop(id(forward), (0, None))
        if call is not None and call.active():
            call.cancel()

    def cancel_retries(self) -> None:
        """Stop every per-forward retry timer."""
        for _count, call in self._retries.values():
            if call is not None and call.active():
                call.cancel()
        self._retries.clear()

    def _note_if_working(self) -> None:
        """Every forward is active on this connection: from now on, any packet from the
        server shows that the reconnect worked."""
        conn = self._host.connection()
        if (
            conn is not None
            and self.working_from is None
            and all(f.state is ForwardState.ACTIVE for f in self.forwards)
        ):
            self.working_from = conn.packets_received

    def stop(self, failure: Failure | None, answer: Failure) -> None:
        """
        The tunnel stops for good (``failure`` None: by a logoff): every forward ends,
        and the request_forwarding() calls still waiting fail with ``answer``.
        """
        self.cancel_retries()
        self._asking.clear()
        self._cancel_sent.clear()
        stop = ForwardEvent.STOPPED if failure is None else ForwardEvent.STOPPED_FAILING
        for forward in self.forwards:
            if allows(forward.state, stop):  # not one already final
                self.move(forward, stop)
            self._host.changed(forward)
            self._answer_first(forward, answer)
        self.forwards.clear()
