"""The address a test server or proxy listens on, for classes that keep ``_listening``."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort

__all__ = ["ListeningAddress"]


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
