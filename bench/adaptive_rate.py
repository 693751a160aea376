"""Target 7, adaptive rate (issue 11): ``distill run`` with *no* ``--rpm`` against limits it must find by itself.

The teacher (its own process) answers admitted requests after 200 ms and enforces its limit over one-second
windows; ``--concurrency 256``; nothing is told unless the case says so. Cases:

* unknown: 6,000 RPM, refusals are 429 + ``Retry-After``/``retry-after-ms``, no ``x-ratelimit-*`` headers;
* falling: 6,000 RPM that falls to 3,000 six seconds in, bare 429s (no headers at all);
* shed: 6,000 RPM whose refusals are 503 "overloaded" with no headers;
* faults: no limit, 5% of requests answered 500 or 503 at random, 100 ms latency, beside the same run without
  faults (the figure is the ratio of the two sending rates);
* told: 6,000 RPM stated in each dialect's headers (Together, OpenAI, Anthropic);
* rerun: a run over a bare-429 6,000 RPM limit, then a second run over new conversations with the same cache:
  the 429 share of its first 10 seconds.

Figures are the teacher's own counts: admitted requests over the time the run was sending (first request to
last), as a share of what the limit allowed over that time; refusals as a share of all requests received.

    python -m bench.adaptive_rate [--tiny] [--only CASE,...] [--json PATH]
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench import common
from bench.common import RequestClock, Result

RPM = 6000
LATENCY = 0.2
CONCURRENCY = "256"
BARE = {"retry_after": False, "rate_headers": "none"}
FALL_AT = 6.0
UNKNOWN = {"latency": LATENCY, "rpm": RPM, "rate_headers": "none"}
FALLING = {"latency": LATENCY, "rpm": RPM, "rpm_after": RPM / 2, "rpm_change_after": FALL_AT, **BARE}


def falling_allowed(begin: float, end: float) -> float:
    """Requests the falling limit allowed from ``begin`` to ``end`` seconds after the teacher's first request."""
    before = max(min(end, FALL_AT) - begin, 0.0)
    after = max(end - max(begin, FALL_AT), 0.0)
    return RPM / 60 * before + RPM / 120 * after


def run_distill(
    root: Path, served, name: str, count: int, *extra: str, start: int = 0, cache: str | None = None
):
    source = common.write_conversations(root / f"{name}.jsonl", count, start=start)
    command = common.distill_command(
        source, root / f"{name}.out.jsonl", root / f"{cache or name}.sqlite", served.base_url,
        "--concurrency", CONCURRENCY, *extra,
    )  # fmt: skip
    served.reset_stats()
    with RequestClock(served) as clock:
        done = common.run_command(command)
    common.check_completed(done, f"distill run ({name})")
    return command, clock, served.stats(with_hashes=False), done


def _limited_row(
    case: str, command, clock, stats, done, allowed, goal_share, goal_refused, what="429"
) -> Result:
    seconds, _ = clock.window()
    admitted = max(stats["answered"] - 1, 0)  # n requests evenly spaced span n - 1 gaps
    share = admitted / allowed(seconds) if seconds else 0.0
    refused = stats["rate_limited"] / max(1, stats["requests"])
    return Result(
        target="7 adaptive rate",
        case=case,
        figure=share,
        unit="of the limit",
        reference=None,
        ratio=share,
        goal=f">= {goal_share} of the limit, <= {goal_refused:.1%} answered {what}, exit 0",
        passed=share >= goal_share and refused <= goal_refused and done.returncode == 0,
        detail={
            "answered": stats["answered"],
            "requests_received": stats["requests"],
            f"answered_{what}": stats["rate_limited"],
            f"share_{what}": round(refused, 5),
            "sending_seconds": round(seconds, 3),
            "command_seconds": round(done.seconds, 3),
        },
        command=common.shown(command),
    )


def steady(per_minute: float):
    return lambda seconds: per_minute * seconds / 60.0


def unknown(root: Path, count: int) -> Result:
    with common.teacher(**UNKNOWN) as served:
        ran = run_distill(root, served, "unknown", count)
    return _limited_row(f"unknown {RPM:,} RPM, 429 + Retry-After, nothing told", *ran, steady(RPM), 0.9, 0.03)


def falling(root: Path, count: int) -> Result:
    with common.teacher(**FALLING) as served:
        ran = run_distill(root, served, "falling", count)

    def allowed(seconds: float) -> float:
        return falling_allowed(0.0, seconds)

    return _limited_row(f"{RPM:,} RPM falling to {RPM // 2:,} at 6 s, bare 429s", *ran, allowed, 0.85, 0.05)


def shed(root: Path, count: int) -> Result:
    with common.teacher(latency=LATENCY, rpm=RPM, limit_status=503, **BARE) as served:
        ran = run_distill(root, served, "shed", count)
    return _limited_row(
        f"{RPM:,} RPM shed as bare 503 'overloaded'", *ran, steady(RPM), 0.8, 0.05, what="503"
    )


