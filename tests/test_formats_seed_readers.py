"""The seed recipes' readers: coqa, booksum, hints, and hf (datasets) with a column mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill import tokens
from distill.conversation import Conversation, Reject
from distill.errors import UsageError
from formats.readers import ReaderOptions, detect, open_reader
from formats.readers.hints import SYSTEM_PROMPT

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def read_all(path: Path, fmt: str | None = None, system_prompt: str | None = None, **extra):
    reader = open_reader(path, fmt, ReaderOptions(system_prompt=system_prompt, extra=extra))
    return reader, list(reader.read(path))


# --- coqa -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture",
    ["coqa_hfdatasets_dummy_dev.json", "coqa_hfdatasets_dummy_train.json", "coqa_dialogstudio_examples.json"],
)
def test_coqa_layouts_give_one_conversation_per_story_with_gold_answers(fixture: str) -> None:
    path = FIXTURES / fixture
    assert detect(path) == "coqa"
    raw = json.loads(path.read_text(encoding="utf-8"))
    stories = raw["data"] if isinstance(raw, dict) else raw
    _, records = read_all(path)
    assert [c.id for c in records] == [s["id"] for s in stories]
    for conv, story in zip(records, stories, strict=True):
        assert (
            conv.system == "Read the story and extract answers for the questions.\nStory: " + story["story"]
        )
        assert conv.user_turns == [q["input_text"] for q in story["questions"]]
        assert conv.meta["gold"] == [a["input_text"] for a in story["answers"]]
        assert conv.assistant_turns == conv.meta["gold"]


def test_coqa_reproduces_the_together_cookbook_messages() -> None:
    """The cookbook's small_coqa line 1 is the Vatican story that the HF dummy train file holds."""
    _, (conv,) = read_all(FIXTURES / "coqa_hfdatasets_dummy_train.json")
    cookbook = json.loads(
        (FIXTURES / "messages_together_coqa_slice.jsonl").read_text(encoding="utf-8").splitlines()[0]
    )
    assert [m.to_dict() for m in conv.messages] == cookbook["messages"]


def test_coqa_keeps_other_annotators_answers_and_a_custom_prompt() -> None:
    _, (conv,) = read_all(
        FIXTURES / "coqa_hfdatasets_dummy_dev.json", prompt="Story:\n{story}\nAnswer briefly."
    )
    assert conv.system.startswith("Story:\nOnce upon a time") and conv.system.endswith("Answer briefly.")
    assert len(conv.meta["gold_alternatives"]) == len(conv.meta["gold"]) == 12
    assert conv.meta["gold_alternatives"][0] == ["white", "white", "white"]


