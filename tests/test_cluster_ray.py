"""Issue 14: ``distill run --ray`` on a local Ray instance against the bundled teacher (its own process).

The output must be the bytes a run without Ray writes; a shard whose process is killed with SIGKILL is restarted
and resumes from its cache; SIGINT stops every shard with each cache whole, and the same command resumes; one
``--rpm`` holds for the sum of the shards, counted at the teacher. One Ray instance (2 CPUs) serves the tests
that run in this process; the first test starts its own through the CLI's ``--ray local``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
from support import run_command, write_multi_turn

from distill.cluster import ClusterOptions
from distill.cluster.driver import REPORT_NAME, shard_actor_name
from distill.errors import AuthenticationError
from distill.progress import RunObserver, status_line
from distill.runner import RunJob, run
from distill.servers.teacher import TeacherKnobs, start_teacher_process
from distill.settings import RunSettings

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, bytes]:
    """60 conversations of 3 turns, and the bytes ``distill run`` without Ray writes for them."""
    root = tmp_path_factory.mktemp("reference")
    data = write_multi_turn(root / "in.jsonl", 60, 3)
    with start_teacher_process(TeacherKnobs()) as server:
        settings = RunSettings(model="teacher", base_url=server.base_url)
        run(
            RunJob(
                input=data,
                output=root / "single.jsonl",
                cache=root / "single.sqlite",
                settings=settings,
            )
        )
    return data, (root / "single.jsonl").read_bytes()


def cluster_job(root: Path, data: Path, settings: RunSettings, shards: int) -> RunJob:
    """``data`` answered by ``shards`` shards on the Ray instance of this process (``local`` finds it running)."""
    return RunJob(
        input=data,
        output=root / "ray.jsonl",
        cache=root / "ray.sqlite",
        settings=settings,
        cluster=ClusterOptions(address="local", shards=shards),
    )


class Watching(RunObserver):
    """Reads the run's progress line every 50 ms while it goes, as a display would."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._done = threading.Event()

    def started(self, stats) -> None:
        def watch() -> None:
            while not self._done.wait(0.05):
                self.lines.append(status_line(stats))

        threading.Thread(target=watch, daemon=True).start()

    def stopped(self, stats) -> None:
        self._done.set()
        self.lines.append(status_line(stats))


def with_rejects(path: Path, conversations: int, turns: int) -> Path:
    """Multi-turn conversations with an unusable record after every tenth (the reader rejects it)."""
    write_multi_turn(path, conversations, turns)
    lines = path.read_text().splitlines()
    mixed = []
    for n, line in enumerate(lines):
        mixed.append(line)
        if n % 10 == 9:
            mixed.append(json.dumps({"id": f"bad-{n}", "messages": []}))
    path.write_text("\n".join(mixed) + "\n")
    return path


def manifest_of(output: Path) -> dict:
    return orjson.loads(output.with_name(output.name + ".manifest.json").read_bytes())


def single_process_run(server, data: Path, root: Path) -> Path:
    """The reference: the same input answered by ``distill run`` without Ray."""
    output = root / "single.jsonl"
    done = subprocess.run(
        run_command(server, data, root / "single.sqlite", output, "--quiet"), capture_output=True
    )
    assert done.returncode == 0, done.stderr
    server.reset_stats()
    return output


