"""Reconnect backoff and keepalive arithmetic (pure)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtunnel._core.policy import ReconnectPolicy, TokenBucket, keepalive_decision


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
def test_jitter_stays_within_its_fraction_and_under_the_cap(retry: int, r: float) -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=30, jitter=0.2)
    # The cap holds with the jitter: capped waits spread below 30 s, not around it.
    base = min(30 / 1.2, 2 ** (retry - 1))
    delay = policy.delay(retry, lambda: r)
    assert 0.8 * base - 1e-9 <= delay <= 1.2 * base + 1e-9
    assert delay <= 30


def test_the_cap_holds_after_thousands_of_retries() -> None:
    # A server down for days: 10,000 retries at the cap. 2.0 ** 1024 overflowed before.
    policy = ReconnectPolicy(initial_delay=1, max_delay=60, jitter=0.2)
    delays = [policy.delay(n, lambda: 0.999) for n in (7, 100, 1025, 10_000, 10**9)]
    assert all(59.9 <= d <= 60 for d in delays), delays
    assert policy.delay(10**9, lambda: 0.0) == pytest.approx(60 * 0.8 / 1.2)
    slow = ReconnectPolicy(initial_delay=0.5, max_delay=7, factor=1.0001, jitter=0)
    assert slow.delay(10**9) == 7
    assert ReconnectPolicy(initial_delay=0, max_delay=5).delay(10**6) == 0


def test_the_first_wait_is_the_initial_delay_within_the_jitter() -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=60, jitter=0.2)
    assert policy.delay(1, lambda: 0.0) == pytest.approx(0.8)
    assert policy.delay(1, lambda: 0.999999) == pytest.approx(1.2, abs=1e-5)


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
    d = keepalive_decision(
        now=105, last_received=100, last_sent=None, outstanding=0, interval=10, count_max=3
    )
    assert (d.send, d.give_up, d.outstanding, d.next_check) == (False, False, 0, 110)
    # A keepalive sent at 103 puts the next one off to 113, whatever was received.
    d = keepalive_decision(105, 100, 103, 1, 10, 3)
    assert (d.send, d.give_up, d.outstanding, d.next_check) == (False, False, 1, 113)


def simulate_silence(interval: float, count_max: int, lateness: float = 0.0) -> float:
    """Time from the last packet until give-up, following the decisions; each check
    runs ``lateness`` seconds after it was due."""
    last_received = 0.0
    last_sent: float | None = None
    outstanding = 0
    d = keepalive_decision(0.0, last_received, last_sent, outstanding, interval, count_max)
    sent = 0
    while not d.give_up:
        now = d.next_check + lateness
        d = keepalive_decision(now, last_received, last_sent, outstanding, interval, count_max)
        outstanding = d.outstanding
        if d.send:
            sent += 1
            last_sent = now
    assert sent == count_max
    return now


@given(st.integers(1, 60), st.integers(0, 10), st.floats(0, 0.05))
def test_dead_server_noticed_within_k_times_n_plus_1(
    interval: int, count_max: int, lateness: float
) -> None:
    took = simulate_silence(interval, count_max, lateness)
    assert interval * (count_max + 1) <= took <= (interval + lateness) * (count_max + 1) + 1e-6


def simulate_answered(
    interval: float, count_max: int, reply_after: float, lateness: float, intervals: int
) -> tuple[list[float], int, bool]:
    """
    A healthy, idle server that answers each keepalive ``reply_after`` seconds after it
    is sent; each check runs ``lateness`` seconds after it was due (a busy reactor).
    Returns when keepalives were sent, how many replies arrived, and whether we gave up.
    The caller's part of the rule: any packet received resets ``outstanding``.
    """
    end = interval * intervals
    last_received, last_sent, outstanding = 0.0, None, 0
    sent: list[float] = []
    replies = 0
    reply_at: float | None = None
    next_check = interval + lateness
    while True:
        if reply_at is not None and reply_at <= next_check:
            now, reply_at = reply_at, None
            if now > end:
                break
            last_received, outstanding = now, 0
            replies += 1
            continue
        now = next_check
        if now > end:
            break
        d = keepalive_decision(now, last_received, last_sent, outstanding, interval, count_max)
        if d.give_up:
            return sent, replies, True
        outstanding = d.outstanding
        if d.send:
            sent.append(now)
            last_sent = now
            reply_at = now + reply_after
        next_check = d.next_check + lateness
    return sent, replies, False


@given(
    st.sampled_from([1.0, 2.0, 15.0, 60.0]),
    # ServerAliveCountMax=0 is an idle timeout in OpenSSH too (1 > 0 at the first check).
    st.integers(1, 5),
    st.floats(0, 0.4),
    st.floats(0, 0.05),
)
def test_answered_keepalives_keep_an_idle_connection_for_ever(
    interval: float, count_max: int, reply_fraction: float, lateness: float
) -> None:
    # Issue #12, defect 2: the reply resets the count, so a healthy idle server is never
    # given up on, and exactly one keepalive goes out per idle interval.
    reply_after = interval * reply_fraction
    sent, replies, gave_up = simulate_answered(interval, count_max, reply_after, lateness, 1000)
    assert not gave_up
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(interval - 1e-9 <= g <= interval + reply_after + lateness + 1e-9 for g in gaps)
    most = 1000
    least = int(1000 * interval / (interval + reply_after + lateness)) - 1
    assert least <= len(sent) <= most
    assert replies in (len(sent), len(sent) - 1)


def test_answered_keepalives_with_a_late_reactor_send_one_per_interval() -> None:
    # The case the issue measured: ServerAliveInterval=2, answers within 1 ms, checks a
    # few ms late. 2,000 s idle: one keepalive per 2.003 s, never a give-up.
    sent, replies, gave_up = simulate_answered(2.0, 3, 0.001, 0.003, 1000)
    assert not gave_up
    assert 998 <= len(sent) <= 999 and replies == len(sent)


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


def test_a_reconnect_attempt_reads_as_sentences() -> None:
    from rtunnel import ForwardingError, ReconnectAttempt

    forward = ReconnectAttempt(
        "gw", 22, 2, -1, 0, 1.5, "tunnel", 8080,
        ForwardingError("remote port forwarding failed for listen port 8080"),
    )  # fmt: skip
    assert forward.describe() == (
        "remote port forwarding failed for listen port 8080. Retrying the remote forward "
        "of listen port 8080 in 1.5 s (attempt 2)."
    )
    ssh = ReconnectAttempt(
        "gw", 22, 1, 2, 3, 1.0, "ssh", error=Exception("Timeout, server gw not responding.")
    )
    assert ssh.describe() == (
        "Timeout, server gw not responding. Reconnecting to gw port 22 in 1.0 s (attempt 1 of 3)."
    )
