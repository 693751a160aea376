"""Target 1, throughput: ``distill run`` against a teacher that answers at once, beside a plain aiohttp loop.

Single-turn: 30,000 conversations; multi-turn: 5,000 conversations of 4 user turns (20,000 requests, each turn
waiting for the teacher's answer to the one before). Our figure is the teacher's count of requests received
divided by the wall time of the whole ``distill run`` command (interpreter start, reading, answering, export,
output check: everything a user waits for), with a fresh cache and 64 in flight. The baseline is one aiohttp
session keeping 64 requests open against the same teacher process, measured before and after each run.

    python -m bench.throughput [--tiny] [--json PATH]
"""

from __future__ import annotations

from pathlib import Path

from bench.common import (
    Result,
    baseline_rps,
    check_completed,
    distill_command,
    interleaved,
    parser,
    report,
    run_command,
    shown,
    teacher,
    workdir,
    write_conversations,
)

GOAL = 0.8


def measure_case(
    served, root: Path, name: str, conversations: int, turns: int, rounds: int, baseline_seconds: float
) -> Result:
    source = write_conversations(root / f"{name}.jsonl", conversations, turns)
    expected = conversations * turns
    runs: list[dict] = []
    command: list[str] = []

    def ours() -> float:
        nonlocal command
        attempt = len(runs)
        command = distill_command(
            source, root / f"{name}-{attempt}.out.jsonl", root / f"{name}-{attempt}.sqlite", served.base_url
        )
        before = served.stats(with_hashes=False)["requests"]
        done = run_command(command)
        check_completed(done, "distill run")
        received = served.stats(with_hashes=False)["requests"] - before
        runs.append({"seconds": round(done.seconds, 3), "received": received})
        return received / done.seconds

    def base() -> float:
        return baseline_rps(served.base_url, baseline_seconds)

    figures, baselines, ratio = interleaved(ours, base, rounds)
    exact = all(run["received"] == expected for run in runs)
    unit = "requests/s" if turns == 1 else "turns/s"
    return Result(
        target="1 throughput",
        case=f"{conversations:,} conversations x {turns} turn{'s' if turns > 1 else ''}",
        figure=max(figures) if rounds == 1 else sorted(figures)[len(figures) // 2],
        unit=unit,
        reference=sorted(baselines)[len(baselines) // 2],
        ratio=ratio,
        goal=f">= {GOAL} of the baseline; each request sent once",
        passed=ratio >= GOAL and exact,
        detail={
            "runs": runs,
            "ours_per_s": [round(f, 1) for f in figures],
            "baseline_per_s": [round(b, 1) for b in baselines],
            "expected_requests": expected,
        },
        command=shown(command),
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