def test_coqa_rejects_stories_it_cannot_pair(tmp_path: Path) -> None:
    path = tmp_path / "coqa.jsonl"
    rows = [
        {"id": "a", "story": "S", "questions": ["q1", "q2"], "answers": {"input_text": ["a1"]}},
        {"id": "b", "story": "", "questions": ["q"], "answers": {"input_text": ["a"]}},
        {"id": "c", "story": "S", "questions": [], "answers": {"input_text": []}},
        {"id": "d", "story": "S", "questions": ["q"], "answers": {"input_text": ["a"]}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    _, records = read_all(path, "coqa")
    assert [type(r) for r in records] == [Reject, Reject, Reject, Conversation]
    assert "2 questions but 1 answers" in records[0].reason
    assert "story" in records[1].reason
    assert "no questions" in records[2].reason


# --- booksum --------------------------------------------------------------------------------------------------


def test_booksum_alignment_rows_are_recognised_and_rejected_with_the_reason() -> None:
    path = FIXTURES / "booksum_alignment_slice.jsonl"
    assert detect(path) == "booksum"
    reader, records = read_all(path)
    assert len(records) == 30 and all(isinstance(r, Reject) for r in records)
    assert "alignment row" in records[0].reason
    assert records[0].source == f"{path.name}:1"
    assert reader.stats["rows"] == 30


def test_booksum_chapters_become_summary_requests_with_the_reference() -> None:
    path = FIXTURES / "booksum_chapters_constructed.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    reader, records = read_all(path)
    for conv, row in zip(records, rows, strict=True):
        assert conv.user_turns == [f"Summarize the following chapter of a book.\n\n{row['chapter']}"]
        assert conv.meta["reference"] == row["summary_text"] == conv.assistant_turns[0]
        assert conv.id == row["summary_path"]
        assert conv.meta["prompt_tokens"] == tokens.count_messages([{"content": conv.user_turns[0]}])
    assert reader.stats == {"rows": 3, "over_context_window": 0, "skipped": 0, "truncated": 0}


def test_booksum_skips_or_truncates_prompts_over_the_context_window() -> None:
    path = FIXTURES / "booksum_chapters_constructed.jsonl"
    _, full = read_all(path)
    sizes = [c.meta["prompt_tokens"] for c in full]
    window = sorted(sizes)[1]  # the longest prompt is over, the others fit
    reader, skipped = read_all(path, context_window=window + 10, reserve=10)
    over = [i for i, s in enumerate(sizes) if s > window]
    assert [isinstance(r, Reject) for r in skipped] == [i in over for i in range(3)]
    assert "over the context window" in skipped[over[0]].reason
    assert reader.stats == {"rows": 3, "over_context_window": len(over), "skipped": len(over), "truncated": 0}

    reader, truncated = read_all(
        path, context_window=window, overflow="truncate", prompt="Summarize:\n{chapter}"
    )
    assert all(isinstance(c, Conversation) for c in truncated)
    cut = truncated[over[0]]
    assert cut.meta["prompt_tokens"] <= window < cut.meta["truncated_from_tokens"]
    assert cut.user_turns[0].startswith("Summarize:\n" + full[over[0]].user_turns[0].split("\n\n")[1][:40])
    assert reader.stats["truncated"] == len(over)


@pytest.mark.parametrize(
    ("option", "value"),
    [("overflow", "drop"), ("context_window", "lots"), ("context_window", "0"), ("reserve", "-1")],
)
def test_booksum_option_errors_name_the_option(option: str, value: str) -> None:
    with pytest.raises(UsageError, match=option):
        open_reader(
            FIXTURES / "booksum_chapters_constructed.jsonl", "booksum", ReaderOptions(extra={option: value})
        )


# --- hints ----------------------------------------------------------------------------------------------------


def test_wikihint_questions_become_the_hinteval_recipe_prompt() -> None:
    path = FIXTURES / "hints_wikihint_slice.json"
    assert detect(path) == "hints"
    raw = json.loads(path.read_text(encoding="utf-8"))
    _, records = read_all(path)
    conv, item = records[0], raw[0]
    hints = [h["hint"] for h in item["hints"]]
    assert [m.to_dict() for m in conv.messages] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f'Generate {len(hints)} hints for the following question without using "Cthulhu" word in the '
            f"hints. Question: {item['question']['question']}",
        },
        {"role": "assistant", "content": "".join(f"{i}. {h}\n" for i, h in enumerate(hints, 1))},
    ]
    assert conv.id == "test_1" and conv.meta == {"answer": "Cthulhu", "hints": hints}


def test_triviahg_schema_and_num_hints_option() -> None:
    path = FIXTURES / "hints_triviahg_slice.json"
    assert detect(path) == "hints"
    raw = json.loads(path.read_text(encoding="utf-8"))
    _, records = read_all(path, num_hints="3", system_prompt="")
    conv = records[0]
    assert conv.id == raw[0]["Q_ID"] and conv.system is None
    assert conv.user_turns[0].startswith(
        'Generate 3 hints for the following question without using "Australia"'
    )
    assert conv.assistant_turns[0].count("\n") == 3


def test_hints_without_hints_need_num_hints(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        json.dumps({"Q_ID": "q1", "Question": "Who?", "ExactAnswer": "Me"}) + "\n", encoding="utf-8"
    )
    _, (rec,) = read_all(path, "hints")
    assert isinstance(rec, Reject) and "num_hints" in rec.reason
    _, (conv,) = read_all(path, "hints", num_hints=4)
    assert conv.user_turns[0].startswith("Generate 4 hints") and conv.assistant_turns == []
    with pytest.raises(UsageError, match="num_hints"):
        read_all(path, "hints", num_hints="many")


