"""
A policy per forward (issue #15), its pure parts: the policy record and its checks, CIDR
matching (IPv4, IPv6, IPv4-mapped), the decision with a given time (deny wins, the
channel cap, the token bucket), the -o grammar and the configuration file's keys, and
the operator's views (status table, JSON, metrics).
"""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rtunnel import ForwardPolicy
from rtunnel._core.forward_policy import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_RESOURCE_SHORTAGE,
    REASONS,
    ForwardGate,
    originator_refusal,
    parse_network,
)
from rtunnel.errors import SpecError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forward_policy import (
    attach_policies,
    parse_policy_line,
    policy_from_values,
)
from rtunnel.openssh.forwards import parse_remote_forward
from rtunnel.openssh.options import parse_keyword
from rtunnel.operations.config import ConfigError, parse_config
from rtunnel.operations.control import format_status, status_from_json, status_to_json
from rtunnel.operations.metrics import render
from rtunnel.operations.status import ForwardStatus, TunnelStatus

# -- the record and CIDR matching


def test_addresses_and_blocks_are_kept_canonical() -> None:
    policy = ForwardPolicy(allow=("10.0.0.0/8", "192.0.2.7", "2001:DB8::/32", "[::1]"))
    assert policy.allow == ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128")
    # An IPv4-mapped block is the IPv4 block it maps.
    assert str(parse_network("::ffff:10.0.0.0/104")) == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "10.0.0.1/8",
            "'10.0.0.1/8' has host bits set: give the block's first address (10.0.0.0/8)",
        ),
        ("example.com", "'example.com' is not an IP address or CIDR block (e.g. 10.0.0.0/8, ::1)"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR block (e.g. 10.0.0.0/8, ::1)"),
    ],
)
def test_a_bad_block_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_network(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allow": "10.0.0.0/8"}, "allow and deny take a list of addresses or CIDR blocks"),
        ({"max_channels": -1}, "max_channels must be 0 (no cap) or more"),
        ({"rate": -1.0}, "rate must be 0 (no limit) or a positive number per second"),
        ({"rate": float("nan")}, "rate must be 0 (no limit) or a positive number per second"),
        ({"burst": 5}, "burst must be 0 or more, and needs a rate"),
        ({"bandwidth": -5}, "bandwidth must be 0 (no cap) or bytes per second"),
        ({"idle_timeout": -1.0}, "idle_timeout must be 0 (never) or seconds"),
    ],
)
def test_bad_values_are_refused_with_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        ForwardPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("originator", "expected"),
    [
        ("10.1.2.3", None),
        ("10.0.0.5", "denied"),  # deny wins over allow
        ("::ffff:10.0.0.5", "denied"),  # IPv4-mapped: matched as 10.0.0.5
        ("::ffff:10.9.9.9", None),
        ("192.168.1.1", "not-allowed"),
        ("2001:db8::1", None),
        ("2001:db9::1", "not-allowed"),
        ("::1", "not-allowed"),
        ("not-an-address", "not-allowed"),
        ("", "not-allowed"),
    ],
)
def test_deny_wins_then_allow(originator: str, expected: str | None) -> None:
    policy = ForwardPolicy(allow=("10.0.0.0/8", "2001:db8::/32"), deny=("10.0.0.5",))
    refusal = originator_refusal(policy, originator)
    assert (refusal.reason if refusal else None) == expected
    if refusal is not None:
        assert refusal.code == OPEN_ADMINISTRATIVELY_PROHIBITED


def test_a_deny_list_alone_lets_everyone_else_in() -> None:
    policy = ForwardPolicy(deny=("127.0.0.2", "::1"))
    assert originator_refusal(policy, "127.0.0.1") is None
    assert originator_refusal(policy, "127.0.0.2") is not None
    assert originator_refusal(policy, "::1") is not None
    # Not an address at all: refused whenever a list is given.
    refusal = originator_refusal(policy, "garbage")
    assert refusal is not None and refusal.reason == "denied"
    assert originator_refusal(ForwardPolicy(max_channels=1), "garbage") is None


_V4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
_V4_BLOCK = st.builds(
    lambda a, n: (
        ipaddress.IPv4Network((int(a) >> (32 - n) << (32 - n), n))
        if n
        else ipaddress.IPv4Network("0.0.0.0/0")
    ),
    _V4,
    st.integers(0, 32),
)