def test_cli_ray_local_writes_the_bytes_of_a_run_without_ray(tmp_path):
    data = with_rejects(tmp_path / "in.jsonl", 40, 2)
    with start_teacher_process(TeacherKnobs()) as server:
        single = single_process_run(server, data, tmp_path)
        output = tmp_path / "ray.jsonl"
        command = run_command(
            server, data, tmp_path / "ray.sqlite", output, "--ray", "local", "--shards", "3"
        )
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        stats = server.stats()
    assert output.read_bytes() == single.read_bytes()
    rejects = tmp_path / "ray.jsonl.rejects.jsonl"
    assert rejects.read_bytes() == (tmp_path / "single.jsonl.rejects.jsonl").read_bytes()
    assert len(rejects.read_text().splitlines()) == 4  # in input order, each reported by one shard
    ours, theirs = manifest_of(output), manifest_of(single)
    assert ours.keys() == theirs.keys() and ours["counts"] == theirs["counts"]
    assert ours["output"]["sha256"] == theirs["output"]["sha256"]
    assert ours["this_run"]["requests_sent"] == 80 and ours["this_run"]["conversations_done"] == 40
    assert stats["requests"] == stats["distinct_requests"] == 80  # every request once, over all shards
    shards = sorted((tmp_path / "ray.sqlite.shards").glob("*.sqlite"))
    assert [p.name for p in shards] == [f"ray.shard-{i}-of-3.sqlite" for i in (1, 2, 3)]
    assert "44 records: 40 conversations, 4 rejected" in done.stderr  # the summary adds up every shard
    assert "40 conversations = 40 written + 0 failed" in done.stderr


