"""
The words of a forward's policy (issue #15), as ``-o ForwardPolicy`` and the
configuration file's forward tables write them::

    -o "ForwardPolicy=8080 allow=10.0.0.0/8,2001:db8::/32 deny=10.0.0.5 max_channels=50
        rate=10 burst=20 bandwidth=1M idle_timeout=5m"

    forwards = [{ listen = "8080", target = "localhost:80", allow = ["10.0.0.0/8"],
                  max_channels = 50, rate = 10, bandwidth = "1M", idle_timeout = "5m" }]

The first word of ``ForwardPolicy`` names the forward by its listen side, as ``-R`` gives
it (``[BIND_ADDRESS:]PORT`` or a socket path); the rest are ``KEY=VALUE``. The values:
``allow`` and ``deny`` a comma-separated list of addresses and CIDR blocks; ``rate`` new
connections per second (``N``, ``N/s``, ``N/m`` or ``N/h``); ``burst`` and
``max_channels`` counts; ``bandwidth`` bytes per second with an optional ``K``, ``M`` or
``G``; ``idle_timeout`` a time as ``ssh`` writes one (``30``, ``5m``, ``1h30m``; ``0``:
never).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

from rtunnel._core.forward_policy import ForwardPolicy, parse_network
from rtunnel._core.syntax import to_port
from rtunnel.errors import SpecError
from rtunnel.openssh.forwards import RemoteForwardSpec
from rtunnel.openssh.values import parse_time

__all__ = [
    "POLICY_KEYS",
    "PolicyFor",
    "attach_policies",
    "check_value",
    "parse_policy_line",
    "policy_from_values",
]

#: The keys of a policy, in the order ``describe`` writes them.
POLICY_KEYS: Final = (
    "allow",
    "deny",
    "max_channels",
    "rate",
    "burst",
    "bandwidth",
    "idle_timeout",
)

_SIZES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_PER: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class PolicyFor(NamedTuple):
    """
    A policy and the forward it is for, as ``-o ForwardPolicy`` names it.

    :ivar listen: the first word as written.
    :ivar bind_address: its address part (None: any forward on the port).
    :ivar port: its port (None for a socket path).
    :ivar path: the socket path (None for a port).
    :ivar policy: the policy.
    """

    listen: str
    bind_address: str | None
    port: int | None
    path: str | None
    policy: ForwardPolicy

    def matches(self, spec: RemoteForwardSpec) -> bool:
        """Whether ``spec`` is the forward this names."""
        if self.path is not None:
            return spec.listen_path == self.path
        if spec.listen_path is not None or spec.port != self.port:
            return False
        if self.bind_address is None:
            return True
        bind = "" if self.bind_address == "*" else self.bind_address
        return spec.bind_address == bind


def _value(key: str, text: str) -> object:
    """One key's value from its text; ValueError with what is wrong."""
    if key in ("allow", "deny"):
        items = [item for item in text.split(",") if item.strip()]
        if not items:
            raise ValueError("give one or more addresses or CIDR blocks, comma-separated")
        return tuple(str(parse_network(item)) for item in items)
    if key in ("max_channels", "burst"):
        if not re.fullmatch(r"\d{1,9}", text):
            raise ValueError(f"'{text}' is not a count (0 or more)")
        return int(text)
    if key == "rate":
        match = re.fullmatch(r"(\d{1,9}(?:\.\d{1,9})?)(?:/([smhSMH]))?", text)
        if match is None:
            raise ValueError(f"'{text}' is not a rate: give N, N/s, N/m or N/h connections")
        return float(match.group(1)) / _PER[(match.group(2) or "").lower()]
    if key == "bandwidth":
        match = re.fullmatch(r"(\d{1,12})([kKmMgG]?)", text)
        if match is None:
            raise ValueError(f"'{text}' is not a bandwidth: give bytes per second, e.g. 512K")
        return int(match.group(1)) * _SIZES[match.group(2).lower()]
    if key == "idle_timeout":
        try:
            return float(parse_time(text))
        except SpecError:
            raise ValueError(f"'{text}' is not a time (e.g. 30, 5m, 1h30m; 0: never)") from None
    raise AssertionError(key)