@given(address=_V4, allow=st.lists(_V4_BLOCK, max_size=4), deny=st.lists(_V4_BLOCK, max_size=4))
def test_the_decision_is_the_set_rule(
    address: ipaddress.IPv4Address,
    allow: list[ipaddress.IPv4Network],
    deny: list[ipaddress.IPv4Network],
) -> None:
    """In = (no allow list or on one) and on no deny entry; the mapped form agrees."""
    policy = ForwardPolicy(allow=tuple(map(str, allow)), deny=tuple(map(str, deny)))
    admitted = (not allow or any(address in n for n in allow)) and not any(
        address in n for n in deny
    )
    for form in (str(address), f"::ffff:{address}"):
        assert (originator_refusal(policy, form) is None) == admitted


# -- the gate: the channel cap and the rate, with a given time


def test_the_cap_counts_admitted_channels_until_released() -> None:
    gate = ForwardGate(ForwardPolicy(max_channels=2))
    assert gate.admit("10.0.0.1", 0.0) is None
    assert gate.admit("10.0.0.1", 0.0) is None
    refusal = gate.admit("10.0.0.1", 0.0)
    assert refusal is not None
    assert (refusal.reason, refusal.code) == ("max-channels", OPEN_RESOURCE_SHORTAGE)
    gate.release()
    assert gate.admit("10.0.0.1", 0.0) is None
    assert (gate.active, gate.refused) == (2, {"max-channels": 1})


def test_the_rate_is_a_token_bucket() -> None:
    gate = ForwardGate(ForwardPolicy(rate=2, burst=3))
    results = [gate.admit("10.0.0.1", 0.0) for _ in range(5)]
    assert [r is None for r in results] == [True, True, True, False, False]
    assert results[3] is not None and results[3].code == OPEN_RESOURCE_SHORTAGE
    # Half a second earns one more; a refusal spends nothing.
    assert gate.admit("10.0.0.1", 0.5) is None
    assert gate.admit("10.0.0.1", 0.5) is not None
    assert gate.refused == {"rate": 3}


@given(
    rate=st.integers(1, 50),
    burst=st.integers(1, 50),
    times=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300),
)
def test_accepted_opens_never_exceed_burst_plus_rate_times_elapsed(
    rate: int, burst: int, times: list[float]
) -> None:
    gate = ForwardGate(ForwardPolicy(rate=rate, burst=burst))
    times.sort()
    accepted = sum(gate.admit("192.0.2.1", t) is None for t in times)
    elapsed = times[-1] - times[0]
    assert accepted <= burst + rate * elapsed + 1e-6
    assert accepted + gate.refused.get("rate", 0) == len(times)


def test_refused_opens_spend_no_token_and_take_no_slot() -> None:
    gate = ForwardGate(ForwardPolicy(deny=("10.0.0.0/8",), max_channels=1, rate=1, burst=1))
    for _ in range(10):
        assert gate.admit("10.0.0.1", 0.0) is not None
    assert gate.admit("192.0.2.1", 0.0) is None
    assert gate.refused == {"denied": 10}
    assert gate.active == 1


def test_a_bandwidth_bucket_is_made_once_for_the_forward() -> None:
    gate = ForwardGate(ForwardPolicy(bandwidth=1 << 20))
    assert gate.bandwidth is None
    gate.admit("::1", 5.0)
    bucket = gate.bandwidth
    assert bucket is not None and bucket.rate == 1 << 20
    gate.admit("::1", 6.0)
    assert gate.bandwidth is bucket


# -- the words: -o ForwardPolicy and the file's keys


