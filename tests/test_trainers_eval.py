"""``distill eval``: task inputs, the requests each protocol sends, scoring, reports, comparison, the engine path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import distill.cli
from distill.errors import InputError, UsageError
from distill.servers.teacher import chat_answer
from distill.settings import RunSettings, Sampling
from trainers import eval as evaluation
from trainers import metrics
from trainers.eval import Answer, Dialogue, Turn

FIXTURES = Path(__file__).parent / "fixtures" / "trainers"
COQA_DEV = FIXTURES / "coqa-dev-1story.json"
COQA_LIST = FIXTURES / "dialogstudio_coqa_2stories.json"
COQA_MESSAGES = FIXTURES / "small_coqa_3.jsonl"
BOOKSUM = FIXTURES / "booksum_handmade_2.jsonl"


def test_coqa_official_layout() -> None:
    (story,) = evaluation.load_dialogues("coqa", COQA_DEV)
    source = json.loads(COQA_DEV.read_text())["data"][0]
    assert story.id == source["id"]
    assert story.system == "Read the story and extract answers for the questions.\nStory: " + source["story"]
    assert len(story.turns) == 12
    assert story.turns[0] == Turn("What color was Cotton?", "white")
    assert story.turns[1] == Turn("Where did she live?", "in a barn")
    assert [story.item_id(k) for k in (0, 11)] == [f"{story.id}:1", f"{story.id}:12"]


def test_coqa_bare_list_and_limit() -> None:
    stories = evaluation.load_dialogues("coqa", COQA_LIST)
    assert [len(s.turns) for s in stories] == [20, 5]
    assert stories[0].turns[0] == Turn(
        "When was the Vat formally opened?", "It was formally established in 1475"
    )
    assert len(evaluation.load_dialogues("coqa", COQA_LIST, limit=1)) == 1


def test_coqa_in_messages_form() -> None:
    lines = [json.loads(line) for line in COQA_MESSAGES.read_text().splitlines()]
    stories = evaluation.load_dialogues("coqa", COQA_MESSAGES)
    assert len(stories) == 3
    for story, line in zip(stories, lines, strict=True):
        messages = line["messages"]
        assert story.system == messages[0]["content"]
        assert [t.question for t in story.turns] == [m["content"] for m in messages if m["role"] == "user"]
        assert [t.gold for t in story.turns] == [m["content"] for m in messages if m["role"] == "assistant"]


def test_coqa_hugging_face_row_layout(tmp_path: Path) -> None:
    row = {"id": "s1", "story": "Ann has a red kite.", "questions": ["What does Ann have?", "What colour?"],
           "answers": {"input_text": ["a kite", "red"], "answer_start": [0, 0], "answer_end": [1, 1]}}  # fmt: skip
    path = tmp_path / "coqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (story,) = evaluation.load_dialogues("coqa", path)
    assert story.turns == (Turn("What does Ann have?", "a kite"), Turn("What colour?", "red"))


def test_booksum_rows() -> None:
    chapters = evaluation.load_dialogues("booksum", BOOKSUM)
    rows = [json.loads(line) for line in BOOKSUM.read_text().splitlines()]
    assert [c.item_id(0) for c in chapters] == [
        "handmade/The Lighthouse Keeper.chapter 1",
        "handmade/The Lighthouse Keeper.chapter 2",
    ]
    (turn,) = chapters[0].turns
    assert turn.question == (
        f"Chapter: {rows[0]['chapter']}\n\nQ: Can you write an appropriate summary of the above paragraphs?\nA:"
    )
    assert turn.gold == rows[0]["summary_text"]
    assert chapters[0].system is None


@pytest.mark.parametrize(
    ("task", "content", "message"),
    [
        ("coqa", "not json at all\n", "line 1 is not valid JSON"),
        ("coqa", '{"story": "s", "questions": ["q"]}\n', "is not a CoQA story"),
        (
            "coqa",
            '{"story": "s", "questions": ["q", "r"], "answers": {"input_text": ["a"]}}\n',
            "equal length",
        ),
        ("booksum", '{"chapter": "text"}\n', "is not a BookSum row"),
        (
            "booksum",
            json.dumps(
                {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2}
            )
            + "\n",
            "one user prompt",
        ),  # fmt: skip
        ("coqa", "\n", "holds no coqa items"),
    ],
)
def test_bad_inputs_are_input_errors(tmp_path: Path, task: str, content: str, message: str) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        evaluation.load_dialogues(task, path)


def test_unknown_task() -> None:
    with pytest.raises(UsageError, match="unknown --task 'squad'"):
        evaluation.load_dialogues("squad", COQA_DEV)


class RecordingAsk:
    """An ask function that answers ``answer-<n>`` and keeps every batch of requests it was sent."""

    def __init__(self, fail_when: str | None = None) -> None:
        self.batches: list[list[list[dict[str, str]]]] = []
        self.fail_when = fail_when

    async def __call__(self, conversations: list[list[dict[str, str]]]) -> list[Answer]:
        self.batches.append(conversations)
        answers = []
        for conversation in conversations:
            last = conversation[-1]["content"]
            failed = self.fail_when is not None and self.fail_when in last
            answers.append(Answer(None, "refused") if failed else Answer(f"answer to {last}"))
        return answers


STORY = Dialogue("s", "Story: Ann has a red kite.", (Turn("q1", "g1"), Turn("q2", "g2"), Turn("q3", "g3")))
OTHER = Dialogue("t", None, (Turn("p1", "h1"),))


async def test_gold_history_sends_every_turn_at_once_with_the_gold_answers() -> None:
    ask = RecordingAsk()
    predictions = await evaluation.predict([STORY, OTHER], ask, "gold")
    (batch,) = ask.batches
    assert batch[2] == [
        {"role": "system", "content": "Story: Ann has a red kite."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "g1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "g2"},
        {"role": "user", "content": "q3"},
    ]
    assert batch[3] == [{"role": "user", "content": "p1"}]
    assert predictions.answers == {"s:1": "answer to q1", "s:2": "answer to q2", "s:3": "answer to q3",
                                   "t:1": "answer to p1"}  # fmt: skip


async def test_model_history_sends_turn_by_turn_with_the_models_answers() -> None:
    ask = RecordingAsk()
    await evaluation.predict([STORY, OTHER], ask, "model")
    assert [len(batch) for batch in ask.batches] == [2, 1, 1]
    assert ask.batches[2][0][1:] == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "answer to q1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "answer to q2"},
        {"role": "user", "content": "q3"},
    ]


async def test_a_failed_turn_is_not_scored_and_ends_a_model_history_dialogue() -> None:
    gold = await evaluation.predict([STORY], RecordingAsk(fail_when="q2"), "gold")
    assert set(gold.answers) == {"s:1", "s:3"} and gold.failures == {"s:2": "refused"}
    model = await evaluation.predict([STORY], RecordingAsk(fail_when="q2"), "model")
    assert set(model.answers) == {"s:1"} and set(model.failures) == {"s:2"}


def test_coqa_report_has_exactly_the_documented_shape() -> None:
    answers = {"s:1": "G1.", "s:2": "g2 and more words", "s:3": "nothing"}
    report = evaluation.score("coqa", "student", [STORY], answers)
    assert list(report) == ["task", "model", "n", "em", "f1", "items"]
    assert (report["task"], report["model"], report["n"]) == ("coqa", "student", 3)
    assert report["em"] == pytest.approx(1 / 3)
    assert report["f1"] == pytest.approx((1 + 2 * (1 / 4) * 1 / (1 / 4 + 1) + 0) / 3)
    assert report["items"][1] == {
        "id": "s:2",
        "question": "q2",
        "prediction": "g2 and more words",
        "gold": "g2",
    }
    assert all(list(item) == ["id", "question", "prediction", "gold"] for item in report["items"])


def test_booksum_report_scores_rouge() -> None:
    chapters = evaluation.load_dialogues("booksum", BOOKSUM)
    answers = {c.id: c.turns[0].gold for c in chapters[:1]}
    report = evaluation.score("booksum", "student", chapters, answers)
    assert list(report) == ["task", "model", "n", "rouge1", "rouge2", "rougeL", "items"]
    assert report["n"] == 1
    assert (report["rouge1"], report["rouge2"], report["rougeL"]) == (1.0, 1.0, 1.0)


def test_reports_round_trip_and_bad_ones_are_refused(tmp_path: Path) -> None:
    report = evaluation.score("coqa", "m", [STORY], {"s:1": "g1"})
    path = tmp_path / "r.json"
    evaluation.write_report(report, path)
    assert evaluation.load_report(path) == report
    path.write_text('{"task": "coqa", "items": []}')
    with pytest.raises(UsageError, match="lacks the em, f1 score"):
        evaluation.load_report(path)
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a distill eval report"):
        evaluation.load_report(path)


def test_compare_shows_base_tuned_change_and_the_published_figures() -> None:
    base = evaluation.score("coqa", "base-model", [STORY], {"s:1": "x", "s:2": "g2", "s:3": "y"})
    tuned = evaluation.score("coqa", "tuned-model", [STORY], {"s:1": "g1", "s:2": "g2", "s:3": "g3"})
    table = evaluation.compare(base, tuned).splitlines()
    assert table[0].split() == [
        "base",
        "fine-tuned",
        "change",
        "reference",
        "base",
        "reference",
        "fine-tuned",
    ]
    assert table[1].split() == ["model", "base-model", "tuned-model"]
    assert table[3].split() == ["em", "0.333", "1.000", "+0.667", "0.043", "0.620"]
    assert table[4].split() == ["f1", "0.333", "1.000", "+0.667", "0.232", "0.780"]
    assert "reference (published, not measured here): Together cookbook" in table[5]
    assert len(table) == 6


def test_compare_refuses_another_task_and_notes_other_items() -> None:
    coqa = evaluation.score("coqa", "m", [STORY], {"s:1": "g1"})
    booksum = evaluation.score("booksum", "m", [OTHER], {"t": "h1"})
    with pytest.raises(UsageError, match="gives a booksum report"):
        evaluation.compare(booksum, coqa)
    fewer = evaluation.score("coqa", "m", [STORY], {"s:1": "g1", "s:2": "g2"})
    assert "score different items (1 in common)" in evaluation.compare(coqa, fewer)
    booksum_table = evaluation.compare(booksum, booksum)
    assert "0.055" in booksum_table and "0.365" in booksum_table and "LLaMA-2-7B-32K-Chat" in booksum_table


def test_max_tokens_default_per_task() -> None:
    settings = RunSettings(model="m", base_url="http://x/v1")
    assert evaluation.eval_settings("coqa", settings).sampling.max_tokens == 64
    assert evaluation.eval_settings("booksum", settings).sampling.max_tokens == 1024
    given = RunSettings(model="m", base_url="http://x/v1", sampling=Sampling(max_tokens=7))
    assert evaluation.eval_settings("coqa", given).sampling.max_tokens == 7


# Through the engine, against the local teacher (deterministic answers that encode the whole history).


async def test_evaluate_through_the_engine_is_cached(teacher, tmp_path: Path) -> None:
    stories = evaluation.load_dialogues("coqa", COQA_DEV)
    settings = evaluation.eval_settings("coqa", RunSettings(model="student", base_url=teacher.base_url))
    cache = tmp_path / "cache.sqlite"
    report, predictions = await evaluation.evaluate("coqa", stories, settings, cache, None, "gold")
    story = stories[0]
    expected = {
        story.item_id(k): chat_answer(story.messages(k, [t.gold for t in story.turns[:k]])) for k in range(12)
    }
    assert predictions.answers == expected and predictions.failures == {}
    pairs = [(t.gold, expected[story.item_id(k)]) for k, t in enumerate(story.turns)]
    assert (report["n"], report["em"], report["f1"]) == (12, *metrics.squad_scores(pairs).values())
    sent = teacher.stats.requests
    assert sent == 12
    again, _ = await evaluation.evaluate("coqa", stories, settings, cache, None, "gold")
    assert again == report
    assert teacher.stats.requests == sent  # re-scored from the cache, nothing paid twice


async def test_evaluate_with_model_history_sends_the_models_answers(teacher, tmp_path: Path) -> None:
    stories = evaluation.load_dialogues("coqa", COQA_LIST, limit=1)
    settings = evaluation.eval_settings("coqa", RunSettings(model="student", base_url=teacher.base_url))
    _, predictions = await evaluation.evaluate(
        "coqa", stories, settings, tmp_path / "c.sqlite", None, "model"
    )
    story, answers = stories[0], predictions.answers
    earlier = [answers[story.item_id(k)] for k in range(3)]
    assert answers[story.item_id(3)] == chat_answer(story.messages(3, earlier))


async def test_cli_eval_report_and_compare(teacher, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(distill.cli, "COMMANDS", tuple(dict.fromkeys((*distill.cli.COMMANDS, "eval"))))
    monkeypatch.delenv("DISTILL_MODEL", raising=False)
    base_report, tuned_report = tmp_path / "base.json", tmp_path / "tuned.json"
    common = ["eval", "--task", "booksum", "--input", str(BOOKSUM), "--base-url", teacher.base_url,
              "--cache", str(tmp_path / "cache.sqlite")]  # fmt: skip
    main = distill.cli.main
    assert await asyncio.to_thread(main, [*common, "--model", "base", "--report", str(base_report)]) == 0
    capsys.readouterr()
    argv = [*common, "--model", "tuned", "--report", str(tuned_report), "--compare", str(base_report)]
    assert await asyncio.to_thread(main, argv) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("booksum  model tuned  n=2  rouge1 ")
    assert shown[2].split() == ["model", "base", "tuned"]
    assert shown[4].split()[-2:] == ["0.055", "0.365"]
    assert "LLaMA-2-7B-32K-Chat" in shown[-1]
    tuned = json.loads(tuned_report.read_text())
    assert list(tuned) == ["task", "model", "n", "rouge1", "rouge2", "rougeL", "items"]
    assert tuned["n"] == 2 and tuned["model"] == "tuned"
    assert tuned["items"][0]["prediction"] == chat_answer(
        [{"role": "user", "content": tuned["items"][0]["question"]}]
    )


async def test_cli_eval_exits_1_when_items_fail(teacher, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(distill.cli, "COMMANDS", tuple(dict.fromkeys((*distill.cli.COMMANDS, "eval"))))
    teacher.set_knobs(permanent_marker="Where did she live?")
    argv = ["eval", "--task", "coqa", "--input", str(COQA_DEV), "--model", "m", "--base-url", teacher.base_url,
            "--cache", str(tmp_path / "cache.sqlite"), "--attempts", "1"]  # fmt: skip
    assert await asyncio.to_thread(distill.cli.main, argv) == 1
    captured = capsys.readouterr()
    assert "n=11" in captured.out
    assert "1 items had no answer and were not scored" in captured.err