def faults(root: Path, count: int) -> Result:
    """Fault-free, faulty, fault-free again: the faulty rate over the mean of the two around it (noise moves all)."""
    rates: dict[str, float] = {}
    details: dict[str, dict] = {}
    for name, error_rate in (("clean", 0.0), ("faulty", 0.05), ("clean-again", 0.0)):
        with common.teacher(latency=0.1, error_rate=error_rate, track_hashes=error_rate > 0) as served:
            ran = run_distill(root, served, name, count)
        command, clock, stats, done = ran
        seconds, _ = clock.window("answers")
        bulk = _bulk_seconds(clock, stats["answered"])
        rates[name] = 0.95 * stats["answered"] / bulk if bulk else 0.0
        details[name] = {
            "answered_per_s_first_95_percent": round(rates[name], 1),
            "answered_per_s_whole": round((stats["answered"] - 1) / seconds, 1) if seconds else 0.0,
            "received": stats["requests"],
            "faults": sum(stats.get("faults", {}).values()),
            "sending_seconds": round(seconds, 3),
            "exit": done.returncode,
        }
        if name == "faulty":
            faulty_command = command
    reference = (rates["clean"] + rates["clean-again"]) / 2
    ratio = rates["faulty"] / reference if reference else 0.0
    return Result(
        target="7 adaptive rate",
        case="no limit, 5% random 500/503, 100 ms latency, vs the same run fault-free (first 95% of answers)",
        figure=rates["faulty"],
        unit="answers/s",
        reference=reference,
        ratio=ratio,
        goal=">= 0.85 of the fault-free rate",
        passed=ratio >= 0.85 and details["faulty"]["exit"] == 0,
        detail=details,
        command=common.shown(faulty_command),
    )


def _bulk_seconds(clock: RequestClock, answered: int, share: float = 0.95) -> float:
    """Seconds from the first request until ``share`` of the answers had come: the rate of the run itself, without
    the tail of the few requests that failed twice or more and wait out their backoff (0.5 s, 1 s, 2 s, ...)."""
    first = clock.first_request_at()
    reached = next((t for t, _, n in clock.samples if n >= share * answered), None)
    return reached - first if first is not None and reached is not None and reached > first else 0.0


def told(root: Path, count: int, dialect: str) -> Result:
    with common.teacher(latency=LATENCY, rpm=RPM, rate_headers=dialect) as served:
        ran = run_distill(root, served, f"told-{dialect}", count)
    return _limited_row(f"{RPM:,} RPM told in {dialect} headers", *ran, steady(RPM), 0.97, 0.005)


def rerun(root: Path, count: int, first_seconds: float = 10.0) -> Result:
    with common.teacher(latency=LATENCY, rpm=RPM, **BARE) as served:
        run_distill(root, served, "learn", count, cache="rerun")
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                s = served.stats(with_hashes=False)
                samples.append((time.perf_counter(), s["requests"], s["rate_limited"]))
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        served.reset_stats()
        poller.start()
        try:
            command, clock, stats, done = run_distill(
                root, served, "again", count, start=count, cache="rerun"
            )
        finally:
            stop.set()
            poller.join()
    begin = next((t for t, n, _ in samples if n > 0), None)
    early = [s for s in samples if begin is not None and s[0] - begin <= first_seconds]
    requests, refused = (early[-1][1], early[-1][2]) if early else (0, 0)
    share = refused / max(1, requests)
    seconds, _ = clock.window()
    rate = (stats["answered"] - 1) * 60.0 / seconds / RPM if seconds else 0.0
    return Result(
        target="7 adaptive rate",
        case=f"rerun with the rate learned by a first run ({RPM:,} RPM, bare 429s)",
        figure=share,
        unit=f"answered 429 in the first {first_seconds:g} s",
        reference=None,
        ratio=rate,
        goal="<= 1% answered 429 in the first 10 s (ratio: share of the limit over the whole rerun)",
        passed=share <= 0.01 and done.returncode == 0,
        detail={
            "first_seconds_requests": requests,
            "first_seconds_429": refused,
            "whole_rerun_429": stats["rate_limited"],
            "whole_rerun_share_of_limit": round(rate, 4),
            "answered": stats["answered"],
        },
        command=common.shown(command),
    )


CASES = ("unknown", "falling", "shed", "faults", "told", "rerun")


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--only", help=f"comma-separated cases: {', '.join(CASES)}")
    args = p.parse_args(argv)
    chosen = args.only.split(",") if args.only else CASES
    n = {"limited": 40, "falling": 40, "faults": 100, "told": 40, "rerun": 40}
    if not args.tiny:
        n = {"limited": 2000, "falling": 1300, "faults": 12000, "told": 1500, "rerun": 1500}
    results: list[Result] = []
    with common.workdir() as root:
        if "unknown" in chosen:
            results.append(unknown(root, n["limited"]))
        if "falling" in chosen:
            results.append(falling(root, n["falling"]))
        if "shed" in chosen:
            results.append(shed(root, n["limited"]))
        if "faults" in chosen:
            results.append(faults(root, n["faults"]))
        if "told" in chosen:
            for dialect in ("together", "openai", "anthropic"):
                results.append(told(root, n["told"], dialect))
        if "rerun" in chosen:
            results.append(rerun(root, n["rerun"]))
    return common.report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
