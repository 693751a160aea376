"""Issue 14, cluster runs: ``distill run --ray`` against the local teacher (its own process).

Five cases, each a real ``distill run`` command:

* **same bytes**: multi-turn ShareGPT conversations answered by ``distill run`` and by
  ``distill run --ray local --shards 4`` (fresh caches): the two outputs must be byte-identical, and the teacher
  must see every distinct request of the Ray run exactly once;
* **one limit**: ``--rpm 6000`` over 4 shards against a teacher that admits 100 requests per one-second window
  (200 ms latency): the share of the limit the teacher admitted over the time the run was sending, and the share
  it answered 429; the same run without Ray, side by side, for reference;
* **a shard killed**: the same-bytes case again with one shard's process killed (SIGKILL) mid-run: the run must
  complete with the same bytes, and the teacher must receive again at most what that shard had in flight;
* **scaling**: single-turn requests against a teacher that answers after 1 s, 256 in flight per shard
  (``--concurrency 256``), with 1, 2 and 4 shards: answered requests/s against the ideal 256 x shards;
* **learned limit**: *no* ``--rpm`` over 4 shards (64 in flight each) against a teacher that admits 100 requests
  per one-second window and refuses the rest with 429 + ``Retry-After`` (no rate headers), 200 ms latency: the
  broker learns the limit once for every shard from their reports. The share of the limit the teacher admitted
  over the time the run was sending and the share it answered 429, beside the same run without Ray
  (``--concurrency 256``, as ``bench.adaptive_rate``'s unknown case), and the rate stored in the cache;
* **lease cost**: from the one-limit run, the round trip of a lease ask and how many requests waited for one
  (``CACHE.shards/cluster-report.json``), and the round trip of a bare call to the limiter actor.

    python -m bench.cluster [--tiny] [--json PATH] [--ray local|ADDRESS] [--sharegpt FILE]
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
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

SHARDS = 4
RPM = 6000
RPM_LATENCY = 0.2
GOAL_SHARE = 0.95
GOAL_429 = 0.005
SCALING_LATENCY = 1.0
IN_FLIGHT = 256
GOAL_SCALING = 0.8
GOAL_LEARNED = 0.85
GOAL_LEARNED_429 = 0.03


def write_sharegpt(path: Path, count: int, seed: int = 14) -> Path:
    """``count`` ShareGPT records (``from``/``value``), 2 to 6 human turns each, every one different."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        turns = []
        for t in range(rng.randint(2, 6)):
            turns.append(
                {"from": "human", "value": f"Conversation {n}, question {t}: why is {n * 7 + t} odd?"}
            )
            turns.append(
                {"from": "gpt", "value": f"The dataset's answer {n}.{t}, which the teacher replaces."}
            )
        records.append({"id": f"sharegpt-{n}", "conversations": turns})
    path.write_bytes(orjson.dumps(records))
    return path


def take_sharegpt(source: Path, path: Path, count: int) -> Path:
    """The first ``count`` records of a real ShareGPT JSON list."""
    path.write_bytes(orjson.dumps(orjson.loads(source.read_bytes())[:count]))
    return path


def ray_flags(address: str, shards: int, *extra: str) -> list[str]:
    return ["--ray", address, "--shards", str(shards), *extra]


def cluster_report(cache: Path) -> dict:
    return orjson.loads((cache.with_name(cache.name + ".shards") / "cluster-report.json").read_bytes())


def same_bytes(root: Path, address: str, conversations: int, sharegpt: Path | None) -> Result:
    source = root / "sharegpt.json"
    if sharegpt is not None:
        take_sharegpt(sharegpt, source, conversations)
    else:
        write_sharegpt(source, conversations)
    with teacher(latency=0.05, track_hashes=True) as served:
        single = distill_command(source, root / "single.jsonl", root / "single.sqlite", served.base_url)
        check_completed(run_command(single), "distill run")
        served.reset_stats()
        command = distill_command(
            source, root / "ray.jsonl", root / "ray.sqlite", served.base_url, *ray_flags(address, SHARDS)
        )
        done = run_command(command)
        check_completed(done, "distill run --ray")
        stats = served.stats()
    identical = (root / "ray.jsonl").read_bytes() == (root / "single.jsonl").read_bytes()
    manifest = orjson.loads((root / "ray.jsonl.manifest.json").read_bytes())
    once = stats["requests"] == stats["distinct_requests"] == manifest["this_run"]["requests_sent"]
    return Result(
        target="14 cluster: same bytes",
        case=f"{manifest['counts']['written']:,} ShareGPT conversations ({manifest['counts']['turns']:,} turns, "
        f"{'real' if sharegpt else 'synthetic'}), --ray local --shards {SHARDS}",
        figure=float(identical),
        unit="(1 = byte-identical)",
        reference=1.0,
        ratio=float(identical),
        goal="output byte-identical to distill run without Ray; each distinct request sent once",
        passed=identical and once and stats["answered_more_than_once"] == 0,
        detail={
            "input": str(sharegpt) if sharegpt else "synthetic ShareGPT, 2-6 turns",
            "written": manifest["counts"]["written"],
            "rejects": manifest["counts"]["rejects"],
            "turns": manifest["counts"]["turns"],
            "teacher_requests": stats["requests"],
            "teacher_distinct_requests": stats["distinct_requests"],
            "command_seconds": round(done.seconds, 3),
        },
        command=shown(command),
    )