def test_the_option_line() -> None:
    entry = parse_policy_line(
        [
            "[::1]:8080",
            "allow=10.0.0.0/8,::1",
            "deny=10.0.0.5",
            "max_channels=50",
            "rate=600/m",
            "burst=20",
            "bandwidth=1M",
            "idle_timeout=1h30m",
        ]
    )
    assert (entry.bind_address, entry.port, entry.path) == ("::1", 8080, None)
    assert entry.policy == ForwardPolicy(
        allow=("10.0.0.0/8", "::1"),
        deny=("10.0.0.5",),
        max_channels=50,
        rate=10.0,
        burst=20,
        bandwidth=1 << 20,
        idle_timeout=5400.0,
    )
    assert entry.policy.describe() == (
        "allow=10.0.0.0/8,::1/128 deny=10.0.0.5/32 max_channels=50 rate=10 burst=20 "
        "bandwidth=1048576 idle_timeout=5400"
    )
    assert parse_policy_line(["/run/app.sock", "max_channels=1"]).path == "/run/app.sock"
    assert parse_policy_line(["127.0.0.1:9", "rate=2"]).bind_address == "127.0.0.1"


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "give the forward's listen side ([BIND_ADDRESS:]PORT) and KEY=VALUE words"),
        (
            ["allow=::1"],
            "'allow=::1': first name the forward by its listen side, e.g. "
            "ForwardPolicy=8080 allow=::1",
        ),
        (
            ["8080"],
            "'8080': give at least one KEY=VALUE (allow, deny, max_channels, rate, "
            "burst, bandwidth, idle_timeout)",
        ),
        (
            ["8080", "alow=::1"],
            "unknown policy key 'alow' (did you mean allow?): give one of "
            "allow, deny, max_channels, rate, burst, bandwidth, idle_timeout",
        ),
        (
            ["8080", "rate"],
            "'rate': give KEY=VALUE (allow, deny, max_channels, rate, burst, "
            "bandwidth, idle_timeout)",
        ),
        (["8080", "rate=1", "rate=2"], "rate is given twice"),
        (["8080", "rate=fast"], "rate: 'fast' is not a rate: give N, N/s, N/m or N/h connections"),
        (
            ["8080", "bandwidth=1T"],
            "bandwidth: '1T' is not a bandwidth: give bytes per second, e.g. 512K",
        ),
        (
            ["8080", "idle_timeout=soon"],
            "idle_timeout: 'soon' is not a time (e.g. 30, 5m, 1h30m; 0: never)",
        ),
        (["8080", "max_channels=-1"], "max_channels: '-1' is not a count (0 or more)"),
        (
            ["8080", "allow=10.0.0.1/8"],
            "allow: '10.0.0.1/8' has host bits set: give the block's first address (10.0.0.0/8)",
        ),
        (["8080", "allow=,"], "allow: give one or more addresses or CIDR blocks, comma-separated"),
        (["8080", "burst=3"], "burst must be 0 or more, and needs a rate"),
        (
            ["http", "rate=1"],
            "'http' names no forward: give its listen side as -R does, "
            "[BIND_ADDRESS:]PORT or a socket path",
        ),
    ],
)
def test_option_mistakes_get_one_clear_line(words: list[str], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_policy_line(words)
    assert caught.value.message == message


def test_the_keyword_reads_one_quoted_argument_and_names_it_in_errors() -> None:
    parsed = parse_keyword("ForwardPolicy=8080 allow=10.0.0.0/8 rate=5")
    assert parsed is not None
    assert parsed[1].policy == ForwardPolicy(allow=("10.0.0.0/8",), rate=5)
    with pytest.raises(SpecError) as caught:
        parse_keyword("ForwardPolicy=8080 rate=x")
    assert caught.value.message == (
        "command-line line 0: Bad ForwardPolicy '8080 rate=x': rate: 'x' is not a rate: "
        "give N, N/s, N/m or N/h connections"
    )


def _options(*lines: str) -> ClientOptions:
    options = ClientOptions()
    for line in lines:
        options.apply_option(line)
    return options


def test_policies_join_the_forwards_they_name() -> None:
    options = _options(
        "RemoteForward=8080 localhost:80",
        "RemoteForward=127.0.0.1:8081 localhost:81",
        "ForwardPolicy=127.0.0.1:8081 max_channels=2",
        "ForwardPolicy=8080 deny=::1",
    )
    options.attach_policies()
    first, second = options.remote_forwards
    assert first.policy == ForwardPolicy(deny=("::1",))
    assert second.policy == ForwardPolicy(max_channels=2)
    # The policy is not part of which forward it is.
    assert first == parse_remote_forward("8080:localhost:80")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["ForwardPolicy=9999 rate=1"],
            "ForwardPolicy 9999: no remote forward listens there (give the listen side of "
            "one -R forward)",
        ),
        (
            ["ForwardPolicy=8080 rate=1", "ForwardPolicy=*:8080 rate=2"],
            "ForwardPolicy *:8080: no remote forward listens there (give the listen side of "
            "one -R forward)",
        ),
        (
            ["ForwardPolicy=8080 rate=1", "ForwardPolicy=localhost:8080 rate=2"],
            "ForwardPolicy localhost:8080: that forward already has a policy (ForwardPolicy 8080)",
        ),
        (
            ["RemoteForward=0.0.0.0:8080 localhost:81", "ForwardPolicy=8080 rate=1"],
            "ForwardPolicy 8080: 2 remote forwards listen on that port; name one by "
            "BIND_ADDRESS:PORT",
        ),
    ],
)
def test_a_policy_must_name_exactly_one_forward(lines: list[str], message: str) -> None:
    options = _options("RemoteForward=8080 localhost:80", *lines)
    with pytest.raises(SpecError) as caught:
        options.attach_policies()
    assert caught.value.message == message


