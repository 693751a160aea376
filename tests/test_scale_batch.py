"""``distill run --batch`` against the local teacher's Batch API fakes, through the real Together and OpenAI SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from support import write_multi_turn

from distill import plan
from distill.batch import BatchFailed, BatchOptions
from distill.cost import BATCH_DISCOUNT, Budget, BudgetReached, Price, expected_output_tokens
from distill.errors import AuthenticationError, UsageError
from distill.runner import RunJob, run_async
from distill.settings import RunSettings
from formats.readers import open_reader

FIXTURES = Path(__file__).parent / "fixtures" / "scale"
COQA = FIXTURES / "together_cookbook_small_coqa_10.jsonl"  # 10 conversations of 5 to 21 turns
PROVIDERS = ("together", "openai")


def base_url(teacher, provider: str) -> str:
    return teacher.base_url if provider == "together" else f"{teacher.root_url}/openai/v1"


def job(teacher, tmp: Path, data: Path, provider: str = "together", name: str = "batch", **kw) -> RunJob:
    settings = kw.pop("settings", None) or RunSettings(model="teacher", base_url=base_url(teacher, provider))
    options = kw.pop("options", None) or BatchOptions(provider=provider, poll_seconds=0.01)
    return RunJob(
        input=data,
        output=tmp / f"{name}.jsonl",
        cache=tmp / f"{name}.sqlite",
        settings=settings,
        api_key="test-key",
        batch=options,
        **kw,
    )


async def live_output(teacher, tmp: Path, data: Path, **settings) -> bytes:
    """The file a live (non-batch) run writes: the reference every batch run must reproduce."""
    live = RunJob(
        input=data,
        output=tmp / "live.jsonl",
        cache=tmp / "live.sqlite",
        settings=RunSettings(model="teacher", base_url=teacher.base_url, **settings),
    )
    await run_async(live)
    return live.output.read_bytes()


def open_batches(cache: Path) -> list[tuple]:
    """(status, batch id) of the batches the cache records as in flight; none before the run made its tables."""
    if not cache.exists():
        return []
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT status, batch_id FROM batches WHERE status IN ('uploaded', 'submitted')"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


async def wait_for_submitted(cache: Path) -> None:
    while [status for status, _ in open_batches(cache)] != ["submitted"]:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_multi_turn_batches_go_in_waves_and_write_what_a_live_run_writes(tmp_path, teacher, provider):
    reference = await live_output(teacher, tmp_path, COQA)
    report = await run_async(job(teacher, tmp_path, COQA, provider))
    assert report.exit_code == 0 and report.export.written == 10
    assert (tmp_path / "batch.jsonl").read_bytes() == reference
    service = teacher.state.batch
    longest = max(len(json.loads(line)["messages"]) for line in COQA.read_text().splitlines()) // 2
    # one wave per turn depth (turn k goes once turn k-1 is back), each distinct request submitted once
    assert service.stats.batches_created == longest == 21
    assert set(service.stats.submissions.values()) == {1}
    assert report.stats.requests_sent == len(service.stats.submissions) == report.stats.turns_done
    assert open_batches(tmp_path / "batch.sqlite") == []


async def test_input_files_are_split_under_the_provider_limits(tmp_path, teacher, sharegpt_60):
    teacher.state.batch.set_knobs(max_requests=7, max_bytes=2500)  # the fake fails a batch over its limits
    options = BatchOptions(provider="together", poll_seconds=0.01, max_requests=7, max_bytes=2500)
    report = await run_async(job(teacher, tmp_path, sharegpt_60, options=options))
    assert report.exit_code == 0 and report.export.written == 60
    service = teacher.state.batch
    files = sorted(
        (service.files[b.input_file_id] for b in service.batches.values()), key=lambda f: f.filename
    )
    assert len(files) == service.stats.batches_created >= 41 / 7
    assert all(f.data.count(b"\n") <= 7 and len(f.data) <= 2500 for f in files)
    # a part cut short of 7 lines while its wave went on into another part: the byte limit cut it
    waves = [f.filename.rsplit("-", 1)[0] for f in files]
    cut_by_bytes = [
        f
        for f, wave, next_wave in zip(files, waves, waves[1:], strict=False)
        if wave == next_wave and f.data.count(b"\n") < 7
    ]
    assert cut_by_bytes and all(len(f.data) > 2500 - 450 for f in cut_by_bytes)
    assert (tmp_path / "batch.jsonl").read_bytes() == await live_output(teacher, tmp_path, sharegpt_60)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_failed_and_expired_requests_are_sent_again(tmp_path, teacher, sharegpt_60, provider):
    teacher.state.batch.set_knobs(fail_first=1, expire_after=6)
    report = await run_async(job(teacher, tmp_path, sharegpt_60, provider))
    assert report.exit_code == 0 and report.export.written == 60
    submissions = teacher.state.batch.stats.submissions
    assert max(submissions.values()) >= 2  # every request failed once with a 500 before it was answered
    with contextlib.closing(sqlite3.connect(tmp_path / "batch.sqlite")) as con:  # what the viewer shows of it
        tries = dict(con.execute("SELECT coalesce(status, error), count(*) FROM attempts GROUP BY 1"))
        finished = con.execute("SELECT sum(finished), count(failed_key) FROM conversations").fetchone()
    unreached = "not reached (batch expired)" if provider == "openai" else "no result line (batch expired)"
    assert tries[200] == sum(1 for _ in submissions) and tries[500] > 0 and tries[unreached] > 0
    assert finished == (60, 0)
    teacher.state.batch.set_knobs(fail_first=0, expire_after=None)
    assert (tmp_path / "batch.jsonl").read_bytes() == await live_output(teacher, tmp_path, sharegpt_60)


async def test_requests_that_keep_failing_are_given_up_after_attempts(tmp_path, teacher, sharegpt_60):
    teacher.state.batch.set_knobs(fail_first=100)
    settings = RunSettings(model="teacher", base_url=teacher.base_url, attempts=3)
    report = await run_async(job(teacher, tmp_path, sharegpt_60, settings=settings))
    assert report.exit_code == 1 and report.export.written == 0 and report.export.failed == 60
    assert set(teacher.state.batch.stats.submissions.values()) == {3}
    assert "no answer after 3 failed batch submissions" in report.stats.failures[0][2]
    assert "500" in report.stats.failures[0][2]
    with contextlib.closing(sqlite3.connect(tmp_path / "batch.sqlite")) as con:
        marked = con.execute(
            "SELECT count(*) FROM conversations c JOIN failures f ON f.key = c.failed_key WHERE f.status = 500"
        ).fetchone()[0]
        tries = con.execute(
            "SELECT count(*) FROM attempts WHERE status = 500 AND batch_id IS NOT NULL"
        ).fetchone()
    assert marked == 60 and tries[0] == 3 * len(teacher.state.batch.stats.submissions)


async def test_permanent_failures_are_recorded_and_never_sent_again(tmp_path, teacher):
    data = tmp_path / "in.jsonl"
    rows = [[{"role": "user", "content": f"question {i}{' FORBIDDEN' if i == 2 else ''}"}] for i in range(5)]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    teacher.set_knobs(permanent_marker="FORBIDDEN")
    report = await run_async(job(teacher, tmp_path, data))
    assert report.exit_code == 1 and report.export.written == 4
    assert "(400)" in report.stats.failures[0][2] and "FORBIDDEN" in report.stats.failures[0][2]
    created = teacher.state.batch.stats.batches_created
    with contextlib.closing(sqlite3.connect(tmp_path / "batch.sqlite")) as con, con:
        con.execute(
            "UPDATE conversations SET answer_tokens = answer_tokens + 1000"
        )  # a rewrite would undo it
    again = await run_async(job(teacher, tmp_path, data))
    assert again.export.written == 4 and teacher.state.batch.stats.batches_created == created
    assert set(teacher.state.batch.stats.submissions.values()) == {1}
    with contextlib.closing(sqlite3.connect(tmp_path / "batch.sqlite")) as con:
        marks = con.execute(
            "SELECT sum(finished), count(failed_key), min(answer_tokens) > 1000 FROM conversations"
        ).fetchone()
    assert marks == (4, 1, 1)  # as the first run left them: the rerun rewrote no conversation


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_interrupted_run_reattaches_to_its_batch_instead_of_submitting_again(
    tmp_path, teacher, sharegpt_60, provider
):
    service = teacher.state.batch
    service.set_knobs(hold=True)
    first = asyncio.create_task(run_async(job(teacher, tmp_path, sharegpt_60, provider)))
    await asyncio.wait_for(wait_for_submitted(tmp_path / "batch.sqlite"), 20)
    first.cancel()  # what SIGINT does to a run
    with pytest.raises(asyncio.CancelledError):
        await first
    assert service.stats.batches_created == 1 and len(open_batches(tmp_path / "batch.sqlite")) == 1
    service.set_knobs(hold=False)
    report = await run_async(job(teacher, tmp_path, sharegpt_60, provider))
    assert report.export.written == 60
    assert service.stats.batches_created == 3  # the re-attached first wave, then the waves of turns 2 and 3
    assert set(service.stats.submissions.values()) == {1}
    assert open_batches(tmp_path / "batch.sqlite") == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_batch_created_but_not_recorded_is_found_by_its_input_file(
    tmp_path, teacher, sharegpt_60, provider
):
    service = teacher.state.batch
    service.set_knobs(hold=True)
    first = asyncio.create_task(run_async(job(teacher, tmp_path, sharegpt_60, provider)))
    await asyncio.wait_for(wait_for_submitted(tmp_path / "batch.sqlite"), 20)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    con = sqlite3.connect(tmp_path / "batch.sqlite")  # as if the run died before the batch id came back
    con.execute("UPDATE batches SET batch_id = NULL, status = 'uploaded'")
    con.commit()
    con.close()
    service.set_knobs(hold=False)
    report = await run_async(job(teacher, tmp_path, sharegpt_60, provider))
    assert report.export.written == 60 and service.stats.batches_created == 3
    assert set(service.stats.submissions.values()) == {1}


async def test_a_batch_the_provider_fails_stops_the_run_with_its_reason(tmp_path, teacher, sharegpt_60):
    teacher.state.batch.set_knobs(max_requests=5)  # the run believes the limit is 50,000
    with pytest.raises(BatchFailed, match="over the limit of 5.*run the same command again"):
        await run_async(job(teacher, tmp_path, sharegpt_60))
    con = sqlite3.connect(tmp_path / "batch.sqlite")
    [(status, carried)] = con.execute("SELECT status, requests FROM batches").fetchall()
    assert status == "failed"
    tries = con.execute("SELECT error, count(*) FROM attempts GROUP BY error").fetchall()
    assert tries == [("no result line (batch failed)", carried)]  # each request the failed batch carried
    assert con.execute("SELECT ended IS NOT NULL FROM runs").fetchone() == (1,)
    con.close()


async def test_budget_submits_only_the_batches_that_fit_and_a_rerun_finishes_paying_once(tmp_path, teacher):
    data = FIXTURES / "dialogstudio_sharegpt_original_example.json"  # 5 conversations of 1 to 5 turns
    price = Price(1000.0, 1000.0)
    options = BatchOptions(provider="together", poll_seconds=0.01, max_requests=1)  # one request a batch
    settings = RunSettings(model="teacher", base_url=teacher.base_url)
    first_turns = [plan.request_for(c, settings, 0) for c in open_reader(data).read(data)]
    expected = expected_output_tokens(settings)
    estimates = [Budget(1, price, BATCH_DISCOUNT).estimate(r, expected) for r in first_turns]
    limit = estimates[0] + estimates[1] + estimates[2] / 2  # room for two of the first wave's five
    with pytest.raises(BudgetReached, match=r"the next request would go over it") as stopped:
        await run_async(job(teacher, tmp_path, data, budget=limit, price=price, options=options))
    assert teacher.state.batch.stats.batches_created == 2
    assert stopped.value.report.export.written < 5
    done = await run_async(job(teacher, tmp_path, data, budget=1000.0, price=price, options=options))
    assert done.export.written == 5
    assert set(teacher.state.batch.stats.submissions.values()) == {1}


async def test_what_can_be_checked_fails_before_anything_is_sent(tmp_path, teacher, sharegpt_60):
    completions = RunSettings(model="teacher", base_url=teacher.base_url, api="completions")
    with pytest.raises(UsageError, match="--api chat"):
        await run_async(job(teacher, tmp_path, sharegpt_60, settings=completions))
    no_key = job(teacher, tmp_path, sharegpt_60)
    no_key.api_key = None
    with pytest.raises(AuthenticationError, match="--api-key-env"):
        await run_async(no_key)
    assert teacher.state.batch.stats.uploads == 0


async def test_openai_batches_take_the_completions_api(tmp_path, teacher, sharegpt_60):
    settings = RunSettings(model="teacher", base_url=base_url(teacher, "openai"), api="completions")
    report = await run_async(job(teacher, tmp_path, sharegpt_60, "openai", settings=settings))
    assert report.export.written == 60
    assert (tmp_path / "batch.jsonl").read_bytes() == await live_output(
        teacher, tmp_path, sharegpt_60, api="completions"
    )


async def test_batch_run_from_the_command_line(tmp_path, teacher, sharegpt_60):
    env = {**os.environ, "TOGETHER_API_KEY": "test-key"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "distill",
        "run",
        str(sharegpt_60),
        "--model",
        "teacher",
        "--base-url",
        teacher.base_url,
        "--batch",
        "--batch-poll",
        "0.02",
        "--cache",
        str(tmp_path / "cli.sqlite"),
        "--output",
        str(tmp_path / "cli.jsonl"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "submitted 11 requests" in err.decode() and "cli.jsonl: 60 conversations" in err.decode()
    assert (tmp_path / "cli.jsonl").read_bytes() == await live_output(teacher, tmp_path, sharegpt_60)


class PausingProvider:
    """The real provider, but the creation of the second batch waits until the test lets it go."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.created = 0
        self.second = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def create(self, input_file_id: str, endpoint: str) -> str:
        self.created += 1
        if self.created == 2:
            self.second.set()
            await self.go.wait()
        return await self.inner.create(input_file_id, endpoint)