def shard_processes() -> list[int]:
    """Pids of the shard actors' processes on this machine (Ray titles them ``ray::ShardActor``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::ShardActor"):
                pids.append(int(entry.name))
    return sorted(pids)


def killed_shard(root: Path, address: str, conversations: int) -> Result:
    """SIGKILL one shard's process mid-run: Ray restarts it, it resumes from its cache, the bytes are the same."""
    source = write_sharegpt(root / "kill.json", conversations, seed=15)
    in_flight = 64
    with teacher(latency=0.1, track_hashes=True) as served:
        single = distill_command(
            source, root / "kill-single.jsonl", root / "kill-single.sqlite", served.base_url
        )
        check_completed(run_command(single), "distill run")
        served.reset_stats()
        command = distill_command(
            source, root / "kill.jsonl", root / "kill.sqlite", served.base_url,
            "--concurrency", str(in_flight), *ray_flags(address, SHARDS),
        )  # fmt: skip
        victims: list[int] = []
        answered_at_kill: set[str] = set()

        def kill_one_mid_run() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                answered = served.stats(with_hashes=False)["answered"]
                shards = shard_processes()
                if answered >= 1000 and len(shards) == SHARDS:
                    answered_at_kill.update(served.stats()["answered_by_hash"])
                    os.kill(shards[1], signal.SIGKILL)
                    victims.append(shards[1])
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_one_mid_run, daemon=True)
        done = run_command(command, on_start=killer.start)
        killer.join(5)
        check_completed(done, "distill run --ray")
        stats = served.stats()
    identical = (root / "kill.jsonl").read_bytes() == (root / "kill-single.jsonl").read_bytes()
    again = {h: n - 1 for h, n in stats["received_by_hash"].items() if n > 1}
    resent = sum(again.values())
    # an answer the teacher gave before the kill but the shard had not committed yet (group commits, every few ms)
    uncommitted = sum(n for h, n in again.items() if h in answered_at_kill)
    cluster = cluster_report(root / "kill.sqlite")
    return Result(
        target="14 cluster: a shard killed",
        case=f"{conversations:,} ShareGPT conversations, --shards {SHARDS} x {in_flight} in flight, "
        "SIGKILL of one shard's process mid-run",
        figure=float(resent - uncommitted),
        unit="unanswered requests sent again",
        reference=float(in_flight),
        ratio=(resent - uncommitted) / in_flight,
        goal=f"the same bytes; <= {in_flight} (the killed shard's in flight) sent again, plus answers not yet "
        "committed",
        passed=bool(victims) and identical and resent - uncommitted <= in_flight,
        detail={
            "sent_again": resent,
            "sent_again_answered_but_not_committed_at_the_kill": uncommitted,
            "killed_pid": victims[0] if victims else None,
            "identical": identical,
            "restarts_seen": cluster["restarts"],
            "teacher_requests": stats["requests"],
            "teacher_distinct_requests": stats["distinct_requests"],
            "command_seconds": round(done.seconds, 3),
        },
        command=shown(command),
    )


def rate_share(served, clock: RequestClock) -> tuple[float, float, dict]:
    stats = served.stats(with_hashes=False)
    seconds, _ = clock.window()
    answered = stats["answered"]
    rate = (answered - 1) * 60.0 / seconds if seconds and answered > 1 else 0.0
    refused = stats["rate_limited"] / max(1, stats["requests"])
    return rate / RPM, refused, {"answered": answered, "answered_429": stats["rate_limited"],
                                 "sending_seconds": round(seconds, 3)}  # fmt: skip


