"""
Small mixins for the test servers: the address one listens on (for classes that keep
``_listening``), and ``with`` support for the ones started as child processes.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort

__all__ = ["ListeningAddress", "StartedInWith"]


class ListeningAddress:
    """Mixin: ``host`` and ``port`` of ``self._listening`` (set by ``start()``)."""

    _listening: IListeningPort | None

    @property
    def host(self) -> str:
        """The address it listens on (after :meth:`start`)."""
        return self._address().host

    @property
    def port(self) -> int:
        """The port it listens on (after :meth:`start`)."""
        return self._address().port

    def _address(self) -> IPv4Address | IPv6Address:
        if self._listening is None:
            raise RuntimeError(f"{type(self).__name__} is not listening: call start() first")
        address = self._listening.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)
        return address


class StartedInWith:
    """Mixin: ``with server:`` calls ``start()`` on entry and ``stop()`` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
