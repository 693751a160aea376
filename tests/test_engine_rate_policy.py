"""The rate policy on plain numbers, and the whole controller against a simulated server on a simulated clock.

No test here sleeps or opens a socket: :mod:`tests.ratesim` moves time from event to event.
"""

from __future__ import annotations

import pytest
from ratesim import simulate
from support import FakeClock

from distill import rate_policy as policy
from distill.limiter import RateLimiter
from distill.rate_policy import RateState, Window
from distill.rate_watch import RateWatch
from distill.ratelimit_headers import RateSignals

PHASES = (0.0, 0.37, 0.81)  # where the server's windows fall against the run's start


def test_nothing_known_starts_slow_and_probes():
    state = policy.start()
    assert state.phase == "probe" and state.rate == policy.START_RATE
    grown = policy.accepted_growth(state, latency=0.2)
    assert grown.rate == pytest.approx(policy.START_RATE + 5.0)  # one more request per round trip


def test_rpm_is_a_ceiling_under_headroom():
    state = policy.start(user_rate=100.0)
    assert state.rate == pytest.approx(98.5) and state.ceiling == pytest.approx(98.5)
    for _ in range(20):
        state = policy.window_end(state, Window(sent=98, accepted=98, busy=True))
    assert state.rate == pytest.approx(98.5)


def test_a_stored_rate_starts_just_under_it():
    state = policy.start(stored_rate=50.0)
    assert state.source == "stored" and state.rate == pytest.approx(45.0) and state.target == 50.0
    assert policy.start(stored_rate=policy.START_RATE / 2).phase == "probe"  # too low to be worth it
    assert policy.start(user_rate=40.0, stored_rate=50.0).source == "--rpm"  # --rpm below it wins


def test_a_signal_decreases_to_beta_of_what_was_accepted_once_per_window():
    state = RateState(rate=120.0, phase="steady", source="learned")
    cut = policy.signal(state, accepted_rate=100.0, now=10.0)
    assert cut.rate == pytest.approx(90.0) and cut.target == 100.0 and cut.hold_until == 11.0
    assert policy.signal(cut, accepted_rate=50.0, now=10.5) is cut  # held: the same window
    again = policy.signal(cut, accepted_rate=50.0, now=11.0)
    assert again.rate == pytest.approx(45.0)


def test_the_first_signal_ends_the_probe_and_recovery_grows_by_a_tenth():
    state = policy.signal(RateState(rate=160.0), accepted_rate=80.0, now=1.0)
    assert state.phase == "recover" and state.rate == pytest.approx(72.0)
    grown = policy.window_end(state, Window(sent=72, accepted=72, busy=True))
    assert grown.rate == pytest.approx(79.2)


def test_clean_windows_return_quickly_to_the_target_then_add_slowly():
    state = RateState(rate=90.0, phase="steady", source="learned", target=100.0)
    rates = []
    for _ in range(6):
        state = policy.window_end(state, Window(sent=90, accepted=90, busy=True))
        rates.append(round(state.rate, 3))
    assert rates[:3] == [95.0, 97.5, 98.75]
    assert rates[-1] > 100.0 and rates[-1] - rates[-2] == pytest.approx(1.0, abs=0.02)  # ALPHA of the rate


def test_no_increase_when_the_rate_held_nothing_back_or_the_window_was_refused():
    state = RateState(rate=90.0, phase="steady", source="learned", target=100.0)
    assert policy.window_end(state, Window(sent=50, accepted=50, busy=False)) is state
    assert policy.window_end(state, Window(sent=90, accepted=80, limited=1, busy=True)) is state


def test_a_told_limit_is_obeyed_and_never_exceeded():
    state = policy.told(policy.start(), 100.0)
    assert state.source == "told" and state.rate == pytest.approx(98.5)
    assert policy.told(state, 100.0) is state
    assert policy.told(state, 50.0).rate == pytest.approx(49.25)  # the limit fell
    assert policy.told(policy.start(user_rate=40.0), 100.0, user_rate=40.0).rate == pytest.approx(39.4)


@pytest.mark.parametrize(
    ("shed", "answers", "accepted", "shedding"),
    [
        (3, 20, 17, True),  # a burst
        (2, 4, 2, False),  # too few to say
        (3, 12, 9, False),  # a quarter, but of too few answers to say (a run's start, its stragglers)
        (25, 1000, 975, False),  # 2.5% scattered: faults
        (10, 10, 0, False),  # nothing accepted at all: an outage, not shedding
    ],
)
def test_503s_are_shedding_only_in_a_burst_beside_answers(shed, answers, accepted, shedding):
    assert policy.is_shedding(shed, answers, accepted) is shedding


# -- the controller against a simulated server -------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_unknown_limit_with_retry_after(phase):
    result = simulate(lambda t: 100.0, phase=phase)
    assert result.share >= 0.9 and result.refused_share <= 0.03
    assert result.watch.state.source == "learned"