# --- hf -------------------------------------------------------------------------------------------------------


def test_hf_parquet_with_coqa_rows_is_detected_and_read(tmp_path: Path) -> None:
    stories = json.loads((FIXTURES / "coqa_dialogstudio_examples.json").read_text(encoding="utf-8"))
    rows = [
        {
            "source": s["source"],
            "story": s["story"],
            "questions": [q["input_text"] for q in s["questions"]],
            "answers": {"input_text": [a["input_text"] for a in s["answers"]]},
        }
        for s in stories
    ]
    path = tmp_path / "coqa.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert detect(path) == "hf"
    _, records = read_all(path)
    _, direct = read_all(FIXTURES / "coqa_dialogstudio_examples.json")
    assert [c.messages for c in records] == [c.messages for c in direct]
    assert [c.meta["gold"] for c in records] == [c.meta["gold"] for c in direct]
    assert records[0].source == "coqa.parquet[train]#0"


def test_hf_saved_dataset_with_a_column_mapping_onto_booksum(tmp_path: Path) -> None:
    import datasets

    rows = [
        json.loads(line)
        for line in (FIXTURES / "booksum_chapters_constructed.jsonl").read_text("utf-8").splitlines()
    ]
    renamed = [
        {"text": r["chapter"], "summary": r["summary_text"], "summary_path": r["summary_path"]} for r in rows
    ]
    folder = tmp_path / "booksum_ds"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(renamed)}).save_to_disk(str(folder))
    assert detect(folder) == "hf"
    reader, records = read_all(folder, columns="chapter=text,summary_text=summary", split="test")
    _, direct = read_all(FIXTURES / "booksum_chapters_constructed.jsonl")
    assert [c.messages for c in records] == [c.messages for c in direct]
    assert [c.id for c in records] == [c.id for c in direct]
    assert reader.stats["rows"] == 3
    with pytest.raises(UsageError, match="split"):
        read_all(folder, columns="chapter=text,summary_text=summary", split="train")


def test_hf_needs_a_mapping_for_rows_it_cannot_place(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("instruction,output\nSay hi,hi\n", encoding="utf-8")
    assert detect(path) == "hf"
    with pytest.raises(UsageError, match="--reader-opt as="):
        read_all(path)
    _, (conv,) = read_all(path, "hf", columns="Question=instruction,ExactAnswer=output", num_hints=2)
    assert conv.user_turns[0].endswith("Question: Say hi")
    with pytest.raises(UsageError, match="columns"):
        read_all(path, "hf", columns="nonsense")
    with pytest.raises(UsageError, match="as="):
        read_all(path, "hf", **{"as": "csv"})


def test_long_first_records_are_still_detected(tmp_path: Path) -> None:
    row = json.loads(
        (FIXTURES / "booksum_chapters_constructed.jsonl").read_text(encoding="utf-8").splitlines()[0]
    )
    row["chapter"] = row["chapter"] * 400  # ~170 KB: more than the 64 KiB detection reads
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    assert detect(path) == "booksum"
    story = {
        "id": "s",
        "story": "x" * 100_000,
        "questions": [{"input_text": "q", "turn_id": 1}],
        "answers": [{"input_text": "a", "turn_id": 1}],
    }
    wrapped = tmp_path / "coqa.json"
    wrapped.write_text(json.dumps({"version": "1.0", "data": [story, story]}), encoding="utf-8")
    assert detect(wrapped) == "coqa"
    _, records = read_all(wrapped)
    assert [r.source for r in records] == ["coqa.json#0", "coqa.json#1"]


def test_coqa_prompt_options_must_place_the_story() -> None:
    path = FIXTURES / "coqa_hfdatasets_dummy_train.json"
    with pytest.raises(UsageError, match="--system-prompt"):
        open_reader(path, "coqa", ReaderOptions(system_prompt="You are helpful."))
    with pytest.raises(UsageError, match="--reader-opt prompt"):
        open_reader(path, "coqa", ReaderOptions(extra={"prompt": "no story here"}))
    _, (conv,) = read_all(path, system_prompt="Context: {story}")
    assert conv.system.startswith("Context: The Vatican")
