"""Target 7's peers (issue 11): distill, Bespoke Curator and the OpenAI cookbook's pause on a limit nobody told.

Each case runs the teacher of :mod:`bench.adaptive_rate` (its own process, 200 ms latency, one-second windows)
once per client, one after the other in the same run of this script:

* unknown: 6,000 RPM, refusals are 429 + ``Retry-After``/``retry-after-ms``, no ``x-ratelimit-*`` headers;
* falling: 6,000 RPM that falls to 3,000 six seconds after the first request, bare 429s (no headers at all).

The clients:

* distill: ``distill run --concurrency 256``, told nothing (as in :mod:`bench.adaptive_rate`);
* Bespoke Curator (its own virtualenv, see :mod:`bench.curator`): in the unknown case given nothing but the base
  URL, as a new user runs it, so it paces at its default 200 requests/min (the probe for ``x-ratelimit-*``
  headers finds none); in the falling case told ``max_requests_per_minute=6000``, the limit that held when the
  run started (and no token limit, so that its 100,000 TPM default does not bind); its default 10 retries;
* the cookbook's pause (:mod:`bench.cookbook_loop`): a plain aiohttp loop, 256 in flight, no rate given, no new
  request for 15 s after a 429, 5 attempts a prompt.

Figures, each the teacher's own count except "lost": the share of the limit (admitted requests over the time the
client was sending, divided by what the limit allowed over that same time); 429s per prompt (refusals received
over the prompts the run had to answer); prompts lost (not in the client's output when it ended). Curator at its
default rate and the cookbook loop get fewer prompts than distill (their runs would otherwise take minutes); the
rows say how many. Without a Curator interpreter its rows are skipped.

    python -m bench.peer_rate [--tiny] [--only unknown,falling] [--curator-python PATH] [--json PATH]
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from bench import adaptive_rate, common, cookbook_loop, curator
from bench.common import RequestClock, Result

CASES = ("unknown", "falling")
TARGET = "7 adaptive rate (peer)"
SIZES = {  # prompts per client and case: distill, Curator, cookbook loop
    "full": {"unknown": (2000, 100, 300), "falling": (1300, 1300, 200)},
    "tiny": {"unknown": (40, 8, 40), "falling": (40, 40, 40)},
}
CASE_NAMES = {
    "unknown": f"unknown {adaptive_rate.RPM:,} RPM, 429 + Retry-After",
    "falling": f"{adaptive_rate.RPM:,} RPM falling to {adaptive_rate.RPM // 2:,} at 6 s, bare 429s",
}


def knobs(case: str) -> dict:
    return adaptive_rate.UNKNOWN if case == "unknown" else adaptive_rate.FALLING


def allowed(case: str) -> Callable[[float, float], float]:
    """Requests the case's limit allowed between two offsets (seconds) from the teacher's first request."""
    if case == "falling":
        return adaptive_rate.falling_allowed
    return lambda begin, end: adaptive_rate.RPM / 60 * max(end - begin, 0.0)


def _row(
    case: str, who: str, count: int, stats: dict, window: tuple[float, float], delivered: int, **more
) -> Result:
    begin, end = window
    admitted = max(stats["answered"] - 1, 0)  # n requests evenly spaced span n - 1 gaps
    possible = allowed(case)(begin, end)
    share = admitted / possible if possible else 0.0
    per_prompt = stats["rate_limited"] / max(1, count)
    lost = count - delivered
    command = more.pop("command", "")
    return Result(
        target=TARGET,
        case=f"{CASE_NAMES[case]}: {who}, {count:,} prompts",
        figure=share,
        unit="of the limit",
        reference=None,
        ratio=share,
        goal=f"for comparison; {per_prompt:.3f} 429s per prompt, {lost} lost",
        passed=lost == 0,
        detail={
            "prompts": count,
            "delivered": delivered,
            "lost": lost,
            "answered_429": stats["rate_limited"],
            "429_per_prompt": round(per_prompt, 4),
            "requests_received": stats["requests"],
            "sending_seconds": round(end - begin, 3),
            **more,
        },
        command=command,
    )


def distill_row(root: Path, case: str, count: int) -> Result:
    with common.teacher(**knobs(case)) as served:
        command, clock, stats, done = adaptive_rate.run_distill(root, served, f"peer-{case}", count)
    seconds, _ = clock.window()
    with open(root / f"peer-{case}.out.jsonl", "rb") as written:
        delivered = sum(1 for _ in written)
    return _row(
        case, "distill, told nothing", count, stats, (0.0, seconds), delivered,
        exit=done.returncode, command=common.shown(command),
    )  # fmt: skip


def curator_row(python: str, root: Path, case: str, count: int) -> Result:
    given = {} if case == "unknown" else {"rpm": adaptive_rate.RPM, "tpm": curator.UNLIMITED_TPM}
    who = "Curator, given nothing" if case == "unknown" else "Curator, told the starting 6,000 RPM"
    with common.teacher(**knobs(case)) as served:
        run = curator.run_curator(python, served, root, f"peer-{case}", count, **given)
    told = f", max_requests_per_minute={given['rpm']}, max_tokens_per_minute={given['tpm']}" if given else ""
    command = f"curator.LLM(backend='openai', backend_params={{base_url, api_key{told}}})"
    return _row(
        case, who, count, run.stats, (run.begin, run.end), run.delivered,
        probe_to_first_prompt_seconds=round(run.begin, 3), command=command,
    )  # fmt: skip


def cookbook_row(root: Path, case: str, count: int) -> Result:
    prompts = [common.question(n) for n in range(count)]
    with common.teacher(**knobs(case)) as served:
        served.reset_stats()
        with RequestClock(served) as clock:
            outcome = asyncio.run(cookbook_loop.paused_loop(served.base_url, common.MODEL, prompts))
        stats = served.stats(with_hashes=False)
    seconds, _ = clock.window()
    pauses = sum(1 for a, b in pairwise(outcome.refusals) if b - a > 1.0) + bool(outcome.refusals)
    return _row(
        case, "cookbook's 15 s pause (baseline loop)", count, stats, (0.0, seconds), outcome.answered,
        pauses=pauses, command="bench.cookbook_loop.paused_loop(in_flight=256, pause_s=15, attempts=5)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--only", help=f"comma-separated cases: {', '.join(CASES)}")
    p.add_argument("--curator-python", default=os.environ.get("CURATOR_PYTHON", curator.DEFAULT_PYTHON))
    args = p.parse_args(argv)
    chosen = args.only.split(",") if args.only else CASES
    sizes = SIZES["tiny" if args.tiny else "full"]
    with_curator = Path(args.curator_python).exists()
    if not with_curator:
        print(f"[SKIP] Bespoke Curator: no interpreter at {args.curator_python} (see bench/curator.py)")
    results: list[Result] = []
    with common.workdir() as root:
        for case in (c for c in CASES if c in chosen):
            ours, theirs, loop = sizes[case]
            results.append(distill_row(root, case, ours))
            if with_curator:
                results.append(curator_row(args.curator_python, root, case, theirs))
            results.append(cookbook_row(root, case, loop))
    return common.report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