def _unknown(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key.lower(), POLICY_KEYS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown policy key '{key}'{hint}: give one of {', '.join(POLICY_KEYS)}"


def check_value(key: str, text: str) -> None:
    """
    Whether ``text`` is a value ``key`` takes (alone: ``burst`` needs ``rate`` too).

    :raises SpecError: one line saying what is wrong, without the key.
    """
    if key not in POLICY_KEYS:
        raise SpecError(_unknown(key))
    try:
        _value(key, text.strip())
    except ValueError as error:
        raise SpecError(str(error)) from None


def policy_from_values(values: Mapping[str, str]) -> ForwardPolicy:
    """
    A policy from its keys' texts (``{"allow": "10.0.0.0/8", "rate": "5"}``).

    :raises SpecError: one line naming the key and what is wrong with its value.
    """
    parsed: dict[str, object] = {}
    for key, text in values.items():
        if key not in POLICY_KEYS:
            raise SpecError(_unknown(key))
        try:
            parsed[key] = _value(key, text.strip())
        except ValueError as error:
            raise SpecError(f"{key}: {error}") from None
    try:
        return ForwardPolicy(**parsed)  # type: ignore[arg-type]
    except ValueError as error:
        raise SpecError(str(error)) from None


def parse_policy_line(words: Sequence[str]) -> PolicyFor:
    """
    ``ForwardPolicy``'s arguments: the listen side, then ``KEY=VALUE`` words (a key given
    twice is a mistake).

    :raises SpecError: one line saying what is wrong.
    """
    if not words:
        raise SpecError("give the forward's listen side ([BIND_ADDRESS:]PORT) and KEY=VALUE words")
    listen, rest = words[0], words[1:]
    if "=" in listen:
        raise SpecError(
            f"'{listen}': first name the forward by its listen side, e.g. "
            f"ForwardPolicy=8080 {listen}"
        )
    values: dict[str, str] = {}
    for word in rest:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise SpecError(f"'{word}': give KEY=VALUE ({', '.join(POLICY_KEYS)})")
        if key in values:
            raise SpecError(f"{key} is given twice")
        values[key] = text
    if not values:
        raise SpecError(f"'{listen}': give at least one KEY=VALUE ({', '.join(POLICY_KEYS)})")
    policy = policy_from_values(values)
    if listen.startswith("/"):
        return PolicyFor(listen, None, None, listen, policy)
    bind: str | None = None
    port_text = listen
    if listen.startswith("[") and "]:" in listen:
        bind, _, port_text = listen[1:].partition("]:")
    elif ":" in listen:
        bind, _, port_text = listen.rpartition(":")
    port = to_port(port_text)
    if port is None:
        raise SpecError(
            f"'{listen}' names no forward: give its listen side as -R does, "
            "[BIND_ADDRESS:]PORT or a socket path"
        )
    return PolicyFor(listen, bind, port, None, policy)


def attach_policies(
    specs: Sequence[RemoteForwardSpec], policies: Sequence[PolicyFor]
) -> list[RemoteForwardSpec]:
    """
    The forwards with their policies: each policy must name exactly one forward, and no
    forward may get two.

    :raises SpecError: for a policy that names no forward, several, or one that already
        has one.
    """
    result = list(specs)
    given: dict[int, PolicyFor] = {}
    for entry in policies:
        hits = [i for i, spec in enumerate(result) if entry.matches(spec)]
        if not hits:
            raise SpecError(
                f"ForwardPolicy {entry.listen}: no remote forward listens there "
                "(give the listen side of one -R forward)"
            )
        if len(hits) > 1:
            raise SpecError(
                f"ForwardPolicy {entry.listen}: {len(hits)} remote forwards listen on that "
                "port; name one by BIND_ADDRESS:PORT"
            )
        index = hits[0]
        if index in given or result[index].policy is not None:
            first = f" (ForwardPolicy {given[index].listen})" if index in given else ""
            raise SpecError(
                f"ForwardPolicy {entry.listen}: that forward already has a policy{first}"
            )
        if entry.policy.filters_originators and result[index].listen_path is not None:
            raise SpecError(
                f"ForwardPolicy {entry.listen}: a socket forward has no originator "
                "address, so allow and deny cannot apply"
            )
        given[index] = entry
        result[index] = dataclasses.replace(result[index], policy=entry.policy)
    return result
