"""End-to-end runs of the engine against the real local teacher on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.conversation import Message
from distill.errors import AuthenticationError
from distill.runner import RunJob, run_async
from distill.servers.teacher import chat_answer, prompt_answer
from distill.settings import RunSettings, Sampling
from formats.readers import open_reader
from formats.writers import open_writer
from formats.writers.llama2 import render_llama2


def make_job(tmp_path: Path, base_url: str, input_path: Path, **kw) -> RunJob:
    settings_kw = {k: kw.pop(k) for k in list(kw) if k in RunSettings.__dataclass_fields__}
    settings_kw.setdefault("concurrency", 8)
    settings = RunSettings(model="teacher-70b", base_url=base_url, **settings_kw)
    output_format = kw.pop("output_format", "messages")
    return RunJob(
        input=input_path,
        output=tmp_path / kw.pop("output_name", f"out.{output_format}.jsonl"),
        cache=kw.pop("cache", tmp_path / "cache.sqlite"),
        settings=settings,
        output_format=output_format,
        **kw,
    )


def write_sharegpt(path: Path, conversations: list[list[tuple[str, str]]]) -> Path:
    records = [
        {"id": f"c{i}", "conversations": [{"from": f, "value": v} for f, v in turns]}
        for i, turns in enumerate(conversations)
    ]
    path.write_text(json.dumps(records))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_each_request_carries_the_teachers_own_earlier_answers(tmp_path, teacher):
    data = write_sharegpt(
        tmp_path / "in.json",
        [
            [
                ("system", "Be brief."),
                ("human", "u1"),
                ("gpt", "dataset a1"),
                ("human", "u2"),
                ("gpt", "dataset a2"),
                ("human", "u3"),
            ]
        ],
    )
    report = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert report.exit_code == 0
    (line,) = read_lines(report.export.path)
    history = [{"role": "system", "content": "Be brief."}]
    for user in ("u1", "u2", "u3"):
        history.append({"role": "user", "content": user})
        history.append({"role": "assistant", "content": chat_answer(history)})
    assert line == {"messages": history}
    assert "dataset a1" not in json.dumps(line)
    assert teacher.stats.answered == 3


async def test_history_original_keeps_dataset_answers_as_history(tmp_path, teacher):
    data = write_sharegpt(
        tmp_path / "in.json", [[("human", "u1"), ("gpt", "a1"), ("human", "u2"), ("gpt", "a2")]]
    )
    report = await run_async(make_job(tmp_path, teacher.base_url, data, history="original"))
    (line,) = read_lines(report.export.path)
    t1 = chat_answer([{"role": "user", "content": "u1"}])
    t2 = chat_answer(
        [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"},
        ]
    )
    assert [m["content"] for m in line["messages"]] == ["u1", t1, "u2", t2]


async def test_second_run_sends_nothing_and_writes_the_same_bytes(tmp_path, teacher, sharegpt_60):
    first = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60))
    sent = teacher.stats.requests
    first_bytes = first.export.path.read_bytes()
    second = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60))
    assert teacher.stats.requests == sent
    assert second.stats.requests_sent == 0
    assert second.export.path.read_bytes() == first_bytes
    assert first.export.written == 60


async def test_identical_requests_are_paid_once(tmp_path, teacher):
    # 20 conversations that open with the same question: the first turn is one request, shared in flight.
    data = write_sharegpt(
        tmp_path / "in.json",
        [[("human", "same question"), ("gpt", "x"), ("human", f"q{i}")] for i in range(20)],
    )
    teacher.set_knobs(latency=0.05)
    report = await run_async(make_job(tmp_path, teacher.base_url, data, concurrency=20))
    assert report.export.written == 20
    assert teacher.stats.requests == 21
    assert max(teacher.stats.received_by_hash.values()) == 1


async def test_completions_api_sends_the_llama2_prompt_with_inst_stop(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", [[("human", "u1"), ("gpt", "a1"), ("human", "u2")]])
    report = await run_async(
        make_job(tmp_path, teacher.base_url, data, api="completions", output_format="llama2")
    )
    (line,) = read_lines(report.export.path)
    p1 = render_llama2([Message("user", "u1")])
    t1 = prompt_answer(p1)
    p2 = render_llama2([Message("user", "u1"), Message("assistant", t1), Message("user", "u2")])
    t2 = prompt_answer(p2)
    assert line["text"] == f"<s>[INST] u1 [/INST] {t1} </s><s>[INST] u2 [/INST] {t2} </s>"


async def test_llama2_and_messages_outputs_agree(tmp_path, teacher, sharegpt_60):
    messages = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60))
    llama2 = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60, output_format="llama2"))
    for m, t in zip(read_lines(messages.export.path), read_lines(llama2.export.path), strict=True):
        assert render_llama2([Message(x["role"], x["content"]) for x in m["messages"]]) == t["text"]


async def test_retries_under_faults_give_the_same_bytes_as_a_clean_run(tmp_path, teacher, sharegpt_60):
    clean = await run_async(
        make_job(
            tmp_path,
            teacher.base_url,
            sharegpt_60,
            cache=tmp_path / "clean.sqlite",
            output_name="clean.jsonl",
        )
    )
    teacher.stats.reset()
    teacher.set_knobs(error_rate=0.15, reset_rate=0.05, truncated_rate=0.05, empty_rate=0.05, seed=7)
    faulty = await run_async(
        make_job(
            tmp_path,
            teacher.base_url,
            sharegpt_60,
            cache=tmp_path / "faulty.sqlite",
            output_name="faulty.jsonl",
            attempts=10,
        )
    )
    assert faulty.exit_code == 0
    assert faulty.stats.retries > 0
    assert sum(teacher.stats.faults.values()) == faulty.stats.retries
    assert faulty.export.path.read_bytes() == clean.export.path.read_bytes()


async def test_timeouts_are_retried(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", [[("human", f"q{i}")] for i in range(10)])
    teacher.set_knobs(fail_first_attempts=1, fail_first_kind="hang")
    report = await run_async(make_job(tmp_path, teacher.base_url, data, request_timeout=0.3))
    assert report.export.written == 10
    assert report.stats.retries == 10


async def test_permanent_errors_fail_the_conversation_and_are_not_retried(tmp_path, teacher):
    data = write_sharegpt(
        tmp_path / "in.json",
        [[("human", "fine")], [("human", "please REFUSE this")], [("human", "also fine")]],
    )
    teacher.set_knobs(permanent_marker="REFUSE", permanent_status=422)
    report = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert report.exit_code == 1
    assert report.export.written == 2
    assert report.stats.retries == 0
    assert [f[0] for f in report.stats.failures] == ["c1"]
    assert "422" in report.stats.failures[0][2]
    # A rerun does not pay for it again; --retry-failed does, and succeeds once the cause is gone.
    sent = teacher.stats.requests
    again = await run_async(make_job(tmp_path, teacher.base_url, data))
    assert teacher.stats.requests == sent and again.exit_code == 1
    teacher.set_knobs(permanent_marker=None)
    fixed = await run_async(make_job(tmp_path, teacher.base_url, data, retry_failed=True))
    assert fixed.exit_code == 0 and fixed.export.written == 3
    assert teacher.stats.requests == sent + 1


async def test_a_401_stops_the_run_at_once(tmp_path, teacher, sharegpt_60):
    teacher.set_knobs(api_key="right-key")
    job = make_job(tmp_path, teacher.base_url, sharegpt_60, api_key="wrong-key", concurrency=4)
    with pytest.raises(AuthenticationError, match="TOGETHER_API_KEY"):
        await run_async(job)
    assert teacher.stats.unauthorized <= 4


async def test_the_api_key_is_in_no_file_the_run_writes(tmp_path, teacher, sharegpt_60):
    key = "sk-very-secret-0123456789"
    teacher.set_knobs(api_key=key, permanent_marker="Who are you")
    report = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60, api_key=key))
    assert report.stats.failures  # errors were recorded too
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 3
    for path in written:
        assert key.encode() not in path.read_bytes(), path


async def test_server_rate_limit_is_respected_and_429s_recovered(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", [[("human", f"question {i}")] for i in range(40)])
    teacher.set_knobs(rpm=1200)  # 20 a second, over one-second windows
    paced = await run_async(
        make_job(
            tmp_path, teacher.base_url, data, rpm=1200, cache=tmp_path / "a.sqlite", output_name="a.jsonl"
        )
    )
    assert paced.export.written == 40
    assert teacher.stats.rate_limited <= 1
    teacher.stats.reset()
    unpaced = await run_async(
        make_job(
            tmp_path,
            teacher.base_url,
            data,
            cache=tmp_path / "b.sqlite",
            output_name="b.jsonl",
            concurrency=40,
        )
    )
    assert unpaced.export.written == 40
    assert unpaced.stats.rate_limited > 0
    assert unpaced.export.path.read_bytes() == paced.export.path.read_bytes()


async def test_finish_reason_length_is_kept_and_counted(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", [[("human", "tell me a long story")]])
    teacher.set_knobs(answer_words=200)
    report = await run_async(make_job(tmp_path, teacher.base_url, data, sampling=Sampling(max_tokens=16)))
    assert report.export.written == 1
    assert report.export.finished_length == 1
    assert report.stats.finished_length == 1


async def test_rejects_are_written_beside_the_output(tmp_path, teacher):
    data = tmp_path / "in.jsonl"
    data.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}]})
        + "\n{broken json\n"
        + json.dumps({"conversations": [{"from": "gpt", "value": "only an answer"}]})
        + "\n"
    )
    job = make_job(tmp_path, teacher.base_url, data, input_format="sharegpt", max_reject_share=1.0)
    report = await run_async(job)
    assert report.export.written == 1
    assert "2 of 3 input records (66.7%) were rejected" in report.warnings[0]
    rejects = read_lines(report.rejects)
    assert [r["source"] for r in rejects] == [f"{data.name}:2", f"{data.name}:3"]
    assert all(r["reason"] for r in rejects)


def test_reader_detects_the_sample(sharegpt_60):
    assert open_reader(sharegpt_60).name == "sharegpt"


async def test_requests_that_ran_out_of_attempts_are_tried_again_by_the_next_run(tmp_path, teacher):
    data = write_sharegpt(tmp_path / "in.json", [[("human", "during the outage")], [("human", "also")]])
    teacher.set_knobs(error_rate=1.0)
    outage = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=2))
    assert outage.exit_code == 1 and len(outage.stats.failures) == 2
    assert "500" in outage.stats.failures[0][2] or "503" in outage.stats.failures[0][2]
    teacher.set_knobs(error_rate=0.0)
    recovered = await run_async(make_job(tmp_path, teacher.base_url, data, attempts=2))
    assert recovered.exit_code == 0 and recovered.export.written == 2


async def test_val_fraction_splits_by_a_stable_hash_of_the_id(tmp_path, teacher, sharegpt_60):
    from distill.export import export
    from distill.split import split_of

    report = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60, val_fraction=0.25))
    train = read_lines(report.export.path)
    validation = read_lines(report.export.validation_path)
    assert report.export.validation_path.name == "out.messages.val.jsonl"
    assert len(train) + len(validation) == 60 and 5 <= len(validation) <= 25
    ids = [c["id"] for c in json.loads(sharegpt_60.read_text())]
    expected = sum(split_of(i, 0.25) == "validation" for i in ids)
    assert len(validation) == report.export.validation_written == expected
    manifest = json.loads(report.manifest.read_text())
    assert manifest["validation"]["conversations"] == expected
    messages = open_writer("messages").line
    again = export(tmp_path / "cache.sqlite", tmp_path / "again.jsonl", messages, val_fraction=0.25)
    assert again.validation_path.read_bytes() == report.export.validation_path.read_bytes()
    assert (tmp_path / "again.jsonl").read_bytes() == report.export.path.read_bytes()