@pytest.mark.parametrize("phase", PHASES)
def test_falling_limit_with_bare_429s(phase):
    result = simulate(lambda t: 100.0 if t < 6 else 50.0, retry_after=False, seconds=26.0, phase=phase)
    assert result.share >= 0.85 and result.refused_share <= 0.05
    assert result.watch.learned_rpm() == pytest.approx(3000, rel=0.1)


@pytest.mark.parametrize("phase", PHASES)
def test_a_limit_shed_as_503(phase):
    result = simulate(lambda t: 100.0, status=503, retry_after=False, phase=phase)
    assert result.share >= 0.8 and result.refused_share <= 0.05


def test_a_slow_server_without_a_limit_is_not_held_back_for_long():
    # a self-hosted model answering in a second: growth by answers alone would wait a round trip per doubling
    result = simulate(lambda t: None, seconds=20.0, workers=512, latency=1.0)
    assert result.admitted >= 0.9 * 512 * 19 and result.watch.state.phase == "probe"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_with_few_requests_in_flight_is_not_held_at_the_starting_rate(workers):
    # with one request in flight none is ever waiting when an answer comes or a request leaves: the probe must
    # grow on what the rate held back since the last request left, or it stays at START_RATE for good
    result = simulate(lambda t: None, seconds=10.0, workers=workers, latency=0.04)
    assert result.admitted >= 0.8 * workers * 10.0 / 0.04
    assert result.watch.state.phase == "probe"


def test_scattered_5xx_do_not_slow_an_unlimited_run():
    clean = simulate(lambda t: None, latency=0.1, seconds=10.0)
    faulty = simulate(lambda t: None, latency=0.1, seconds=10.0, fault_rate=0.05)
    assert faulty.admitted >= 0.9 * clean.admitted
    assert faulty.watch.state.phase == "probe"  # no 503 was taken for a rate signal


def test_a_told_limit_is_used_from_the_first_answer():
    result = simulate(lambda t: 100.0, told=True)
    assert result.share >= 0.97 and result.refused == 0


def test_a_known_rpm_keeps_its_figures():
    result = simulate(lambda t: 100.0, rpm=6000)
    assert result.share >= 0.97 and result.refused == 0


def test_a_rerun_from_the_stored_rate_does_not_flood():
    first = simulate(lambda t: 100.0, retry_after=False)
    learned = first.watch.learned_rpm()
    assert learned == pytest.approx(6000, rel=0.1)
    rerun = simulate(lambda t: 100.0, retry_after=False, stored_rpm=learned, seconds=10.0)
    assert rerun.refused <= 0.01 * rerun.sent and rerun.share >= 0.9


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("latency", [0.01, 0.2])
def test_a_short_run_keeps_a_rate_near_the_limit_whatever_the_windows_alignment(phase, latency):
    # What a run of a few seconds keeps for the next one is near the limit, and never far above it (a rerun
    # starts at 0.9 of it and climbs from there)
    result = simulate(
        lambda t: 20.0, seconds=6.0, workers=32, latency=latency, retry_after=False, phase=phase
    )
    assert 0.75 * 1200 <= result.watch.learned_rpm() <= 1.1 * 1200


def test_random_429s_slow_the_run_but_never_stop_it():
    result = simulate(lambda t: None, latency=0.05, seconds=20.0, throttle_rate=0.04)
    assert result.watch.state.rate > 5.0 and result.admitted > 100


# -- what the watch does with the answers ------------------------------------------------------------------


def test_retry_after_pauses_and_a_second_bare_refusal_pauses_briefly():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    watch = RateWatch(limiter, clock=clock, wall_clock=clock)
    ticket = watch.sent()
    watch.limited(ticket, RateSignals(retry_after=0.7))
    assert limiter.paused_until == pytest.approx(0.7)
    clock.now = 0.8
    watch.limited(watch.sent(), RateSignals())  # refused again within the window of the cut
    assert limiter.paused_until == pytest.approx(0.9)


def test_told_headers_set_the_rate_and_a_token_budget():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    watch = RateWatch(limiter, clock=clock, wall_clock=clock)
    told = RateSignals(requests_per_second=10.0, tokens_per_second=1000.0, dialect="together")
    watch.accepted(watch.sent(), told)
    assert limiter.request_rate == pytest.approx(9.85) and limiter.token_rate == pytest.approx(985.0)
    assert watch.learned_rpm() is None  # one answer is too little to keep
    for _ in range(30):
        watch.accepted(watch.sent(), told)
    assert watch.learned_rpm() == pytest.approx(600.0)


def test_each_window_is_handed_over_for_the_record():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    windows = []
    watch = RateWatch(limiter, clock=clock, wall_clock=lambda: 1e9, on_window=windows.append)
    tickets = [watch.sent() for _ in range(3)]
    watch.limited(tickets[-1], RateSignals())
    clock.now = 1.5
    watch.fault()
    (record,) = windows
    assert (record.sent, record.limited, record.faults, record.at) == (3, 1, 0, 1e9)
    assert record.rpm == pytest.approx(watch.state.per_minute)