async def test_a_conversation_is_marked_finished_as_soon_as_its_last_wave_is_in(tmp_path, teacher):
    from distill.batch import BatchRunner, open_provider
    from distill.cache import Cache

    data = tmp_path / "in.jsonl"
    write_multi_turn(data, 1, 1)  # conv-0: one turn, answered by the first wave
    three = write_multi_turn(tmp_path / "three.jsonl", 1, 3, lambda c, t: f"three turns, question {t}")
    with open(data, "a", encoding="utf-8") as f:
        f.write(three.read_text().replace("conv-0", "conv-3"))  # conv-3: three turns, three waves
    settings = RunSettings(model="teacher", base_url=teacher.base_url)
    options = BatchOptions(provider="together", poll_seconds=0.01)
    provider = PausingProvider(open_provider(options, settings, "test-key"))
    records = list(open_reader(data).read(data))
    async with Cache(tmp_path / "cache.sqlite") as cache:
        runner = BatchRunner(settings, cache, provider, options)
        run = asyncio.create_task(runner.run(records, "run", str(data)))
        second = asyncio.create_task(provider.second.wait())
        await asyncio.wait([run, second], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert second.done(), run  # wave 1 is in; wave 2 is being submitted
        with contextlib.closing(sqlite3.connect(tmp_path / "cache.sqlite")) as con:
            marks = dict(con.execute("SELECT id, finished FROM conversations"))
        provider.go.set()
        await run
    assert marks == {"conv-0": 1, "conv-3": 0}  # the viewer sees the run's progress, not only its end
    with contextlib.closing(sqlite3.connect(tmp_path / "cache.sqlite")) as con:
        assert dict(con.execute("SELECT id, finished FROM conversations")) == {"conv-0": 1, "conv-3": 1}
