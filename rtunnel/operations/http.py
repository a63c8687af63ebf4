"""
The health and metrics listener (issue #14), on ``twisted.web``: ``/healthz`` (the
process answers: 200), ``/readyz`` (200 when every configured forward of every tunnel is
active, else 503 and the first reason) and ``/metrics`` (Prometheus' text format,
:mod:`rtunnel.operations.metrics`). Loopback by default: the status names servers and
ports, which are nobody else's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from typing_extensions import override

from rtunnel.operations.metrics import CONTENT_TYPE, render
from rtunnel.operations.status import StatusSource, TunnelStatus

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IReactorTCP

__all__ = ["HealthSite", "listen_http", "unready_reason"]


def unready_reason(tunnels: list[TunnelStatus] | tuple[TunnelStatus, ...]) -> str | None:
    """Why ``/readyz`` says no (the first tunnel or forward that is not up), or None."""
    if not tunnels:
        return "no tunnel configured"
    for t in tunnels:
        if t.group is not None:
            # A tunnel group (issue #15): its mode's condition, not every server's.
            if not t.group.ready:
                return f"tunnel {t.name}: {_group_reason(t)}"
            continue
        if t.state != "connected":
            return f"tunnel {t.name}: {t.state}"
        for f in t.forwards:
            if f.state != "active":
                return f"tunnel {t.name}: forward {f.name}: {f.state}"
    return None


def _group_reason(t: TunnelStatus) -> str:
    group = t.group
    assert group is not None
    if group.mode == "failover":
        if group.serving is None:
            return "no server of the group is logged on"
        for f in t.forwards:
            if group.serving not in f.servers:
                return f"forward {f.name}: not active on {group.serving} ({f.state})"
        return f"server {group.serving} is {t.state}"
    for f in t.forwards:
        if not f.servers:
            return f"forward {f.name}: active on no server ({f.state})"
    return "no server of the group is logged on"


class _Text(Resource):
    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, source: StatusSource, path: str) -> None:
        super().__init__()
        self._source = source
        self._path = path

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web's name)
        if self._path == "metrics":
            request.setHeader(b"content-type", CONTENT_TYPE.encode())
            return render(self._source)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self._path == "healthz":
            return b"ok\n"
        reason = unready_reason(tuple(self._source.status()))
        if reason is None:
            return b"ready\n"
        request.setResponseCode(503)
        return f"not ready: {reason}\n".encode()


class _Root(Resource):
    @override
    def getChild(self, path: bytes, request: Request) -> IResource:  # type: ignore[override]
        # Resource's default 404 page is deprecated (it does not escape the path).
        return notFound()


class HealthSite(Site):
    """The site: ``/healthz``, ``/readyz``, ``/metrics``; anything else is 404."""

    def __init__(self, source: StatusSource) -> None:
        root = _Root()
        for path in ("healthz", "readyz", "metrics"):
            root.putChild(path.encode(), _Text(source, path))
        super().__init__(root)
        # One line per request in the log would drown the tunnel's own at a 15 s scrape.
        self.noisy = False

    @override
    def log(self, request: http.Request) -> None:
        pass


def listen_http(
    reactor: IReactorTCP, source: StatusSource, address: str, port: int
) -> IListeningPort:
    """Serve ``source``'s health and metrics on ``address:port``."""
    return reactor.listenTCP(port, HealthSite(source), interface=address)  # type: ignore[arg-type]
