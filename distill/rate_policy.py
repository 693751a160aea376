"""The rate a server accepts, found by AIMD on the request rate: one state in, one decision out.

Every function here is pure: it takes a :class:`RateState` (and what was observed) and returns the next one, so
the policy is tested on plain numbers, without clocks or sleeps. :mod:`distill.rate_watch` feeds it.

* **probe** (nothing known): start slow and grow by ``1 / latency`` per accepted answer, which doubles the rate
  every round trip (TCP's slow start, on a rate), and by the clock, doubling at least every ``PROBE_DOUBLING``
  seconds, while the rate is what holds requests back;
* **a rate signal** (a 429, or a burst of 503s): decrease at once, at most once per observation window, to
  ``BETA`` times the rate the server actually *accepted* over the last window (not the rate that was asked),
  but never below ``BETA * MAX_CUT`` of the rate sent, in one step (a window refused whole tells little);
* **a clean window** in which the rate held requests back: increase. Below ``target`` (what was accepted before
  the last decrease, or the limit the server or ``--rpm`` states) the step halves the distance to it, like a
  binary search; near and above it the step is additive (``ALPHA`` of the rate, at least ``ALPHA_MIN``). Right after the
  probe, whose last window measured a rising rate, the rate grows by ``RECOVER_GROWTH`` a window instead;
* a limit the server **tells** (headers) or the user gives (``--rpm``) is a ceiling: the rate never goes over it.

Netflix's concurrency-limits AIMD (decrease by a ratio on a drop, increase while in use), TCP's slow start and
additive increase, and BIC's binary search towards the last good level are the anchors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

WINDOW = 1.0  # seconds of one observation window: providers enforce their limits over windows this short
START_RATE = 4.0  # requests/s before anything is known
MIN_RATE = 1 / 60  # one request a minute: the rate never falls below this
MAX_RATE = 1e6
BETA = 0.9
MAX_CUT = 0.5  # one decrease goes at most this far below the rate (then BETA)
ALPHA = 0.01
ALPHA_MIN = 0.5
RECOVER_GROWTH = 0.1
PROBE_DOUBLING = (
    0.25  # seconds: while probing and holding requests back, the rate doubles at least this often
)
STORED_START = 0.9  # a run starts at this share of the rate a run before it learned
HEADROOM = 0.985  # a stated limit is paced a hair under, as a clock drift and window edges need
SHED_SHARE = 0.1  # 503s are shedding (a rate signal) when this share of a window's answers or more...
SHED_MIN = 3  # ...and at least this many, and the server still answered some: else they are faults
SHED_MIN_ANSWERS = (
    20  # a share of fewer answers than this says nothing (a run's first answers, its last stragglers)
)

Phase = Literal["probe", "recover", "steady"]


@dataclass(frozen=True, slots=True)
class RateState:
    """What the controller believes: the rate to send at, and why."""

    rate: float  # requests per second
    phase: Phase = "probe"
    source: str = "probe"  # probe | learned | stored | told | --rpm
    ceiling: float | None = None  # never above this (a stated limit, with headroom)
    target: float | None = None  # the level to return to quickly after a decrease
    hold_until: float = float("-inf")  # no second decrease before this moment

    @property
    def per_minute(self) -> float:
        return self.rate * 60.0


@dataclass(frozen=True, slots=True)
class Window:
    """What one observation window saw (answers by arrival; ``sent`` by departure)."""

    sent: int = 0
    accepted: int = 0
    limited: int = 0  # 429s
    shed: int = 0  # 503s (and 529s)
    faults: int = 0  # other failures
    busy: bool = False  # the rate held at least one request back
    decreased: bool = False  # a decrease happened in this window

    @property
    def answers(self) -> int:
        return self.accepted + self.limited + self.shed + self.faults


def start(*, user_rate: float | None = None, stored_rate: float | None = None, now: float = 0.0) -> RateState:
    """The first state: under ``--rpm`` (``user_rate``, per second) if given, else from a learned rate (one below
    ``START_RATE`` is not worth starting from), else probing."""
    ceiling = user_rate * HEADROOM if user_rate else None
    if stored_rate and stored_rate >= START_RATE and (ceiling is None or stored_rate < ceiling):
        # just under what was learned: the limit may have moved since, and a clean start costs little
        rate = stored_rate * STORED_START
        return RateState(rate=rate, phase="steady", source="stored", ceiling=ceiling, target=stored_rate)
    if ceiling is not None:
        return RateState(rate=ceiling, phase="steady", source="--rpm", ceiling=ceiling, target=ceiling)
    return RateState(rate=START_RATE)


def told(state: RateState, limit: float, user_rate: float | None = None) -> RateState:
    """The server stated its request limit (per second): pace under it, never over it, nor over ``--rpm``."""
    ceiling = limit * HEADROOM
    if user_rate:
        ceiling = min(ceiling, user_rate * HEADROOM)
    if state.source == "told" and state.ceiling == ceiling:
        return state
    rate = ceiling if state.source != "told" or state.rate >= ceiling else state.rate
    return replace(state, rate=rate, phase="steady", source="told", ceiling=ceiling, target=ceiling)


def accepted_growth(state: RateState, latency: float) -> RateState:
    """Slow start: an answer accepted while probing adds ``1 / latency`` (the rate doubles each round trip)."""
    if state.phase != "probe":
        return state
    return replace(state, rate=_bounded(state.rate + 1.0 / max(latency, 1e-3)))


def probe_growth(state: RateState, seconds: float) -> RateState:
    """Slow start by the clock: while probing, the rate also doubles every ``PROBE_DOUBLING`` seconds.

    Growth by answers alone waits a round trip per doubling, which against a slow server without a limit (a
    self-hosted model answering in a second) holds the run back for many seconds. A server that limits refuses
    at once, so the clock can run ahead of the answers: the first refusal ends the probe.
    """
    if state.phase != "probe" or seconds <= 0:
        return state
    return replace(state, rate=_bounded(state.rate * 2.0 ** (seconds / PROBE_DOUBLING)))


def signal(
    state: RateState, accepted_rate: float, now: float, window: float = WINDOW, sent_rate: float = 0.0
) -> RateState:
    """A rate-limit answer: decrease to ``BETA`` of what was accepted, once per window (else unchanged).

    A window in which (nearly) everything was refused says little about the limit: one decrease goes no lower
    than ``MAX_CUT`` of the rate actually sent (``sent_rate``; not the rate allowed, which a probe may have
    raised far above it).
    """
    if now < state.hold_until:
        return state
    level = max(accepted_rate, MIN_RATE)
    rate = _bounded(min(state.rate, max(level, sent_rate * MAX_CUT)) * BETA)
    phase: Phase = "recover" if state.phase == "probe" else "steady"
    target = state.ceiling if state.source in ("told", "--rpm") else level
    source = state.source if state.source in ("told", "--rpm") else "learned"
    return replace(state, rate=rate, phase=phase, source=source, target=target, hold_until=now + window)


def window_end(state: RateState, seen: Window) -> RateState:
    """The end of an observation window: increase after a clean one in which the rate held requests back."""
    if seen.decreased or not seen.busy or seen.limited or state.phase == "probe":
        return state
    rate = state.rate
    if state.phase == "recover":
        rate *= 1.0 + RECOVER_GROWTH
    else:
        step = max(ALPHA_MIN, ALPHA * rate)
        if state.target is not None and rate < state.target:
            step = max(step, (state.target - rate) / 2.0)
        rate += step
    if state.ceiling is not None:
        rate = min(rate, state.ceiling)
    return replace(state, rate=_bounded(rate))


def is_shedding(shed: int, answers: int, accepted: int) -> bool:
    """Whether 503s are a burst of shedding (a rate signal) rather than scattered faults."""
    return shed >= SHED_MIN and accepted > 0 and answers >= SHED_MIN_ANSWERS and shed >= SHED_SHARE * answers


def _bounded(rate: float) -> float:
    return min(max(rate, MIN_RATE), MAX_RATE)