def one_limit(root: Path, address: str, conversations: int) -> list[Result]:
    source = write_conversations(root / "rpm.jsonl", conversations)
    figures = {}
    for name, extra in (("without Ray", []), ("cluster", ray_flags(address, SHARDS))):
        cache = root / f"rpm-{len(figures)}.sqlite"
        with teacher(latency=RPM_LATENCY, rpm=RPM) as served:
            command = distill_command(
                source, root / f"rpm-{len(figures)}.jsonl", cache, served.base_url, "--rpm", str(RPM), *extra
            )
            with RequestClock(served) as clock:
                done = run_command(command)
            check_completed(done, "distill run")
            share, refused, detail = rate_share(served, clock)
        figures[name] = (share, refused, detail, command, cache)
    share, refused, detail, command, cache = figures["cluster"]
    lease = cluster_report(cache)
    single_share = figures["without Ray"][0]
    limit_row = Result(
        target="14 cluster: one limit",
        case=f"--rpm {RPM} over {SHARDS} shards; teacher {RPM:,}/min in 1 s windows, {RPM_LATENCY * 1000:.0f} ms",
        figure=share,
        unit="of the limit",
        reference=single_share,
        ratio=share / single_share if single_share else None,
        goal=f">= {GOAL_SHARE} of the limit, <= {GOAL_429:.1%} answered 429 (reference: the same run without Ray)",
        passed=share >= GOAL_SHARE and refused <= GOAL_429 and detail["answered"] == conversations,
        detail={
            **detail,
            "share_429": round(refused, 5),
            "without_ray": figures["without Ray"][2],
            "without_ray_share": round(single_share, 4),
        },  # fmt: skip
        command=shown(command),
    )
    asks = lease["lease_ask_ms"]
    idle = lease["limiter"]["idle_seconds"]
    waited = lease["requests_that_waited_for_a_lease"] / max(1, lease["requests_paced"])
    lease_row = Result(
        target="14 cluster: lease cost",
        case=f"the one-limit run: {lease['leases']:,} leases of 0.1 s, {lease['requests_paced']:,} requests",
        figure=asks["median"] or 0.0,
        unit="ms a lease ask (median)",
        reference=None,
        ratio=None,
        goal="measured: a request waits for a lease only when its shard holds none",
        passed=True,
        detail={
            "lease_ask_ms_p99": asks["p99"],
            "timeline_idle_seconds": idle,
            "timeline_idle_share_of_sending": round(idle / detail["sending_seconds"], 5),
            "requests_that_waited_for_a_lease": lease["requests_that_waited_for_a_lease"],
            "share_that_waited": round(waited, 5),
            "seconds_waited_for_leases": lease["seconds_waited_for_leases"],
            "mean_wait_ms_of_those_that_waited": round(
                1000 * lease["seconds_waited_for_leases"] / max(1, lease["requests_that_waited_for_a_lease"]),
                3,
            ),
            "bare_actor_call_ms": bare_actor_call_ms(address),
        },
        command=shown(command),
    )
    return [limit_row, lease_row]


def learned_limit(root: Path, address: str, conversations: int) -> Result:
    """No --rpm: the broker learns the teacher's limit for every shard (beside the run without Ray)."""
    import sqlite3

    source = write_conversations(root / "learn.jsonl", conversations)
    figures = {}
    for name, extra in (
        ("without Ray", ["--concurrency", "256"]),
        ("cluster", ["--concurrency", "64", *ray_flags(address, SHARDS)]),
    ):
        cache = root / f"learn-{len(figures)}.sqlite"
        with teacher(latency=RPM_LATENCY, rpm=RPM, rate_headers="none") as served:
            command = distill_command(
                source, root / f"learn-{len(figures)}.jsonl", cache, served.base_url, *extra
            )
            with RequestClock(served) as clock:
                done = run_command(command)
            check_completed(done, "distill run")
            share, refused, detail = rate_share(served, clock)
        with sqlite3.connect(cache) as conn:
            stored = conn.execute("SELECT rpm, source FROM rate_limits").fetchone()
        detail["stored_rpm"] = round(stored[0], 1) if stored else None
        figures[name] = (share, refused, detail, command)
    share, refused, detail, command = figures["cluster"]
    single_share, single_refused, single_detail, _ = figures["without Ray"]
    return Result(
        target="14 cluster: learned limit",
        case=f"no --rpm, {SHARDS} shards x 64 in flight; teacher {RPM:,}/min in 1 s windows, 429 + Retry-After, "
        f"{RPM_LATENCY * 1000:.0f} ms",
        figure=share,
        unit="of the limit",
        reference=single_share,
        ratio=share / single_share if single_share else None,
        goal=f">= {GOAL_LEARNED} of the limit, <= {GOAL_LEARNED_429:.0%} answered 429, every conversation written "
        "(reference: the same run without Ray, --concurrency 256)",
        passed=share >= GOAL_LEARNED and refused <= GOAL_LEARNED_429 and detail["answered"] == conversations,
        detail={
            **detail,
            "share_429": round(refused, 5),
            "without_ray": single_detail,
            "without_ray_share": round(single_share, 4),
            "without_ray_share_429": round(single_refused, 5),
        },
        command=shown(command),
    )


