"""
A policy per forward (issue #15): who may come in (originator allow and deny lists), how
many at once, how many new ones per second, how fast the forward's channels send, and how
long one may sit idle. Pure: no reactor, no clock; callers pass the time.

The decision runs where an inbound ``forwarded-tcpip`` open is matched to its forward,
before the accept hook and before the target is connected (docs/architecture.md, "the
data path", step 3). Its order, and so what a refusal is counted as:

1. the originator: on a ``deny`` entry -> refused ("denied"); else, with an ``allow``
   list, on none of its entries -> refused ("not-allowed"). Deny wins over allow, so
   ``allow=10.0.0.0/8 deny=10.0.0.5`` lets in all of 10/8 but one address. An
   IPv4-mapped IPv6 originator (``::ffff:10.0.0.5``, what a dual-stack listener reports)
   is matched as the IPv4 address it carries; an originator that is not an IP address at
   all is refused whenever either list is given. RFC 4254 §5.1 code 1,
   "administratively prohibited".
2. ``max_channels`` open at once (pending ones included) -> refused ("max-channels"),
   code 4, "resource shortage".
3. ``rate`` new connections per second, ``burst`` at once (a token bucket) -> refused
   ("rate"), code 4. Only opens that passed 1 and 2 spend a token.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from rtunnel._core.policy import TokenBucket

__all__ = [
    "OPEN_ADMINISTRATIVELY_PROHIBITED",
    "OPEN_RESOURCE_SHORTAGE",
    "REASONS",
    "ForwardGate",
    "ForwardPolicy",
    "Refusal",
    "originator_refusal",
    "parse_network",
]

#: RFC 4254 §5.1 reason codes.
OPEN_ADMINISTRATIVELY_PROHIBITED: Final = 1
OPEN_RESOURCE_SHORTAGE: Final = 4

#: The reasons a policy refuses an open, as counted and labelled in ``/metrics``.
REASONS: Final = ("denied", "not-allowed", "max-channels", "rate")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> Network:
    """
    An address or CIDR block (``10.0.0.0/8``, ``192.0.2.7``, ``2001:db8::/32``, ``::1``),
    IPv4 or IPv6. An IPv4-mapped IPv6 block (``::ffff:10.0.0.0/104``) is taken as the
    IPv4 block it maps, since originators are matched that way too.

    :raises ValueError: one line saying what is wrong, for a value that is not one; a
        block with host bits set (``10.0.0.1/8``) is one.
    """
    value = text.strip()
    if value.startswith("[") and "]" in value:
        # [::1] or [2001:db8::]/32, as addresses are written next to ports.
        inside, _, rest = value[1:].partition("]")
        value = inside + rest
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            raise ValueError(
                f"'{text}' has host bits set: give the block's first address "
                f"({ipaddress.ip_network(value, strict=False)})"
            ) from None
        raise ValueError(
            f"'{text}' is not an IP address or CIDR block (e.g. 10.0.0.0/8, ::1)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _originator(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


def _on(address: Address, networks: tuple[Network, ...]) -> bool:
    # "in" between different versions is False, not an error.
    return any(address in network for network in networks)


@dataclass(frozen=True)
class ForwardPolicy:
    """
    What a forward lets in, and how much (issue #15). Every part is optional; the default
    policy limits nothing.

    :ivar allow: originator addresses and CIDR blocks that may connect (empty: any).
        Strings are checked and kept in their canonical form.
    :ivar deny: originators that may not, whatever ``allow`` says (deny wins).
    :ivar max_channels: channels of this forward open at once (0: no cap); beyond it an
        open is refused with "resource shortage".
    :ivar rate: new connections per second accepted (0: no limit), with bursts of
        ``burst``.
    :ivar burst: connections accepted at once before ``rate`` applies (0: one second's
        worth, at least 1).
    :ivar bandwidth: bytes per second sent to the server, all of this forward's channels
        together (0: no cap), as the tunnel-wide ``MaxTransferRate`` does for all.
    :ivar idle_timeout: seconds without data either way after which a channel of this
        forward is closed; None: the tunnel's ``channel_idle_timeout``; 0: never.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_channels: int = 0
    rate: float = 0.0
    burst: int = 0
    bandwidth: int = 0
    idle_timeout: float | None = None
    _allow: tuple[Network, ...] = field(default=(), init=False, repr=False, compare=False)
    _deny: tuple[Network, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.allow, str) or isinstance(self.deny, str):
            raise ValueError("allow and deny take a list of addresses or CIDR blocks")
        allow = tuple(parse_network(str(a)) for a in self.allow)
        deny = tuple(parse_network(str(d)) for d in self.deny)
        object.__setattr__(self, "_allow", allow)
        object.__setattr__(self, "_deny", deny)
        object.__setattr__(self, "allow", tuple(str(n) for n in allow))
        object.__setattr__(self, "deny", tuple(str(n) for n in deny))
        if self.max_channels < 0:
            raise ValueError("max_channels must be 0 (no cap) or more")
        if not math.isfinite(self.rate) or self.rate < 0:
            raise ValueError("rate must be 0 (no limit) or a positive number per second")
        if self.burst < 0 or (self.burst and not self.rate):
            raise ValueError("burst must be 0 or more, and needs a rate")
        if self.bandwidth < 0:
            raise ValueError("bandwidth must be 0 (no cap) or bytes per second")
        if self.idle_timeout is not None and (
            not math.isfinite(self.idle_timeout) or self.idle_timeout < 0
        ):
            raise ValueError("idle_timeout must be 0 (never) or seconds")

    @property
    def filters_originators(self) -> bool:
        """Whether an allow or deny list is given."""
        return bool(self._allow or self._deny)

    @property
    def limits_opens(self) -> bool:
        """Whether anything is decided when a channel opens (lists, cap or rate)."""
        return self.filters_originators or self.max_channels > 0 or self.rate > 0

    @property
    def effective_burst(self) -> int:
        """``burst``, or one second's worth of ``rate`` (at least 1)."""
        return self.burst or max(1, math.ceil(self.rate))

    def describe(self) -> str:
        """The policy in the ``KEY=VALUE`` words of ``-o ForwardPolicy`` (empty: none)."""
        words = []
        if self.allow:
            words.append("allow=" + ",".join(self.allow))
        if self.deny:
            words.append("deny=" + ",".join(self.deny))
        if self.max_channels:
            words.append(f"max_channels={self.max_channels}")
        if self.rate:
            words.append(f"rate={self.rate:g}")
        if self.burst:
            words.append(f"burst={self.burst}")
        if self.bandwidth:
            words.append(f"bandwidth={self.bandwidth}")
        if self.idle_timeout is not None:
            words.append(f"idle_timeout={self.idle_timeout:g}")
        return " ".join(words)


class Refusal(NamedTuple):
    """An open the policy refuses: what to count it as, and the OPEN_FAILURE to send."""

    reason: str
    code: int
    description: str


_DENIED: Final = Refusal("denied", OPEN_ADMINISTRATIVELY_PROHIBITED, "originator denied")
_NOT_ALLOWED: Final = Refusal(
    "not-allowed", OPEN_ADMINISTRATIVELY_PROHIBITED, "originator not allowed"
)
_MAX_CHANNELS: Final = Refusal("max-channels", OPEN_RESOURCE_SHORTAGE, "too many connections")
_RATE: Final = Refusal("rate", OPEN_RESOURCE_SHORTAGE, "too many new connections")


def originator_refusal(policy: ForwardPolicy, originator: str) -> Refusal | None:
    """Whether the allow and deny lists refuse ``originator`` (an address as the server
    sent it), and why; None: they let it in."""
    if not policy.filters_originators:
        return None
    address = _originator(originator)
    if address is None:
        return _DENIED if policy._deny and not policy._allow else _NOT_ALLOWED
    if _on(address, policy._deny):
        return _DENIED
    if policy._allow and not _on(address, policy._allow):
        return _NOT_ALLOWED
    return None


class ForwardGate:
    """
    A forward's policy at work: its open channels, its buckets and its refusal counts,
    for as long as the forward exists (across reconnects).

    :ivar policy: what it enforces.
    :ivar active: channels admitted and not yet released.
    :ivar refused: refusals by reason (:data:`REASONS`).
    :ivar bandwidth: the token bucket all the forward's channels send through (None:
        no cap); made at the first admitted open.
    """

    __slots__ = ("_rate", "active", "bandwidth", "policy", "refused")

    def __init__(self, policy: ForwardPolicy, refused: dict[str, int] | None = None) -> None:
        self.policy = policy
        self.active = 0
        self.refused = refused if refused is not None else {}
        self._rate: TokenBucket | None = None
        self.bandwidth: TokenBucket | None = None

    def admit(self, originator: str, now: float) -> Refusal | None:
        """
        Decide an open from ``originator`` at ``now``: None lets it in (and counts it in
        :attr:`active` until :meth:`release`); a refusal is counted in :attr:`refused`.
        """
        policy = self.policy
        refusal = originator_refusal(policy, originator)
        if refusal is None and policy.max_channels and self.active >= policy.max_channels:
            refusal = _MAX_CHANNELS
        if refusal is None and policy.rate:
            if self._rate is None:
                self._rate = TokenBucket(policy.rate, now, policy.effective_burst)
            if self._rate.allowance(now) < 1:
                refusal = _RATE
            else:
                self._rate.spend(1)
        if refusal is not None:
            self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
            return refusal
        if policy.bandwidth and self.bandwidth is None:
            self.bandwidth = TokenBucket(policy.bandwidth, now)
        self.active += 1
        return None

    def release(self) -> None:
        """An admitted channel has ended (or failed to open)."""
        self.active = max(0, self.active - 1)

    def change(self, policy: ForwardPolicy) -> None:
        """
        Enforce ``policy`` from now on (a reload): the open channels still count against
        its cap, and the refusal counts carry on; a changed rate starts a full bucket,
        and a changed bandwidth cap a new bucket for the channels opened from now on
        (those open keep pacing on the old one).
        """
        old, self.policy = self.policy, policy
        if (policy.rate, policy.effective_burst) != (old.rate, old.effective_burst):
            self._rate = None
        if policy.bandwidth != old.bandwidth:
            self.bandwidth = None
