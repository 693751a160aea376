"""The CLI's progress display: a ``rich`` bar redrawn a few times a second while a run goes.

``conversations done/total`` (those found whole in the cache counted apart), the rate, a smoothed ETA
(:class:`distill.progress.Eta`), failures, the money spent where the price is known, the limit that holds the run
back, and every other counter of :class:`~distill.stats.RunStats`. On a stream that is not a terminal there is no
bar: warnings and notes are printed as lines, and the summary comes at the end.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar as Bar
from rich.table import Table
from rich.text import Text

from .progress import Eta, LimitWatch, RunObserver, cost_text, duration, human, other_counters
from .stats import RunStats

REFRESH_PER_SECOND = 4
BAR_WIDTH = 30


class ProgressBar(RunObserver):
    """A live bar on ``stream`` (when it is a terminal, or ``force_terminal``); warnings and notes as lines.

    ``quiet`` keeps only the warnings.
    """

    def __init__(
        self, stream: TextIO = sys.stderr, *, force_terminal: bool | None = None, quiet: bool = False
    ) -> None:
        self.console = Console(file=stream, force_terminal=force_terminal, highlight=False)
        self.quiet = quiet  # warnings only: no bar, no notes
        self.live = self.console.is_terminal and not quiet
        self._view: _View | None = None
        self._live: Live | None = None

    def started(self, stats: RunStats) -> None:
        if not self.live:
            return
        self._view = _View(stats)
        self._live = Live(
            self._view, console=self.console, refresh_per_second=REFRESH_PER_SECOND, transient=True
        )
        self._live.start()

    def warn(self, message: str) -> None:
        self.console.print(Text(message, style="bold yellow"))

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(Text(message))

    def stopped(self, stats: RunStats) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class _View:
    """What the bar shows, computed from the stats at every refresh."""

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats
        self.eta = Eta()
        self.limits = LimitWatch()
        self.limit: str | None = None

    def __rich__(self) -> Group:
        stats = self.stats
        left = self.eta.update(stats)
        self.limit = self.limits.update(stats) or self.limit
        finished = stats.conversations_done + stats.conversations_failed
        total = stats.total_expected
        head = Text.assemble(
            " ",
            (f"{finished}/{total}" if total else f"{finished}", "bold"),
            " conversations",
            f" ({stats.conversations_cached} from cache)" if stats.conversations_cached else "",
            f" | {stats.requests_per_second():.1f} req/s",
            f" | ETA {duration(left)}",
        )
        row = Table.grid()
        row.add_column(width=BAR_WIDTH)
        row.add_column(no_wrap=True, overflow="ellipsis")
        row.add_row(Bar(total=float(total) if total else None, completed=finished, width=BAR_WIDTH), head)
        details = (
            [Text(f"{stats.conversations_failed} failed", style="red")] if stats.conversations_failed else []
        )
        details.append(Text(f"tokens {human(stats.prompt_tokens)} in {human(stats.completion_tokens)} out"))
        cost = cost_text(stats)
        if cost:
            details.append(Text(f"spent {cost}"))
        details.append(Text(f"held by {self.limit}" if self.limit else "no limit binding"))
        details += [
            Text(f"{label} {value if isinstance(value, int) else f'{value:g}'}")
            for label, value in other_counters(stats)
        ]
        return Group(row, Text(" ").join([Text(""), Text(" | ").join(details)]))
