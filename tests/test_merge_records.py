"""Issue 14 (and 15's leftover): ``distill merge`` carries every record a run keeps, not only its answers.

Two ``--shard I/2`` runs against the local teacher, one of them under a rate limit it learns (429s) and with a
conversation the teacher refuses for good, each with its own cache; the merged cache must hold the sum of their
attempts, rejects, spending, rate windows and finished marks, the newest learned rate, and serve ``distill stats``
and ``distill view``'s queries as one run's cache does. Merging the same caches again adds no record twice.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from distill.cli.stats import cache_stats
from distill.cost import Price
from distill.merge import merge
from distill.runner import RunJob, run_async
from distill.settings import RunSettings
from distill.shard import Shard
from distill.view.store import open_cache, runs

COUNTED = {
    "attempts": "SELECT count(*) FROM attempts",
    "rejects": "SELECT count(*) FROM rejects",
    "windows": "SELECT count(*) FROM rate_windows",
    "finished": "SELECT count(*) FROM conversations WHERE finished = 1",
    "failed": "SELECT count(*) FROM conversations WHERE failed_key IS NOT NULL",
    "tokens": "SELECT coalesce(sum(answer_tokens), 0) FROM conversations",
    "ended": "SELECT count(*) FROM runs WHERE ended IS NOT NULL",
    "passes": "SELECT count(*) FROM run_passes",
    "timed": "SELECT count(*) FROM responses WHERE sent_at IS NOT NULL AND latency IS NOT NULL",
}


def counts(cache: Path) -> dict[str, float]:
    with closing(sqlite3.connect(cache)) as conn:
        found = {name: conn.execute(sql).fetchone()[0] for name, sql in COUNTED.items()}
        found["usd"], found["paid"] = conn.execute(
            "SELECT coalesce(sum(usd), 0), coalesce(sum(requests), 0) FROM spending"
        ).fetchone()
    return found


def write_input(path: Path) -> Path:
    lines = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(80)]
    lines[7]["messages"][0]["content"] = "question Lassiter"  # refused for good by the teacher
    lines += [{"id": f"bad{i}", "messages": []} for i in range(6)]  # rejected by the reader
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def test_merge_carries_every_record_of_the_shards(tmp_path, teacher):
    data = write_input(tmp_path / "in.jsonl")
    teacher.set_knobs(permanent_marker="Lassiter")
    caches = []
    for i in (1, 2):
        # shard 1 learns a limit from bare 429s
        teacher.set_knobs(rpm=1200 if i == 1 else None, rate_headers="none", retry_after=False)
        job = RunJob(
            input=data,
            output=tmp_path / f"out{i}.jsonl",
            cache=tmp_path / f"shard{i}.sqlite",
            settings=RunSettings(model="teacher", base_url=teacher.base_url, attempts=1),
            shard=Shard(i, 2),
            price=Price(1.0, 2.0),
            max_reject_share=0.5,
        )
        report = await run_async(job)
        assert report.stats.conversations_read > 20
        caches.append(job.cache)
    shards = [counts(c) for c in caches]
    assert shards[0]["windows"] and shards[0]["attempts"] and sum(s["failed"] for s in shards) == 1
    merged = tmp_path / "merged.sqlite"
    merge(merged, caches)
    total = counts(merged)
    for name in ("attempts", "rejects", "windows", "finished", "failed", "tokens", "paid", "passes", "timed"):
        assert total[name] == sum(s[name] for s in shards), name
    assert abs(total["usd"] - sum(s["usd"] for s in shards)) < 1e-9 and total["ended"] == 1
    assert total["rejects"] == 6
    with closing(sqlite3.connect(merged)) as conn:
        stats = cache_stats(conn)
        (learned,) = stats["learned_limits"]
        assert learned["source"] == "learned" and 600 < learned["rpm"] <= 1300
        assert learned["windows"] == total["windows"]
        (run,) = stats["runs"]
        assert run["finished"] == 79 and run["requests_paid"] == total["paid"]
        found = conn.execute(
            "SELECT count(*) FROM conversation_search WHERE conversation_search MATCH 'Lassiter'"
        ).fetchone()[0]
        assert found == 1  # the viewer's search finds merged conversations
    conn = open_cache(merged)  # what `distill view` reads
    try:
        (run,) = runs(conn)
        assert (run.finished, run.failed, run.rejects) == (79, 1, 6) and run.completion_tokens == total[
            "tokens"
        ]
        assert run.ended is not None
        assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == total["attempts"]
    finally:
        conn.close()
    merge(merged, caches)  # again: no record twice (spending adds up by design: a shard's spend is per merge)
    again = counts(merged)
    assert {k: v for k, v in again.items() if k not in ("usd", "paid")} == {
        k: v for k, v in total.items() if k not in ("usd", "paid")
    }
