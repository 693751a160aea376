"""``--dry-run`` (the multi-turn-aware estimate) and ``--budget``, against the local teacher's own billing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distill import cost, tokens
from distill.cost import BudgetReached, Price, estimate, resolve_price
from distill.dry_run import dry_run
from distill.errors import UsageError
from distill.runner import RunJob, run_async
from distill.servers.teacher import TeacherKnobs, start_teacher_process
from distill.settings import RunSettings, Sampling
from distill.shard import Shard
from formats.readers import open_reader

FIXTURES = Path(__file__).parent / "fixtures" / "scale"
COQA = FIXTURES / "together_cookbook_small_coqa_10.jsonl"  # the story in the system prompt, 5 to 21 turns
DISTILL = [sys.executable, "-m", "distill"]


def records(path: Path) -> list:
    return list(open_reader(path).read(path))


def live_job(tmp: Path, url: str, name: str, **kw) -> RunJob:
    settings = kw.pop("settings", None) or RunSettings(model="teacher", base_url=url, concurrency=4)
    return RunJob(
        input=kw.pop("input", COQA),
        output=tmp / f"{name}.jsonl",
        cache=tmp / f"{name}.sqlite",
        settings=settings,
        **kw,
    )


async def test_the_prompt_estimate_is_what_the_server_bills_history_included(tmp_path, teacher):
    settings = RunSettings(model="teacher", base_url=teacher.base_url, history="original")
    guess = estimate(records(COQA), settings)
    report = await run_async(live_job(tmp_path, teacher.base_url, "live", settings=settings))
    assert guess.requests == report.stats.requests_sent == teacher.stats.answered
    assert guess.prompt_tokens == teacher.stats.prompt_tokens  # counted by the server from what it received
    once = sum(tokens.count_messages([m.to_dict() for m in c.messages]) for c in records(COQA))
    assert guess.prompt_tokens > 8 * once  # each turn re-sends the story and every turn before it


def test_unknown_teacher_answers_in_the_history_count_as_the_expected_output():
    conversations = records(COQA)
    pairs = sum(len(c.user_turns) * (len(c.user_turns) - 1) // 2 for c in conversations)
    settings = RunSettings(model="m", base_url="", estimated_output_tokens=100)
    low = estimate(conversations, settings)
    settings.estimated_output_tokens = 300
    high = estimate(conversations, settings)
    assert low.estimated_history_answers == high.estimated_history_answers == pairs
    assert high.prompt_tokens - low.prompt_tokens == 200 * pairs
    assert low.output_tokens == 100 * low.requests and low.worst_output_tokens is None
    capped = estimate(conversations, RunSettings(model="m", base_url="", sampling=Sampling(max_tokens=50)))
    assert capped.expected_output == 50 and capped.worst_output_tokens == 50 * capped.requests


async def test_answers_already_in_the_cache_are_free_and_known(tmp_path, teacher):
    job = live_job(tmp_path, teacher.base_url, "run", limit=3)
    await run_async(job)
    answered = teacher.stats.answered
    job.limit = None
    partial = dry_run(job, Price(1, 1), open(os.devnull, "w"))  # noqa: SIM115
    assert partial.cached_requests == answered and partial.requests_to_send == partial.requests - answered
    await run_async(job)
    done = dry_run(job, Price(1, 1), open(os.devnull, "w"))  # noqa: SIM115
    assert done.requests_to_send == 0 and done.cost(Price(1, 1)) == 0


def test_prices_come_from_the_flags_or_a_dated_default():
    assert (
        resolve_price("META-LLAMA/Llama-3.3-70B-Instruct-Turbo")
        == cost.DEFAULT_PRICES["meta-llama/Llama-3.3-70B-Instruct-Turbo"]
    )
    assert "2025-06" in resolve_price("gpt-4o-mini").source
    assert resolve_price("gpt-4o-mini", 1.0, 2.0) == Price(1.0, 2.0)
    assert resolve_price("my-own-model") is None
    with pytest.raises(UsageError, match="--price-in and --price-out"):
        resolve_price("gpt-4o", 1.0, None)
    with pytest.raises(UsageError, match="--price-in"):
        cost.budget_for(5.0, "my-own-model", None)
    assert Price(2.0, 8.0).cost(1_000_000, 500_000, cost.BATCH_DISCOUNT) == pytest.approx(3.0)


def dry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DISTILL, "run", str(COQA), "--dry-run", *args], capture_output=True, text=True, timeout=60
    )


def test_dry_run_prints_the_bill_without_a_server(tmp_path):
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    done = dry("--model", model, "--max-tokens", "256", "--cache", str(tmp_path / "none.sqlite"))
    assert done.returncode == 0, done.stderr
    settings = RunSettings(
        model=model, base_url="", sampling=Sampling(max_tokens=256), estimated_output_tokens=512
    )
    guess = estimate(records(COQA), settings)
    price = cost.DEFAULT_PRICES[model]
    assert f"{guess.prompt_tokens:,}" in done.stdout and f"{guess.output_tokens:,}" in done.stdout
    assert f"${guess.cost(price):,.2f}" in done.stdout and "2025-06" in done.stdout
    assert f"${guess.worst_cost(price):,.2f}" in done.stdout
    assert not (tmp_path / "none.sqlite").exists()  # a dry run creates no cache
    unknown = dry("--model", "my-own-model")
    assert unknown.returncode == 0 and "cost                unknown" in unknown.stdout
    assert "--price-in" in unknown.stdout
    priced = dry("--model", "my-own-model", "--price-in", "2", "--price-out", "4", "--shard", "2/3")
    owned = sum(Shard(2, 3).owns(c.id) for c in records(COQA))
    assert re.search(rf"^conversations +{owned} ", priced.stdout, re.M)
    assert "$2.00 in, $4.00 out" in priced.stdout


async def test_budget_stops_sending_and_the_same_command_finishes_paying_once(tmp_path, teacher):
    price = Price(100.0, 100.0)  # $0.0001 a token; a CoQA request costs some hundreds of tokens
    job = live_job(tmp_path, teacher.base_url, "budget", budget=1.0, price=price)
    with pytest.raises(
        BudgetReached, match=r"of --budget \$1\.00; the next request would go over it"
    ) as stop:
        await run_async(job)
    assert "Run the same command again with a higher --budget to continue" in str(stop.value)
    stopped = teacher.stats
    spent = price.cost(stopped.prompt_tokens, stopped.completion_tokens)  # as the server billed it
    costliest = max(price.cost(*t) for t in _request_tokens(tmp_path / "budget.sqlite"))
    assert 1.0 - 6 * costliest < spent <= 1.0  # stopped near the cap, never over it
    assert stop.value.report.export.written < 10
    job.budget = None
    report = await run_async(job)
    assert report.export.written == 10
    assert set(teacher.stats.received_by_hash.values()) == {1}  # nothing answered was asked for again


def _request_tokens(cache: Path) -> list[tuple[int, int]]:
    import sqlite3

    con = sqlite3.connect(cache)
    try:
        return con.execute("SELECT prompt_tokens, completion_tokens FROM responses").fetchall()
    finally:
        con.close()


def test_budget_stop_exits_75_and_says_how_to_continue(tmp_path):
    with start_teacher_process(TeacherKnobs()) as server:
        args = [
            *DISTILL,
            "run",
            str(COQA),
            "--model",
            "teacher",
            "--base-url",
            server.base_url,
            "--cache",
            str(tmp_path / "c.sqlite"),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--quiet",
        ]
        stopped = subprocess.run(
            [*args, "--budget", "0.05", "--price-in", "100", "--price-out", "100"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stopped.returncode == 75, stopped.stderr
        assert "of --budget $0.05; the next request would go over it" in stopped.stderr
        assert "Run the same command again with a higher --budget to continue" in stopped.stderr
        no_price = subprocess.run([*args, "--budget", "1"], capture_output=True, text=True, timeout=60)
        assert no_price.returncode == 2 and "--price-in" in no_price.stderr
        assert subprocess.run(args, capture_output=True, timeout=60).returncode == 0