def test_socket_forwards_take_no_originator_lists() -> None:
    spec = parse_remote_forward("/tmp/s.sock:localhost:80")
    with pytest.raises(SpecError, match="a socket forward has no originator address"):
        attach_policies([spec], [parse_policy_line(["/tmp/s.sock", "allow=::1"])])
    (capped,) = attach_policies([spec], [parse_policy_line(["/tmp/s.sock", "max_channels=1"])])
    assert capped.policy == ForwardPolicy(max_channels=1)


def test_values_one_by_one() -> None:
    assert policy_from_values({"rate": "3/s", "bandwidth": "512k"}) == ForwardPolicy(
        rate=3, bandwidth=512 * 1024
    )
    assert policy_from_values({"idle_timeout": "0"}).idle_timeout == 0


# TOML 1.0 keeps an inline table on one line.
_TABLE = (
    '{ listen = "8080", target = "localhost:80", allow = ["10.0.0.0/8", "::1"], '
    'deny = "10.0.0.5", max_channels = 20, rate = 5, burst = 10, bandwidth = "1M", '
    'idle_timeout = "5m" }'
)
CONFIG = f"""\
[tunnel.web]
host = "gw.example.com"
forwards = [
  {_TABLE},
  "8081:localhost:81",
  "8082:localhost:82",
]
ForwardPolicy = "8081 max_channels=3"
"""


def test_the_file_gives_policies_in_forward_tables_and_as_lines() -> None:
    (tunnel,) = parse_config(CONFIG, "rt.toml").tunnels
    first, second, third = (f.spec.policy for f in tunnel.forwards)
    assert first == ForwardPolicy(
        allow=("10.0.0.0/8", "::1"),
        deny=("10.0.0.5",),
        max_channels=20,
        rate=5,
        burst=10,
        bandwidth=1 << 20,
        idle_timeout=300.0,
    )
    assert second == ForwardPolicy(max_channels=3)
    assert third is None
    # What the runner requests carries them.
    assert [f.policy for f in tunnel.client_options().remote_forwards] == [first, second, None]
    # ForwardPolicy is no setting of the tunnel (same_server ignores it).
    assert all(name != "ForwardPolicy" for name, _ in tunnel.settings)


@pytest.mark.parametrize(
    ("forward", "extra", "message"),
    [
        (
            '{ listen = "8080", target = "h:80", allow = ["10.0.0.0/8", 10] }',
            "",
            "rt.toml line 3: tunnel.web.forwards[0].allow: give a list of addresses or CIDR "
            'blocks, e.g. ["10.0.0.0/8", "::1"]',
        ),
        (
            '{ listen = "8080", target = "h:80", allow = ["10.0.0.0/33"] }',
            "",
            "rt.toml line 3: tunnel.web.forwards[0].allow: '10.0.0.0/33' is not an IP address "
            "or CIDR block (e.g. 10.0.0.0/8, ::1)",
        ),
        (
            '{ listen = "8080", target = "h:80", rate = "fast" }',
            "",
            "rt.toml line 3: tunnel.web.forwards[0].rate: 'fast' is not a rate: give N, N/s, "
            "N/m or N/h connections",
        ),
        (
            '{ listen = "8080", target = "h:80", max_channel = 3 }',
            "",
            "rt.toml line 3: tunnel.web.forwards[0].max_channel: unknown key; did you mean "
            "max_channels?",
        ),
        (
            '{ listen = "8080", target = "h:80", burst = 4 }',
            "",
            "rt.toml line 3: tunnel.web.forwards[0]: burst must be 0 or more, and needs a rate",
        ),
        (
            '{ listen = "8080", target = "h:80", max_channels = true }',
            "",
            "rt.toml line 3: tunnel.web.forwards[0].max_channels: give a number or a string",
        ),
        (
            '"8080:h:80"',
            'ForwardPolicy = "9090 rate=1"',
            "rt.toml line 4: tunnel.web.ForwardPolicy: ForwardPolicy 9090: no remote forward "
            "listens there (give the listen side of one -R forward)",
        ),
        (
            '"8080:h:80"',
            'forwardpolicy = "8080 rate=x"',
            "rt.toml line 4: tunnel.web.forwardpolicy: Bad ForwardPolicy '8080 rate=x': rate: "
            "'x' is not a rate: give N, N/s, N/m or N/h connections",
        ),
    ],
)
def test_file_mistakes_name_file_line_and_key(forward: str, extra: str, message: str) -> None:
    text = f'[tunnel.web]\nhost = "gw"\nforwards = [{forward}]\n{extra}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "rt.toml")
    assert list(caught.value.problems) == [message]


