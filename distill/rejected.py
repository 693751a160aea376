"""How much of the input a run could not use, and when that is an error instead of a warning.

A run never succeeds silently on an input it could not read: no conversation at all (a wrong ``--format``, a
JSON syntax error at the first item, every conversation refused by the output format) is an error before
anything is paid for; a file that cannot be read past some point (a truncated JSON list) is an error once the
conversations before it are written; a share of rejected records above ``--max-reject-share`` is an error, and
any reject at all is a warning naming the share and the rejects file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .conversation import Reject
from .errors import DistillError, InputError, UsageError

DEFAULT_MAX_REJECT_SHARE = 0.5


class NothingToDistil(InputError):
    """Not one conversation could be read from the input (exit 2)."""


class InputLost(DistillError):
    """The input could not be read past some point; what came before was answered and written (exit 1)."""


class TooManyRejects(DistillError):
    """More of the input was rejected than ``--max-reject-share`` allows (exit 1)."""


@dataclass(slots=True)
class RejectTally:
    """The rejects a run met: how many, the first reason, and where the input stopped being readable."""

    rejected: int = 0
    first_reason: str | None = None
    lost_at: str | None = None
    lost_reason: str | None = None

    def note(self, reject: Reject) -> None:
        self.rejected += 1
        if self.first_reason is None:
            self.first_reason = reject.reason
        if reject.ends_input and self.lost_at is None:
            self.lost_at, self.lost_reason = reject.source, reject.reason

    def share(self, conversations: int) -> float:
        records = conversations + self.rejected
        return self.rejected / records if records else 0.0


def check_max_share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--max-reject-share must be between 0 and 1, got {value:g}")
    return value


def judge(
    tally: RejectTally,
    conversations: int,
    *,
    input_path: Path,
    rejects_path: Path,
    max_share: float = DEFAULT_MAX_REJECT_SHARE,
    hint: str | None = None,
) -> str | None:
    """The warning to show about the rejects (None when there were none); raises when they make the run fail.

    ``conversations`` is how many conversations were read; a reject past which the input was lost always fails.
    """
    where = f"see {rejects_path}"
    if conversations == 0:
        if tally.rejected == 0:
            raise NothingToDistil(
                f"input file {input_path} holds no conversation: there is nothing to distil"
            )
        fix = f"; {hint}" if hint else ""
        raise NothingToDistil(
            f"no conversation could be read from {input_path}: all {tally.rejected} records were rejected "
            f"(first: {tally.first_reason}); {where}{fix}"
        )
    if tally.lost_at is not None:
        raise InputLost(
            f"{input_path} cannot be read past {tally.lost_at} ({tally.lost_reason}): every record after it is "
            f"lost. The {conversations} conversations before it were answered and written; repair the file and "
            f"run the same command again (nothing answered is paid for twice); {where}"
        )
    if not tally.rejected:
        return None
    share = tally.share(conversations)
    counted = (
        f"{tally.rejected} of {tally.rejected + conversations} input records ({share:.1%}) were rejected"
    )
    if share > max_share:
        raise TooManyRejects(
            f"{counted}, more than --max-reject-share {max_share:g} allows (first: {tally.first_reason}); "
            f"{where}. The {conversations} conversations read were answered and written"
        )
    return f"WARNING: {counted} (first: {tally.first_reason}); {where} (--max-reject-share {max_share:g})"
