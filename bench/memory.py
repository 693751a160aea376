"""Target 5, memory: a 1,000,000-conversation input streams through ``distill run`` under 250 MB of peak RSS,
and within 1.5x of the peak at 10,000 conversations.

Both runs are whole ``distill run`` processes (reading, answering through the local teacher in its own process,
export, output check, manifest) with a fresh cache; peak RSS is the kernel's ``ru_maxrss`` for the process, read
with ``wait4``. The 1M run sends a million requests, so this script takes several minutes: the size is the
point of the target. ``--conversations N`` sets the large size (the test suite runs it with a few hundred).

    python -m bench.memory [--tiny] [--conversations N] [--json PATH]
"""

from __future__ import annotations

from pathlib import Path

from bench.common import (
    Result,
    check_completed,
    distill_command,
    parser,
    report,
    run_command,
    shown,
    teacher,
    workdir,
    write_conversations,
)

GOAL_MB = 250.0
GOAL_GROWTH = 1.5


def peak(served, root: Path, conversations: int) -> tuple[float, float, list[str]]:
    source = write_conversations(root / f"memory-{conversations}.jsonl", conversations)
    command = distill_command(
        source,
        root / f"memory-{conversations}.out.jsonl",
        root / f"memory-{conversations}.sqlite",
        served.base_url,
    )
    done = run_command(command)
    check_completed(done, "distill run")
    source.unlink()
    return done.peak_rss_mb, done.seconds, command


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--conversations", type=int, default=1_000_000, help="the large run's size")
    args = p.parse_args(argv)
    small, large = (100, 400) if args.tiny else (10_000, args.conversations)
    with workdir() as root, teacher() as served:
        small_mb, small_s, _ = peak(served, root, small)
        large_mb, large_s, command = peak(served, root, large)
        received = served.stats(with_hashes=False)["requests"]
    growth = large_mb / small_mb
    results = [
        Result(
            target="5 memory",
            case=f"{large:,} conversations (vs {small:,})",
            figure=large_mb,
            unit="MB peak RSS",
            reference=small_mb,
            ratio=growth,
            goal=f"< {GOAL_MB:g} MB, <= {GOAL_GROWTH}x the peak at {small:,}",
            passed=large_mb < GOAL_MB and growth <= GOAL_GROWTH and received == small + large,
            detail={
                "peak_rss_mb": {str(small): round(small_mb, 1), str(large): round(large_mb, 1)},
                "command_seconds": {str(small): round(small_s, 1), str(large): round(large_s, 1)},
                "teacher_received": received,
            },
            command=shown(command),
        )
    ]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
