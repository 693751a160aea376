"""A new user's first day (issue 13), through the real ``distill`` command against the bundled local teacher:
money counted over every invocation, no silent success, no poisoned cache, pre-flight, files named with counts
that add up, and flags and configuration that say what is wrong."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from support import DISTILL, run_command, write_multi_turn

from distill.servers.teacher import TeacherKnobs, start_teacher_process

SHAREGPT = Path(__file__).parent / "fixtures" / "engine" / "fastchat_dummy_60.json"


@pytest.fixture(scope="module")
def teacher():
    with start_teacher_process(TeacherKnobs(model="teacher")) as server:
        yield server


def distill(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DISTILL, *args], capture_output=True, text=True, timeout=120, env=env or os.environ
    )


def run(server, data: Path, tmp: Path, name: str, *extra: str, env=None) -> subprocess.CompletedProcess:
    cmd = run_command(server, data, tmp / f"{name}.sqlite", tmp / f"{name}.jsonl", *extra)
    return distill(*cmd[len(DISTILL) :], env=env)


def manifest(tmp: Path, name: str) -> dict:
    return json.loads((tmp / f"{name}.jsonl.manifest.json").read_text())


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def failures(cache: Path) -> int:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT count(*) FROM failures").fetchone()[0]


# -- 1. money ------------------------------------------------------------------------------------------------


def test_the_budget_caps_the_total_over_invocations_and_stats_show_the_spend(tmp_path, teacher):
    data = write_multi_turn(tmp_path / "in.jsonl", 30, 2)
    priced = [
        "--price-in",
        "100",
        "--price-out",
        "100",
        "--expected-output-tokens",
        "40",
        "--concurrency",
        "4",
    ]
    spent = []
    for _ in range(2):  # the same command twice: together they stay under the one budget
        stopped = run(teacher, data, tmp_path, "b", *priced, "--budget", "0.05")
        assert stopped.returncode == 75, stopped.stderr
        cost = manifest(tmp_path, "b")["cost_usd"]
        spent.append(cost["this_run"])
        assert cost["before"] + cost["this_run"] <= 0.05
    assert spent[0] > 0.03 and sum(spent) <= 0.05
    assert "in all on these settings" in stopped.stderr and "higher --budget" in stopped.stderr
    per_run = run(teacher, data, tmp_path, "b", *priced, "--budget", "0.02", "--budget-scope", "run")
    assert per_run.returncode == 75, per_run.stderr
    assert 0.01 < manifest(tmp_path, "b")["cost_usd"]["this_run"] <= 0.02  # this invocation's own cap
    done = run(teacher, data, tmp_path, "b", *priced, "--budget", "10")
    assert done.returncode == 0, done.stderr
    last = manifest(tmp_path, "b")["cost_usd"]
    total = last["before"] + last["this_run"]
    assert (
        f"${last['this_run']:.4f} this run, ${total:.4f} in all of $10.00 budget" in done.stderr
    )  # the summary's cost line
    stats = json.loads(distill("stats", "--cache", str(tmp_path / "b.sqlite"), "--json").stdout)
    assert stats["cost_usd"] == pytest.approx(total) and stats["runs"][0]["cost_usd"] == pytest.approx(total)
    text = distill("stats", "--cache", str(tmp_path / "b.sqlite")).stdout
    assert f"spent ${total:.4f} in all" in text


# -- 2. no silent success -------------------------------------------------------------------------------------


def test_an_input_that_gives_no_conversation_fails_and_names_the_rejects(tmp_path, teacher):
    wrong = run(teacher, SHAREGPT, tmp_path, "w", "--format", "messages")
    assert wrong.returncode == 2
    assert "all 60 records were rejected" in wrong.stderr and "pass --format sharegpt" in wrong.stderr
    assert (
        str(tmp_path / "w.jsonl.rejects.jsonl") in wrong.stderr
        and lines(tmp_path / "w.jsonl.rejects.jsonl") == 60
    )
    (tmp_path / "empty.json").write_text("\n")
    empty = run(teacher, tmp_path / "empty.json", tmp_path, "e", "--format", "sharegpt")
    assert empty.returncode == 2 and "is empty" in empty.stderr
    (tmp_path / "bad.json").write_text('[{"conversations": [{"from": "human" "value": "x"}]}]')
    bad = run(teacher, tmp_path / "bad.json", tmp_path, "x", "--format", "sharegpt")
    assert bad.returncode == 2 and "item 0 and everything after it cannot be read" in bad.stderr
    truncated = tmp_path / "cut.json"
    truncated.write_bytes(SHAREGPT.read_bytes()[:5000])
    cut = run(teacher, truncated, tmp_path, "c")
    assert cut.returncode == 1 and "every record after it is lost" in cut.stderr
    assert "c.jsonl.rejects.jsonl" in cut.stderr and lines(tmp_path / "c.jsonl") == 11  # the rest is written


# -- 3. a wrong --base-url does not poison the cache ---------------------------------------------------------


def test_a_base_url_without_v1_stops_records_nothing_and_the_fixed_url_works(tmp_path, teacher):
    root = teacher.base_url.removesuffix("/v1")
    for extra in ((), ("--skip-preflight",)):  # said by the pre-flight, else by the first requests' 404s
        cmd = run_command(teacher, SHAREGPT, tmp_path / "p.sqlite", tmp_path / "p.jsonl", *extra)
        wrong = distill(*[root if a == teacher.base_url else a for a in cmd[len(DISTILL) :]])
        assert wrong.returncode == 2, wrong.stderr
        assert f"did you mean --base-url {teacher.base_url}?" in wrong.stderr
        assert failures(tmp_path / "p.sqlite") == 0 and not (tmp_path / "p.jsonl").exists()
    fixed = run(teacher, SHAREGPT, tmp_path, "p")
    assert fixed.returncode == 0, fixed.stderr
    assert manifest(tmp_path, "p")["counts"]["written"] == 60


def test_per_request_refusals_after_an_answer_stay_recorded(tmp_path):
    data = write_multi_turn(tmp_path / "in.jsonl", 4, 1, lambda c, t: f"ask {c} {'REFUSE' if c == 3 else ''}")
    knobs = TeacherKnobs(model="listed-model", permanent_marker="REFUSE", permanent_status=404)
    with start_teacher_process(knobs) as t:
        done = run(t, data, tmp_path, "r", "--concurrency", "1")
    assert done.returncode == 1 and "1 conversations failed" in done.stderr
    assert "model 'teacher' is not among the 1 models" in done.stderr  # the pre-flight's warning
    assert failures(tmp_path / "r.sqlite") == 1


# -- 4. pre-flight -------------------------------------------------------------------------------------------


def test_preflight_says_what_is_wrong_in_seconds(tmp_path, teacher):
    no_key = {k: v for k, v in os.environ.items() if k != "TOGETHER_API_KEY"}
    started = time.monotonic()
    together = distill(
        "run", str(SHAREGPT), "--model", "m", "--base-url", "https://api.together.xyz/v1",
        "--cache", str(tmp_path / "k.sqlite"), "-o", str(tmp_path / "k.jsonl"), env=no_key,
    )  # fmt: skip
    assert together.returncode == 2 and "TOGETHER_API_KEY is not set" in together.stderr
    closed = run_command(teacher, SHAREGPT, tmp_path / "u.sqlite", tmp_path / "u.jsonl")
    closed = [a.replace(f":{teacher.port}/", ":9/") for a in closed]
    refused = distill(*closed[len(DISTILL) :])
    assert refused.returncode == 2 and "cannot reach the teacher at http://127.0.0.1:9/v1" in refused.stderr
    assert time.monotonic() - started < 30


def test_a_local_server_that_wants_a_key_says_so_before_any_request(tmp_path):
    no_key = {k: v for k, v in os.environ.items() if k != "TOGETHER_API_KEY"}
    with start_teacher_process(TeacherKnobs(model="teacher", api_key="sekrit")) as server:
        refused = run(server, SHAREGPT, tmp_path, "a", env=no_key)
        answered = server.stats(with_hashes=False)["answered"]
    assert refused.returncode == 2 and "TOGETHER_API_KEY is not set, and" in refused.stderr
    assert "401 to GET /models" in refused.stderr and answered == 0


# -- 5. say what was written ------------------------------------------------------------------------------------


def test_the_summary_names_every_file_and_its_counts_agree_with_the_files(tmp_path, teacher):
    data = tmp_path / "in.jsonl"
    good = [
        json.dumps({"id": f"c{i}", "messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(40)
    ]
    data.write_text("\n".join([*good[:20], "{broken", *good[20:], "[1]"]) + "\n")
    done = run(teacher, data, tmp_path, "s", "--val-fraction", "0.2")
    assert done.returncode == 0, done.stderr
    m = manifest(tmp_path, "s")
    files = m["files"]
    train, val = lines(tmp_path / "s.jsonl"), lines(tmp_path / "s.val.jsonl")
    assert files["output"]["conversations"] == train and files["validation"]["conversations"] == val
    assert files["rejects"]["records"] == lines(tmp_path / "s.jsonl.rejects.jsonl") == 2
    assert train + val == m["counts"]["written"] == m["counts"]["read"] == 40 and val > 0
    assert f"{tmp_path / 's.jsonl'}: {train} conversations" in done.stderr
    assert f"{tmp_path / 's.val.jsonl'}: {val} conversations" in done.stderr
    assert f"40 conversations = {train} + {val} written + 0 failed + 0 not answered" in done.stderr
    assert (
        f"42 records: 40 conversations, 2 rejected (4.8%) -> {tmp_path / 's.jsonl.rejects.jsonl'}"
        in done.stderr
    )
    assert f"manifest {tmp_path / 's.jsonl.manifest.json'}" in done.stderr
    assert "WARNING: 2 of 42 input records (4.8%) were rejected" in done.stderr


def test_prompt_completion_refuses_multi_turn_conversations_before_paying(tmp_path):
    multi = write_multi_turn(tmp_path / "multi.jsonl", 5, 2)
    with start_teacher_process(TeacherKnobs(model="teacher")) as server:
        refused = run(server, multi, tmp_path, "pc", "--output-format", "prompt-completion")
        sent = server.stats(with_hashes=False)["requests"]
    assert refused.returncode == 2 and sent == 0
    assert (
        "prompt-completion holds one user turn" in refused.stderr
        and "--output-format messages" in refused.stderr
    )


# -- 8. flags and configuration ------------------------------------------------------------------------------


def test_flags_and_configuration_errors_name_the_fix(tmp_path, teacher):
    typo = run(teacher, SHAREGPT, tmp_path, "f", "--rmp", "600")
    assert typo.returncode == 2 and "--rmp (did you mean --rpm?)" in typo.stderr
    prefix = run(teacher, SHAREGPT, tmp_path, "f", "--concur", "4")  # no silent prefix matching
    assert prefix.returncode == 2 and "unrecognized arguments: --concur" in prefix.stderr
    config = tmp_path / "distill.toml"
    config.write_text("[run]\nconcurency = 4\n")
    toml = run(teacher, SHAREGPT, tmp_path, "f", "--config", str(config))
    assert (
        toml.returncode == 2 and "unknown key 'concurency'" in toml.stderr and "'concurrency'" in toml.stderr
    )
    cmd = run_command(teacher, SHAREGPT, tmp_path / "f.sqlite", tmp_path / "f.jsonl")
    directory = distill(
        *[
            str(tmp_path / "newdir") + "/" if a == str(tmp_path / "f.jsonl") else a
            for a in cmd[len(DISTILL) :]
        ]
    )
    assert directory.returncode == 2 and "is a directory path" in directory.stderr
    cache = tmp_path / "ro.sqlite"
    cache.write_bytes(b"")
    cache.chmod(0o444)
    read_only = run(teacher, SHAREGPT, tmp_path, "ro")
    assert read_only.returncode == 2 and f"cache {cache} is read-only" in read_only.stderr
