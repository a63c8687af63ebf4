"""
``/metrics`` (issue #14): a ``prometheus_client`` collector that reads a
:class:`~rtunnel.operations.status.StatusSource` at scrape time, so the numbers are the
ones ``rtunnel status`` shows and nothing is counted twice. Labels: ``tunnel`` and, for a
forward's series, ``forward`` (its ``-R`` syntax or its name in the configuration file).

Its own registry, not the process-wide one: an application embedding rtunnel keeps its
metrics apart, and two listeners never collide.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from typing_extensions import override

from rtunnel.operations.status import StatusSource

__all__ = [
    "CONTENT_TYPE",
    "FORWARD_STATES",
    "GROUP_ROLES",
    "TUNNEL_STATES",
    "StatusCollector",
    "render",
]

#: The Content-Type of the text format ``render`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Every state a tunnel can be in: one series each, 1 for the current one (the enum
#: pattern of Prometheus' naming guide), so ``rtunnel_tunnel_state{state="waiting"} == 1``
#: alerts.
TUNNEL_STATES = ("connecting", "connected", "waiting", "stopped", "failed")

#: Likewise for forwards (:class:`rtunnel.ForwardState`'s values).
FORWARD_STATES = ("pending", "active", "retrying", "failed", "cancelled")


class StatusCollector(Collector):
    """Metrics of every tunnel and forward of ``source``, read at each scrape."""

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    @override
    def collect(self) -> Iterator[Metric]:
        tunnel = ["tunnel"]
        both = ["tunnel", "forward"]
        up = GaugeMetricFamily(
            "rtunnel_tunnel_ready", "1 when connected with every forward active.", labels=tunnel
        )
        state = GaugeMetricFamily(
            "rtunnel_tunnel_state", "1 for the tunnel's current state.", labels=[*tunnel, "state"]
        )
        since = GaugeMetricFamily(
            "rtunnel_tunnel_state_since_seconds",
            "When the tunnel entered its state (Unix time).",
            labels=tunnel,
        )
        reconnects = CounterMetricFamily(
            "rtunnel_tunnel_reconnects", "SSH sessions after the first.", labels=tunnel
        )
        kex = CounterMetricFamily(
            "rtunnel_tunnel_key_exchanges", "Key exchanges, all sessions.", labels=tunnel
        )
        error_time = GaugeMetricFamily(
            "rtunnel_tunnel_last_error_timestamp_seconds",
            "When the last error happened (Unix time); absent before the first.",
            labels=tunnel,
        )
        f_state = GaugeMetricFamily(
            "rtunnel_forward_state", "1 for the forward's current state.", labels=[*both, "state"]
        )
        f_port = GaugeMetricFamily(
            "rtunnel_forward_allocated_port",
            "The port the server listens on for the forward (absent while pending).",
            labels=both,
        )
        f_open = GaugeMetricFamily(
            "rtunnel_forward_channels_open", "Connections through the forward now.", labels=both
        )
        f_total = CounterMetricFamily(
            "rtunnel_forward_channels", "Connections through the forward.", labels=both
        )
        f_in = CounterMetricFamily(
            "rtunnel_forward_received_bytes",
            "Bytes from the server's side (its connecting clients) to the target.",
            labels=both,
        )
        f_out = CounterMetricFamily(
            "rtunnel_forward_sent_bytes",
            "Bytes from the target to the server's side.",
            labels=both,
        )
        # Issue #15: for each forward with a policy, every reason, zeros too.
        f_refused = CounterMetricFamily(
            "rtunnel_forward_refused",
            "Connections the forward's policy refused, by reason.",
            labels=[*both, "reason"],
        )
        for t in self._source.status():
            up.add_metric([t.name], 1 if t.ready else 0)
            for name in TUNNEL_STATES:
                state.add_metric([t.name, name], 1 if t.state == name else 0)
            since.add_metric([t.name], t.since)
            reconnects.add_metric([t.name], t.reconnects)
            kex.add_metric([t.name], t.key_exchanges)
            if t.last_error_time is not None:
                error_time.add_metric([t.name], t.last_error_time)
            for f in t.forwards:
                labels = [t.name, f.name]
                for name in FORWARD_STATES:
                    f_state.add_metric([*labels, name], 1 if f.state == name else 0)
                if f.allocated_port is not None:
                    f_port.add_metric(labels, f.allocated_port)
                f_open.add_metric(labels, f.channels_open)
                f_total.add_metric(labels, f.channels_total)
                f_in.add_metric(labels, f.bytes_in)
                f_out.add_metric(labels, f.bytes_out)
                for reason, count in f.refused.items():
                    f_refused.add_metric([*labels, reason], count)
        yield from (up, state, since, reconnects, kex, error_time)
        yield from (f_state, f_port, f_open, f_total, f_in, f_out, f_refused)
        yield from _group_metrics(self._source)


#: A group server's roles (issue #15), one series each as for TUNNEL_STATES.
GROUP_ROLES = ("serving", "standby", "down", "failed")


def _group_metrics(source: StatusSource) -> Iterator[Metric]:
    """The tunnel groups' series (issue #15): labels ``group`` (the tunnel's name) and
    ``server`` (the server's name in the group), or ``forward``."""
    pair = ["group", "server"]
    server_up = GaugeMetricFamily(
        "rtunnel_group_server_up", "1 while the group's server is logged on.", labels=pair
    )
    serving = GaugeMetricFamily(
        "rtunnel_group_server_serving",
        "1 for the server that holds the forwards (failover), or each that does (all).",
        labels=pair,
    )
    role = GaugeMetricFamily(
        "rtunnel_group_server_role", "1 for the server's current role.", labels=[*pair, "role"]
    )
    on = GaugeMetricFamily(
        "rtunnel_group_forward_servers",
        "How many of the group's servers the forward is active on.",
        labels=["group", "forward"],
    )
    for t in source.status():
        group = t.group
        if group is None:
            continue
        for member in group.members:
            labels = [t.name, member.name]
            server_up.add_metric(labels, 1 if member.state == "connected" else 0)
            serving.add_metric(labels, 1 if member.role == "serving" and member.forwards else 0)
            for name in GROUP_ROLES:
                role.add_metric([*labels, name], 1 if member.role == name else 0)
        for f in t.forwards:
            on.add_metric([t.name, f.name], len(f.servers))
    yield from (server_up, serving, role, on)


def render(source: StatusSource) -> bytes:
    """The Prometheus text format of ``source``'s metrics, now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(source))
    return generate_latest(registry)