def bare_actor_call_ms(address: str, calls: int = 300) -> dict:
    """Round trips of ``grant`` on a limiter actor from a driver: the floor under every lease ask."""
    import ray

    from distill.cluster.actors import LimiterActor
    from distill.cluster.lease import ClusterLimit, Report

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        actor = LimiterActor.remote(ClusterLimit(rpm=1e9))
        ray.get(actor.state.remote())
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            ray.get(actor.grant.remote(10, 0, Report()))
            times.append(1000 * (time.perf_counter() - start))
        times.sort()
        return {"median": round(statistics.median(times), 3), "p99": round(times[int(calls * 0.99)], 3)}
    finally:
        ray.shutdown()


def scaling(root: Path, address: str, seconds_each: float) -> list[Result]:
    rows = []
    for shards in (1, 2, 4):
        ideal = IN_FLIGHT * shards / SCALING_LATENCY
        count = int(ideal * seconds_each)
        source = write_conversations(root / f"scale-{shards}.jsonl", count)
        with teacher(latency=SCALING_LATENCY) as served:
            command = distill_command(
                source, root / f"scale-{shards}.out.jsonl", root / f"scale-{shards}.sqlite", served.base_url,
                "--concurrency", str(IN_FLIGHT), *ray_flags(address, shards),
            )  # fmt: skip
            with RequestClock(served) as clock:
                done = run_command(command)
            check_completed(done, "distill run --ray")
            stats = served.stats(with_hashes=False)
        seconds, answered = clock.window(until="answered")
        rate = answered / seconds if seconds else 0.0
        rows.append(
            Result(
                target="14 cluster: scaling",
                case=f"{shards} shard(s), {IN_FLIGHT} in flight each, {SCALING_LATENCY:g} s latency, {count:,} requests",
                figure=rate,
                unit="requests/s",
                reference=ideal,
                ratio=rate / ideal,
                goal=f">= {GOAL_SCALING} of the ideal {IN_FLIGHT} x shards requests/s",
                passed=rate / ideal >= GOAL_SCALING and stats["answered"] == count,
                detail={
                    "sending_seconds": round(seconds, 3),
                    "steady_ratio": round(steady_rate(clock) / ideal, 4),
                    "max_in_flight_at_teacher": stats["max_in_flight"],
                    "command_seconds": round(done.seconds, 3),
                },
                command=shown(command),
            )
        )
    return rows


def steady_rate(clock: RequestClock) -> float:
    """Answers/s over the middle half of the answers: the rate once every shard is sending, before the tail."""
    samples = [(t, answered) for t, _, answered in clock.samples]
    if not samples:
        return 0.0
    final = samples[-1][1]
    inside = [(t, a) for t, a in samples if final * 0.25 <= a <= final * 0.75]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--ray", default="local", help="local (default) or the address of a running Ray instance")
    p.add_argument("--sharegpt", type=Path, help="a real ShareGPT JSON list to take the conversations from")
    p.add_argument("--only", help="comma-separated cases: bytes, kill, limit, learn, scaling")
    args = p.parse_args(argv)
    conversations, rpm_requests, seconds_each = (40, 150, 2.0) if args.tiny else (1000, 3000, 10.0)
    cases = set((args.only or "bytes,kill,limit,learn,scaling").split(","))
    results: list[Result] = []
    with workdir() as root:
        if "bytes" in cases:
            results.append(same_bytes(root, args.ray, conversations, args.sharegpt))
        if "kill" in cases:
            results.append(killed_shard(root, args.ray, conversations))
        if "limit" in cases:
            results += one_limit(root, args.ray, rpm_requests)
        if "learn" in cases:
            results.append(learned_limit(root, args.ray, 2 * rpm_requests // 3))
        if "scaling" in cases:
            results += scaling(root, args.ray, seconds_each)
    return report(results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