# -- what an operator sees

WEB = ForwardStatus(
    "8080:127.0.0.1:80",
    "active",
    "localhost:8080",
    8080,
    1,
    9,
    100,
    200,
    policy="allow=10.0.0.0/8 max_channels=5",
    refused={"denied": 0, "not-allowed": 3, "max-channels": 2, "rate": 0},
)
PLAIN = ForwardStatus("8081:127.0.0.1:81", "active", "localhost:8081", 8081, 0, 0, 0, 0)
TUNNEL = TunnelStatus("gw", "a@gw:22", "connected", 1000.0, 0, 1, None, None, (WEB, PLAIN))


class _Source:
    def status(self) -> tuple[TunnelStatus, ...]:
        return (TUNNEL,)


def test_status_shows_the_policy_and_its_refusals() -> None:
    lines = format_status([TUNNEL], 1000.0).splitlines()
    assert lines[-1] == (
        "  8080:127.0.0.1:80 policy: allow=10.0.0.0/8 max_channels=5; refused: denied 0, "
        "not-allowed 3, max-channels 2, rate 0"
    )
    assert sum("policy:" in line for line in lines) == 1
    data = json.loads(json.dumps(status_to_json(TUNNEL)))
    assert data["forwards"][0]["refused"] == WEB.refused
    assert status_from_json(data) == TUNNEL


def test_metrics_count_refusals_by_reason_for_forwards_with_a_policy() -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render(_Source()).decode())
        for s in family.samples
        if s.name == "rtunnel_forward_refused_total"
    }
    web = (("forward", "8080:127.0.0.1:80"),)
    assert samples == {
        ("rtunnel_forward_refused_total", (*web, ("reason", r), ("tunnel", "gw"))): float(
            WEB.refused[r]
        )
        for r in REASONS
    }


def test_twistd_takes_the_option_too() -> None:
    from twisted.python import usage

    from rtunnel.service import Options

    options = Options()
    options.parseOptions(["-R", "8080:localhost:80", "-o", "ForwardPolicy=8080 deny=::1", "u@h"])
    assert options.client_options.remote_forwards[0].policy == ForwardPolicy(deny=("::1",))
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["-R", "8080:h:80", "-o", "ForwardPolicy=9 rate=1", "u@h"])
    assert str(caught.value) == (
        "ForwardPolicy 9: no remote forward listens there (give the listen side of one -R forward)"
    )


def test_a_changed_policy_keeps_the_open_channels_and_the_counts() -> None:
    # A reload gives a forward its new policy in place (ReverseTunnel.set_forward_policy).
    gate = ForwardGate(ForwardPolicy(max_channels=3, rate=1, burst=2))
    outcomes = [gate.admit("192.0.2.1", 0.0) for _ in range(3)]
    assert [o and o.reason for o in outcomes] == [None, None, "rate"]
    assert gate.active == 2 and gate.refused == {"rate": 1}
    gate.change(ForwardPolicy(max_channels=2, deny=("192.0.2.1",)))
    # The two open channels count against the new cap; the refusals carry on.
    assert gate.admit("192.0.2.9", 0.0) is not None
    assert gate.admit("192.0.2.1", 0.0) is not None
    assert gate.refused == {"rate": 1, "max-channels": 1, "denied": 1}
    gate.release()
    assert gate.admit("192.0.2.9", 0.0) is None and gate.active == 2
    # A new rate starts a full bucket; a new bandwidth cap a new bucket.
    gate.change(ForwardPolicy(rate=1, burst=1, bandwidth=1000))
    gate.release()
    gate.release()
    assert gate.admit("192.0.2.9", 0.0) is None
    first = gate.bandwidth
    assert first is not None
    assert gate.admit("192.0.2.9", 0.0) is not None  # the burst of one is spent
    gate.change(ForwardPolicy(rate=1, burst=1, bandwidth=2000))
    assert gate.bandwidth is None
    # The same rate keeps its bucket: empty at 0.0, one token a second later.
    assert gate.admit("192.0.2.9", 0.0) is not None
    assert gate.admit("192.0.2.9", 1.0) is None and gate.bandwidth is not first
