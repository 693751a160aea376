"""Target 3, latency hiding: with a teacher that takes 1 s to answer, 512 requests in flight make 512 requests/s.

``distill run --concurrency 512`` over single-turn conversations against the local teacher (its own process)
with ``latency=1.0``. The figure is the teacher's count of answers over the time from the run's first request to
its last answer (polled from the teacher), against the ideal 512 requests/s.

    python -m bench.latency [--tiny] [--json PATH]
"""

from __future__ import annotations

from pathlib import Path

from bench.common import (
    RequestClock,
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

LATENCY = 1.0
GOAL = 0.9


def measure(root: Path, in_flight: int, conversations: int) -> Result:
    source = write_conversations(root / "latency.jsonl", conversations)
    ideal = in_flight / LATENCY
    with teacher(latency=LATENCY) as served:
        command = distill_command(
            source,
            root / "latency.out.jsonl",
            root / "latency.sqlite",
            served.base_url,
            "--concurrency",
            str(in_flight),
        )
        with RequestClock(served) as clock:
            done = run_command(command)
        check_completed(done, "distill run")
        stats = served.stats(with_hashes=False)
    seconds, answered = clock.window(until="answered")
    rate = answered / seconds if seconds else 0.0
    return Result(
        target="3 latency hiding",
        case=f"{conversations:,} requests, {LATENCY:g} s latency, {in_flight} in flight",
        figure=rate,
        unit="requests/s",
        reference=ideal,
        ratio=rate / ideal,
        goal=f">= {GOAL} of {ideal:.0f} requests/s",
        passed=rate / ideal >= GOAL and stats["answered"] == conversations,
        detail={
            "sending_seconds": round(seconds, 3),
            "answered": answered,
            "max_in_flight_at_teacher": stats["max_in_flight"],
            "command_seconds": round(done.seconds, 3),
            "whole_command_per_s": round(conversations / done.seconds, 1),
        },
        command=shown(command),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    in_flight, conversations = (32, 96) if args.tiny else (512, 512 * 20)
    with workdir() as root:
        results = [measure(root, in_flight, conversations)]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