def test_sigint_stops_every_shard_and_the_same_command_resumes(tmp_path, ray_instance, reference):
    data, single = reference
    concurrency, shards = 4, 3
    with start_teacher_process(TeacherKnobs(latency=0.1)) as server:
        output = tmp_path / "ray.jsonl"
        command = run_command(
            server, data, tmp_path / "ray.sqlite", output, "--ray", ray_instance, "--shards", str(shards),
            "--concurrency", str(concurrency),
        )  # fmt: skip
        first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.stats(with_hashes=False)["answered"] < 30 and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        assert "run the same command again to resume" in err
        assert not output.exists()
        caches = sorted((tmp_path / "ray.sqlite.shards").glob("*.sqlite"))
        assert len(caches) == shards
        for cache in caches:
            with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        again = subprocess.run(command, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        stats = server.stats()
    assert output.read_bytes() == single
    # as without Ray, a clean stop keeps every answer it has read and may abandon those still being read: only
    # requests in flight at the stop may have been answered twice across the two runs
    twice = [n for n in stats["answered_by_hash"].values() if n > 1]
    assert len(twice) <= concurrency * shards and set(twice) <= {2}
    assert stats["requests"] - stats["answered"] <= concurrency * shards  # only what was in flight, resent


def test_a_shard_killed_with_sigkill_is_restarted_and_resumes_from_its_cache(
    tmp_path, ray_instance, reference
):
    data, single = reference
    concurrency = 4
    with start_teacher_process(TeacherKnobs(latency=0.1)) as server:
        settings = RunSettings(model="teacher", base_url=server.base_url, concurrency=concurrency)
        job = cluster_job(tmp_path, data, settings, shards=3)
        killed: list[int] = []
        victim = shard_actor_name(settings.run_id(str(data.resolve())), 2)

        def kill_a_shard_mid_run() -> None:
            while server.stats(with_hashes=False)["answered"] < 40:
                time.sleep(0.05)
            pid = ray.get(ray.get_actor(victim, namespace="distill").pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_a_shard_mid_run, daemon=True)
        killer.start()
        report = run(job)
        killer.join(5)
        stats = server.stats()
    assert killed and report.exit_code == 0
    assert (report.stats.conversations_done, report.stats.turns_done) == (
        60,
        180,
    )  # summed once, after a restart
    assert job.output.read_bytes() == single
    resent = sum(n - 1 for n in stats["received_by_hash"].values())
    # what the killed shard had in flight, plus answers it had received but not yet committed (the 20 ms group
    # commit; on a loaded machine the cache's writer can lag by a few): the guarantee of kill -9 without Ray
    assert resent <= concurrency + 8
    assert set(stats["answered_by_hash"].values()) <= {1, 2}
    assert orjson.loads((tmp_path / "ray.sqlite.shards" / REPORT_NAME).read_bytes())["restarts"] >= 1


def test_one_rpm_holds_for_the_sum_of_the_shards_at_the_teacher(tmp_path, ray_instance):
    data = write_multi_turn(tmp_path / "in.jsonl", 100, 1)
    rpm = 2400  # the teacher admits 40 requests in each one-second window and answers the rest 429
    with start_teacher_process(TeacherKnobs(latency=0.05, rpm=rpm)) as server:
        settings = RunSettings(model="teacher", base_url=server.base_url, rpm=rpm)
        job = cluster_job(tmp_path, data, settings, shards=4)
        watching = Watching()
        started = time.monotonic()
        report = run(job, watching)
        seconds = time.monotonic() - started
        stats = server.stats(with_hashes=False)
    assert report.exit_code == 0 and stats["answered"] == 100
    assert stats["rate_limited"] == 0  # four shards each at 2,400/min would have been refused
    assert seconds >= (100 - 40) / 40  # paced at the limit for the sum, not per shard
    cluster = orjson.loads((tmp_path / "ray.sqlite.shards" / REPORT_NAME).read_bytes())
    assert cluster["leases"] >= 4 and cluster["limiter"]["granted"] >= 100
    done = [int(m) for line in watching.lines for m in re.findall(r"^conversations (\d+)", line)]
    assert done == sorted(done) and any(0 < n < 100 for n in done)  # one line, summed over the shards, live
    assert done[-1] == 100


def test_the_cluster_benchmark_runs_at_its_tiny_size(tmp_path, ray_instance):
    from bench import cluster

    out = tmp_path / "cluster.json"
    assert cluster.main(["--tiny", "--only", "bytes", "--ray", ray_instance, "--json", str(out)]) == 0
    (row,) = orjson.loads(out.read_bytes())
    assert row["passed"] and row["detail"]["teacher_requests"] == row["detail"]["turns"] > 40


def test_a_shard_refused_by_the_teacher_stops_the_run_with_the_teacher_s_error(tmp_path, ray_instance):
    data = write_multi_turn(tmp_path / "in.jsonl", 10, 1)
    with start_teacher_process(TeacherKnobs(api_key="the-right-key")) as server:
        settings = RunSettings(model="teacher", base_url=server.base_url)
        job = RunJob(data, tmp_path / "o.jsonl", tmp_path / "c.sqlite", settings, api_key="a-wrong-key",
                     preflight=False, cluster=ClusterOptions(shards=2))  # fmt: skip
        with pytest.raises(AuthenticationError) as refused:
            run(job)
    assert refused.value.exit_code == 2 and "a-wrong-key" not in str(refused.value)
    assert not job.output.exists()


def table_counts(cache: Path, run_id: str) -> dict[str, float]:
    """The rows of a run's records in ``cache`` that ``distill stats`` and ``distill view`` read."""
    queries = {
        "attempts": "SELECT count(*) FROM attempts",
        "timed": "SELECT count(*) FROM responses WHERE sent_at IS NOT NULL",
        "finished": "SELECT count(*) FROM conversations WHERE finished = 1 AND run_id = ?1",
        "tokens": "SELECT coalesce(sum(answer_tokens), 0) FROM conversations WHERE run_id = ?1",
        "paid": "SELECT coalesce(sum(requests), 0) FROM spending WHERE run_id = ?1",
        "usd": "SELECT coalesce(sum(usd), 0) FROM spending WHERE run_id = ?1",
    }
    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as conn:
        return {
            name: conn.execute(sql, (run_id,) if "?1" in sql else ()).fetchone()[0]
            for name, sql in queries.items()
        }


def test_an_unknown_limit_is_learned_once_for_the_cluster_and_kept_with_every_record(tmp_path, ray_instance):
    from distill.cli.stats import cache_stats
    from distill.cost import Price

    data = write_multi_turn(tmp_path / "in.jsonl", 160, 1)
    knobs = TeacherKnobs(latency=0.05, rpm=1200, rate_headers="none", retry_after=False)  # bare 429s
    more = write_multi_turn(tmp_path / "more.jsonl", 120, 1, lambda c, t: f"another question {c}")
    with start_teacher_process(knobs) as server:
        settings = RunSettings(model="teacher", base_url=server.base_url, attempts=1, concurrency=8)
        job = cluster_job(tmp_path, data, settings, shards=2)
        job.price = Price(1.0, 2.0)
        report = run(job)
        stats = server.stats(with_hashes=False)
        with sqlite3.connect(f"file:{job.cache}?mode=ro", uri=True) as conn:
            summary = cache_stats(conn)
            windows = conn.execute("SELECT count(*) FROM rate_windows").fetchone()[0]
        # the next cluster run against this server starts from the stored rate: no probing from 4 a second
        second = run(RunJob(more, tmp_path / "more.out.jsonl", job.cache, settings, cluster=job.cluster))
    assert report.exit_code == 0 and report.stats.conversations_done == 160 and not report.stats.failures
    # --attempts 1, and nothing failed: no 429 cost an attempt
    assert stats["rate_limited"] > 0 and report.stats.rate_limited == stats["rate_limited"]
    assert report.stats.rate_source == "learned" and 400 < report.stats.learned_rpm < 1.15 * 1200
    assert manifest_of(job.output)["this_run"]["rate_source"] == "learned"
    run_id = report.run_id
    (learned,) = summary["learned_limits"]
    # kept for the next run; the broker counts answers by report arrival, which may bunch a few into a window
    assert learned["source"] == "learned" and 600 <= learned["rpm"] <= 1.15 * 1200
    assert windows >= 3 and learned["windows"] == windows  # the broker's windows, not the shards'
    shards = [table_counts(p, run_id) for p in sorted((tmp_path / "ray.sqlite.shards").glob("*.sqlite"))]
    merged = table_counts(job.cache, run_id)
    for name in ("attempts", "timed", "finished", "tokens", "paid"):
        assert merged[name] == sum(s[name] for s in shards) > 0, name
    assert merged["usd"] == pytest.approx(report.stats.cost_usd) and merged["finished"] == 160
    (run_row,) = summary["runs"]
    assert run_row["requests_paid"] == 160 and run_row["finished"] == 160
    assert second.exit_code == 0 and second.stats.conversations_done == 120
    broker = orjson.loads((tmp_path / "ray.sqlite.shards" / REPORT_NAME).read_bytes())["limiter"]
    assert broker["start_source"] == "stored" and broker["start_rpm"] == pytest.approx(0.9 * learned["rpm"])


def test_one_budget_holds_for_the_whole_cluster_and_over_invocations(tmp_path, ray_instance):
    from distill.cost import BudgetReached, Price

    data = write_multi_turn(tmp_path / "in.jsonl", 100, 1)
    price = Price(1.0, 2.0)
    with start_teacher_process(TeacherKnobs()) as server:
        reference = RunSettings(model="teacher", base_url=server.base_url)
        whole = run(RunJob(data, tmp_path / "one.jsonl", tmp_path / "one.sqlite", reference, price=price))
        cost = whole.stats.cost_usd  # what answering everything costs
        output = whole.stats.completion_tokens // 100
        settings = RunSettings(model="teacher", base_url=server.base_url, estimated_output_tokens=output)
        job = cluster_job(tmp_path, data, settings, shards=2)
        job.price, job.budget = price, 0.4 * cost

        def spent() -> float:
            with sqlite3.connect(f"file:{job.cache}?mode=ro", uri=True) as conn:
                return conn.execute("SELECT coalesce(sum(usd), 0) FROM spending").fetchone()[0]

        for _ in range(2):  # the second invocation counts what the first spent: nothing more goes out
            with pytest.raises(BudgetReached) as stopped:
                run(job)
            assert stopped.value.exit_code == 75 and "--budget" in str(stopped.value)
            assert 0.2 * cost < spent() <= 0.41 * cost  # never over; short by the allowances shards held
        written = len(job.output.read_text().splitlines())
        assert 20 <= written < 45
        job.budget = 2 * cost
        done = run(job)
        stats = server.stats(with_hashes=False)
    assert done.exit_code == 0 and len(job.output.read_text().splitlines()) == 100
    assert spent() == pytest.approx(cost)  # every answer paid for once, over three invocations
    assert stats["answered"] == 200  # the reference's 100, and the cluster's 100 once
