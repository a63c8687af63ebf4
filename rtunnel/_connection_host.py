"""
What the connection asks of its tunnel (:class:`~rtunnel.client.channels.connection.ChannelHost`):
which forward an inbound open names, its accept hook and target, and the channel events
for observers and the counters. Moved whole out of rtunnel/tunnel.py (issue #16); it
reads the tunnel's parts, as the facade's own glue.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Protocol, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IReactorTCP, IReactorTime
from twisted.logger import Logger

from rtunnel._forward_table import ForwardTable
from rtunnel._model import ChannelInfo, ChannelOpenRequest, Forward
from rtunnel._observers import Observers
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import OPEN_ADMINISTRATIVELY_PROHIBITED, ChannelRefused
from rtunnel.client.channels.targets import target_for
from rtunnel.errors import ChannelError, RTunnelError
from rtunnel.options import TunnelOptions

__all__ = ["TunnelParts", "_ConnectionHost"]

# The facade's namespace, as before these lines moved out of rtunnel/tunnel.py.
_log = Logger(namespace="rtunnel.tunnel")


class TunnelParts(Protocol):
    """
    What the connection host reads of its tunnel (``rtunnel.tunnel.ReverseTunnel``, not
    imported: the facade imports this module).
    """

    _table: ForwardTable
    _clock: IReactorTime
    _reactor: IReactorTCP
    _observers: Observers
    _channels_opened: int
    _closed_bytes_sent: int
    _closed_bytes_received: int

    @property
    def options(self) -> TunnelOptions: ...

    def _error(self, error: RTunnelError) -> None: ...

    def _emit_log(self, level: int, message: str) -> None: ...


# The name _ConnectionHost's annotations use (the class moved out of rtunnel/tunnel.py
# unchanged).
ReverseTunnel = TunnelParts


class _ConnectionHost:
    """
    What the connection asks of the tunnel (``ChannelHost``): which forward an inbound
    open names, its target, and the channel events for observers. A private object, so
    that these callbacks are not part of :class:`ReverseTunnel`'s public API (issue #16).
    """

    def __init__(self, tunnel: ReverseTunnel) -> None:
        self._tunnel = tunnel
        # The channels counted in their forward's channels_open (id of their ChannelInfo).
        self._counted: set[int] = set()

    def find_socket_forward(self, path: str) -> Forward | None:
        """The active socket forward a ``forwarded-streamlocal@openssh.com`` open names."""
        return self._tunnel._table.find_socket(path)

    def find_forward(self, address: str, port: int) -> Forward | None:
        """The active forward an inbound open names (see ARCHITECTURE.md step 2)."""
        return self._tunnel._table.find(address, port)

    def open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> Deferred[IProtocol]:
        """Run the accept hook, then connect the target or build the app's protocol."""
        tunnel = self._tunnel
        d = Deferred.fromCoroutine(self._open_target(forward, request, channel))
        return d.addTimeout(tunnel.options.channels.target_connect_timeout * 2, tunnel._clock)

    async def _open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> IProtocol:
        tunnel = self._tunnel
        if forward.accept is not None:
            try:
                answer = forward.accept(request)
                if isinstance(answer, Deferred) or inspect.isawaitable(answer):
                    answer = await _with_timeout(
                        cast(Awaitable[bool], answer),
                        tunnel.options.channels.target_connect_timeout,
                        tunnel._clock,
                    )
            except defer.TimeoutError:
                raise ChannelRefused(
                    OPEN_ADMINISTRATIVELY_PROHIBITED, "accept hook did not answer"
                ) from None
            except Exception as e:
                _log.failure("accept hook failed; refusing channel {id}", id=request.channel_id)
                tunnel._error(
                    ChannelError(f"Channel {request.channel_id}: the accept hook failed: {e!r}")
                )
                raise ChannelRefused(
                    OPEN_ADMINISTRATIVELY_PROHIBITED, "accept hook failed"
                ) from None
            if not answer:
                raise ChannelRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, "refused by the application")
        channels = tunnel.options.channels
        bind = (channels.forwarding_local_host, 0) if channels.forwarding_local_host else None
        target = target_for(
            forward,
            tunnel._reactor,
            timeout=channels.target_connect_timeout,
            bind_address=bind,
            permitted=channels.permit_remote_open,
            on_error=tunnel._error,
            log=tunnel._emit_log,
        )
        return await target.open(channel)

    def channel_event(self, name: str, info: ChannelInfo, data: bytes = b"") -> None:
        """Dispatch a channel event to observers."""
        tunnel = self._tunnel
        forward = info.forward
        if name == "opened":
            tunnel._channels_opened += 1
            if forward is not None:
                forward.channels_open += 1
                forward.channels_total += 1
                self._counted.add(id(info))
        elif name == "closed":
            tunnel._closed_bytes_sent += info.bytes_sent
            tunnel._closed_bytes_received += info.bytes_received
            if forward is not None:
                forward.bytes_in += info.bytes_received
                forward.bytes_out += info.bytes_sent
                # A channel that ended while its protocol started was never "opened".
                if id(info) in self._counted:
                    self._counted.discard(id(info))
                    forward.channels_open -= 1
        if tunnel.options.log_level >= 2 and name in ("opened", "closed"):
            tunnel._emit_log(
                2,
                f"Channel {info.channel_id} {name}: from {info.origin_address} port "
                f"{info.origin_port} to listen port {info.connected_port} "
                f"({info.bytes_received} bytes in, {info.bytes_sent} out).",
            )
        if not tunnel._observers:
            return
        for observer in list(tunnel._observers):
            try:
                if name == "data":
                    observer.channel_data(info, data)
                elif name == "opened":
                    observer.channel_opened(info)
                elif name == "eof":
                    observer.channel_eof(info)
                elif name == "closed":
                    observer.channel_closed(info)
                elif name == "ready":
                    observer.channel_ready_to_send(info)
            except Exception:
                _log.failure("observer {observer!r} failed on {name}", observer=observer, name=name)


async def _with_timeout(answer: Awaitable[bool], timeout: float, clock: IReactorTime) -> bool:
    d: Deferred[bool] = (
        answer if isinstance(answer, Deferred) else Deferred.fromCoroutine(answer)  # type: ignore[arg-type]
    )
    d.addTimeout(timeout, clock)
    return await d
