"""Reconnect backoff and keepalive arithmetic (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtunnel._policy import ReconnectPolicy, TokenBucket, keepalive_decision


def test_exponential_backoff_is_capped() -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=10, factor=2, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_fixed_interval_is_the_special_case() -> None:
    policy = ReconnectPolicy.fixed(5, max_retries=3)
    assert [policy.delay(n) for n in range(1, 5)] == [5, 5, 5, 5]
    assert [policy.retries_remaining(n) for n in range(1, 4)] == [2, 1, 0]
    assert not policy.exhausted(3) and policy.exhausted(4)


def test_unlimited_retries() -> None:
    policy = ReconnectPolicy()
    assert policy.retries_remaining(1000) == -1 and not policy.exhausted(10**6)


@given(st.integers(1, 50), st.floats(0, 1, exclude_max=True))
def test_jitter_stays_within_its_fraction(retry: int, r: float) -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=30, jitter=0.2)
    base = min(30, 2 ** (retry - 1))
    assert 0.8 * base - 1e-9 <= policy.delay(retry, lambda: r) <= 1.2 * base + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "sometimes"},
        {"initial_delay": -1},
        {"factor": 0.5},
        {"jitter": 1.5},
        {"max_retries": -1},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]


def test_keepalive_waits_while_traffic_arrives() -> None:
    d = keepalive_decision(now=105, last_received=100, outstanding=2, interval=10, count_max=3)
    assert (d.send, d.give_up, d.outstanding, d.next_check) == (False, False, 0, 110)


def simulate_silence(interval: float, count_max: int) -> float:
    """Time from the last packet until give-up, following the decisions."""
    now, outstanding = 0.0, 0
    last_received = 0.0
    d = keepalive_decision(now, last_received, outstanding, interval, count_max)
    sent = 0
    while not d.give_up:
        now, outstanding = d.next_check, d.outstanding
        d = keepalive_decision(now, last_received, outstanding, interval, count_max)
        sent += d.send
    assert sent == count_max
    return now


@given(st.integers(1, 60), st.integers(0, 10))
def test_dead_server_noticed_within_k_times_n_plus_1(interval: int, count_max: int) -> None:
    assert simulate_silence(interval, count_max) <= interval * (count_max + 1)


def test_token_bucket_allows_the_rate_and_a_bounded_burst() -> None:
    bucket = TokenBucket(10_000, now=100.0)
    assert bucket.burst == 1024  # a tenth of a second's worth, at least 1 KiB
    assert bucket.allowance(100.0) == 1024
    bucket.spend(1024)
    assert bucket.allowance(100.0) == 0
    assert bucket.wait(100.0, 500) == pytest.approx(0.05)
    assert bucket.wait(100.0, 10**6) == pytest.approx(0.1024)  # capped at the burst
    assert bucket.allowance(100.05) == 500
    # Idle time does not bank more than the burst.
    assert bucket.allowance(200.0) == 1024
    assert TokenBucket(10**7, now=0).burst == 10**6
    assert TokenBucket(100, now=0, burst=50).allowance(0) == 50
    with pytest.raises(ValueError):
        TokenBucket(0, now=0)


def test_token_bucket_never_lets_more_through_than_rate_times_time_plus_burst() -> None:
    bucket = TokenBucket(3000, now=0.0)
    total = 0
    for step in range(1, 500):
        now = step * 0.013
        n = bucket.allowance(now)
        bucket.spend(n)
        total += n
        assert total <= 3000 * now + bucket.burst
    assert total >= 3000 * now - 3000 * 0.013
