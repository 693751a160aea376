"""Target 1, throughput: ``distill run`` against a teacher that answers at once, beside a plain aiohttp loop.

Single-turn: 30,000 conversations; multi-turn: 5,000 conversations of 4 user turns (20,000 requests, each turn
waiting for the teacher's answer to the one before). Each ``distill run`` starts with a fresh cache and keeps 64
requests in flight; the teacher (its own process) counts what it receives, so a request sent twice would show.

Two figures per run: the rate while the run was sending (the teacher's count over the time from its first
request to its last, polled from the teacher), which is the target's figure, and the whole command's rate
(requests over the wall time of the process: interpreter start, reading, answering, export, output check).
The baseline is one aiohttp session keeping 64 requests open against the same teacher, measured before and
after each run; each ratio divides a run's figure by the mean of the baselines on either side of it. Both send
through aiohttp, so the ratio is what distill's engine (cache, limiter, retries, bookkeeping) costs on top.

    python -m bench.throughput [--tiny] [--json PATH]
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import (
    RequestClock,
    Result,
    baseline_rps,
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

GOAL = 0.7


def measure_case(
    served,
    root: Path,
    name: str,
    conversations: int,
    turns: int,
    rounds: int,
    baseline_seconds: float,
) -> Result:
    source = write_conversations(root / f"{name}.jsonl", conversations, turns)
    expected = conversations * turns
    baselines = [baseline_rps(served.base_url, baseline_seconds)]
    runs: list[dict] = []
    shown_command: list[str] = []
    for attempt in range(rounds):
        command = distill_command(
            source,
            root / f"{name}-{attempt}.out.jsonl",
            root / f"{name}-{attempt}.sqlite",
            served.base_url,
        )
        shown_command = shown_command or command
        served.reset_stats()
        with RequestClock(served) as clock:
            done = run_command(command)
        check_completed(done, "distill run")
        seconds, received = clock.window()
        baselines.append(baseline_rps(served.base_url, baseline_seconds))
        around = statistics.mean(baselines[-2:])
        sending = (received - 1) / seconds if seconds else 0.0
        runs.append(
            {
                "sending_per_s": round(sending, 1),
                "command_per_s": round(received / done.seconds, 1),
                "ratio": round(sending / around, 3),
                "command_ratio": round(received / done.seconds / around, 3),
                "sending_seconds": round(seconds, 3),
                "command_seconds": round(done.seconds, 3),
                "received": received,
                "peak_rss_mb": round(done.peak_rss_mb, 1),
            }
        )
    ratio = statistics.median(run["ratio"] for run in runs)
    exact = all(run["received"] == expected for run in runs)
    unit = "requests/s" if turns == 1 else "turns/s"
    return Result(
        target="1 throughput",
        case=f"{conversations:,} conversations x {turns} turn{'s' if turns > 1 else ''}",
        figure=statistics.median(run["sending_per_s"] for run in runs),
        unit=unit,
        reference=statistics.median(baselines),
        ratio=ratio,
        goal=f">= {GOAL} of the baseline; each request sent once",
        passed=ratio >= GOAL and exact,
        detail={
            "runs": runs,
            "baseline_per_s": [round(b, 1) for b in baselines],
            "whole_command_ratio": statistics.median(run["command_ratio"] for run in runs),
            "expected_requests": expected,
        },
        command=shown(shown_command),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    single, multi, rounds, seconds = (300, 50, 1, 0.5) if args.tiny else (30_000, 5_000, 2, 4.0)
    with workdir() as root, teacher() as served:
        results = [
            measure_case(served, root, "single", single, 1, rounds, seconds),
            measure_case(served, root, "multi", multi, 4, rounds, seconds),
        ]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
