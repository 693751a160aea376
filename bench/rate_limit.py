"""Target 2, rate limit: ``distill run`` against a teacher that enforces its limits over one-second windows.

The teacher (its own process) answers after 200 ms and admits at most RPM/60 requests, and TPM/60 tokens, in
each one-second window; whatever goes over is answered 429. Two cases:

* requests bind: the teacher allows 6,000 RPM, the run is given ``--rpm 6000``;
* tokens bind: the teacher also allows TPM tokens a minute (counted with cl100k_base, charged as prompt plus
  answer), set so that tokens run out at about 70 requests/s; the run is given ``--rpm 6000 --tpm TPM`` and
  ``--max-tokens 64`` (answers are about 45 tokens).

The figure is what the teacher admitted per minute over the time the run was sending (its first request to its
last, polled from the teacher), as a share of the limit; the 429 share is the teacher's own count.

    python -m bench.rate_limit [--tiny] [--json PATH]
"""

from __future__ import annotations

from pathlib import Path

import orjson

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

RPM = 6000
LATENCY = 0.2
GOAL_SHARE = 0.97
GOAL_429 = 0.005
ANSWER_WORDS = 30
MAX_TOKENS = 64
TOKENS_PER_SECOND = 70 * 80  # about 70 requests/s at about 80 tokens each


def measure(
    root: Path, name: str, conversations: int, knobs: dict, extra: list[str], per_minute: str
) -> Result:
    source = write_conversations(root / f"{name}.jsonl", conversations)
    with teacher(latency=LATENCY, **knobs) as served:
        command = distill_command(
            source, root / f"{name}.out.jsonl", root / f"{name}.sqlite", served.base_url, *extra
        )
        with RequestClock(served) as clock:
            done = run_command(command)
        check_completed(done, "distill run")
        stats = served.stats(with_hashes=False)
    seconds, received = clock.window()
    manifest = orjson.loads((root / f"{name}.out.jsonl.manifest.json").read_bytes())
    answered = stats["answered"]
    tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    limit = knobs["rpm"] if per_minute == "requests" else knobs["tpm"]
    admitted = answered if per_minute == "requests" else tokens
    # n requests evenly spaced span n - 1 gaps: count what came after the first request
    rate = admitted * (answered - 1) / answered * 60.0 / seconds if seconds else 0.0
    share = rate / limit
    refused = stats["rate_limited"] / max(1, stats["requests"])
    return Result(
        target="2 rate limit",
        case=f"{per_minute} bind: teacher {limit:,.0f} {per_minute}/min, 1 s windows, {LATENCY * 1000:.0f} ms latency",
        figure=share,
        unit="of the limit",
        reference=float(limit),
        ratio=share,
        goal=f">= {GOAL_SHARE} of the limit, <= {GOAL_429:.1%} answered 429",
        passed=share >= GOAL_SHARE and refused <= GOAL_429 and answered == conversations,
        detail={
            "admitted_per_minute": round(rate, 1),
            "sending_seconds": round(seconds, 3),
            "requests_received": received,
            "answered": answered,
            "answered_429": stats["rate_limited"],
            "share_429": round(refused, 5),
            "engine_retries": manifest["this_run"]["retries"],
            "command_seconds": round(done.seconds, 3),
        },
        command=shown(command),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    rpm_case, tpm_case = (60, 60) if args.tiny else (2000, 1500)
    tpm = TOKENS_PER_SECOND * 60
    with workdir() as root:
        results = [
            measure(root, "rpm", rpm_case, {"rpm": RPM}, ["--rpm", str(RPM)], "requests"),
            measure(
                root,
                "tpm",
                tpm_case,
                {"rpm": RPM, "tpm": tpm, "token_counter": "tiktoken", "answer_words": ANSWER_WORDS},
                ["--rpm", str(RPM), "--tpm", str(tpm), "--max-tokens", str(MAX_TOKENS)],
                "tokens",
            ),
        ]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
