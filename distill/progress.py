"""What a run tells whoever watches it, and the figures a progress display shows.

The library prints nothing: :func:`distill.runner.run` calls a :class:`RunObserver` (by default one that does
nothing), and the CLI passes :class:`distill.progress_bar.ProgressBar`. The figures here are plain functions of
:class:`~distill.stats.RunStats`, so any display shows the same ones:

- :class:`Eta`: a remaining time that does not jump: the rate of conversations answered *by this run* (those
  found whole in the cache are done but were no work), smoothed exponentially over about half a minute;
- :func:`binding_limit`: which limit held requests back most over the last moments (``--concurrency``, the
  RPM or TPM pacing, or a pause a 429 asked for);
- :func:`other_counters`: every counter of ``RunStats`` the display does not show by name, so counters added
  later show up without touching the display.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import fields

from .stats import RunStats

Clock = Callable[[], float]
ETA_TIME_CONSTANT = 30.0
LIMIT_NAMES = {"concurrency": "concurrency", "rpm": "RPM", "tpm": "TPM", "pause": "429 pause"}
# Shown by name (or not at all) by the displays; every other number in RunStats is shown as "name value".
NAMED_FIELDS = frozenset(
    {
        "conversations_read",
        "conversations_done",
        "conversations_failed",
        "conversations_cached",
        "total_expected",
        "started",
        "failures",
        "waits",
        "cost_usd",
        "cost_before_usd",
        "budget_usd",
        "prompt_tokens",
        "completion_tokens",
    }
)


class RunObserver:
    """Hears what a run does; every method does nothing here. Subclass it to show progress or collect notes."""

    live = False  # True for a display that wants the input's size estimated (for a bar and an ETA)

    def started(self, stats: RunStats) -> None:
        """The run is about to read and send; ``stats`` is updated in place until :meth:`stopped`."""

    def warn(self, message: str) -> None:
        """Something the user should know (a doubtful model name, rejected input records)."""

    def note(self, message: str) -> None:
        """A step worth a line (a batch submitted, a wave collected)."""

    def stopped(self, stats: RunStats) -> None:
        """The run stopped sending (finished, failed or interrupted)."""


class Eta:
    """Seconds left, from an exponentially smoothed rate of the conversations this run answered itself."""

    def __init__(self, clock: Clock = time.monotonic, time_constant: float = ETA_TIME_CONSTANT) -> None:
        self.clock = clock
        self.time_constant = time_constant
        self.rate: float | None = None  # conversations a second
        self._last: tuple[float, int] | None = None

    def update(self, stats: RunStats) -> float | None:
        """Take a new reading of ``stats``; returns the seconds left (None until a rate is known)."""
        now = self.clock()
        worked = stats.conversations_done + stats.conversations_failed - stats.conversations_cached
        if self._last is None:
            self._last = (now, worked)
        else:
            then, before = self._last
            elapsed = now - then
            if elapsed >= 0.5:
                instant = (worked - before) / elapsed
                if self.rate is None:
                    self.rate = instant if worked > 0 else None
                else:
                    weight = 1.0 - math.exp(-elapsed / self.time_constant)
                    self.rate += weight * (instant - self.rate)
                self._last = (now, worked)
        return self.seconds_left(stats)

    def seconds_left(self, stats: RunStats) -> float | None:
        if not stats.total_expected or not self.rate or self.rate <= 0:
            return None
        left = stats.total_expected - stats.conversations_done - stats.conversations_failed
        return max(0.0, left / self.rate)


class LimitWatch:
    """Which limit held requests back since the last reading: the one that made most of them wait, else
    ``concurrency`` while requests go out unhindered (the cap in flight and the server's latency set the pace),
    else None."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._sent = 0

    def update(self, stats: RunStats) -> str | None:
        grown = {name: count - self._seen.get(name, 0) for name, count in stats.waits.items()}
        sent = stats.requests_sent - self._sent
        self._seen, self._sent = dict(stats.waits), stats.requests_sent
        name, most = max(grown.items(), key=lambda item: item[1], default=(None, 0))
        if most > 0:
            return LIMIT_NAMES.get(name, name)
        return LIMIT_NAMES["concurrency"] if sent > 0 else None


def binding_limit(stats: RunStats) -> str | None:
    """The limit that made requests wait most over the whole run (None when none did)."""
    return LimitWatch().update(stats)


def other_counters(stats: RunStats) -> list[tuple[str, int | float]]:
    """Every non-zero number of ``stats`` a display does not show by name, as (label, value)."""
    shown = []
    for f in fields(stats):
        value = getattr(stats, f.name)
        if (
            f.name in NAMED_FIELDS
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not value
        ):
            continue
        shown.append((f.name.replace("_", " "), value))
    return shown


def human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def cost_text(stats: RunStats) -> str | None:
    """``$0.0123 this run, $0.0456 in all of $1.00 budget`` (the total over every invocation of these settings, and
    the budget, where known); None when no price is known."""
    if stats.cost_usd is None:
        return None
    text = f"{dollars(stats.cost_usd)} this run"
    if stats.cost_before_usd:
        text += f", {dollars(stats.cost_before_usd + stats.cost_usd)} in all"
    if stats.budget_usd is not None:
        text += f" of {dollars(stats.budget_usd)} budget"
    return text


def status_line(stats: RunStats, eta: float | None = None, limit: str | None = None) -> str:
    """One line of every figure: what a display without a bar (a log) shows."""
    total = f"/{stats.total_expected}" if stats.total_expected else ""
    parts = [f"conversations {stats.conversations_done}{total}"]
    if stats.conversations_cached:
        parts[0] += f" ({stats.conversations_cached} from cache)"
    if stats.conversations_failed:
        parts.append(f"{stats.conversations_failed} failed")
    parts.append(f"{stats.requests_per_second():.1f} req/s")
    parts.append(f"tokens {human(stats.prompt_tokens)} in {human(stats.completion_tokens)} out")
    cost = cost_text(stats)
    if cost:
        parts.append(cost)
    if limit:
        parts.append(f"held by {limit}")
    parts += [
        f"{label} {human(value) if isinstance(value, int) else f'{value:g}'}"
        for label, value in other_counters(stats)
    ]
    parts.append(f"ETA {duration(eta)}")
    return " | ".join(parts)
