"""Issue 6, property 4: a bad input record becomes a line of ``OUTPUT.rejects.jsonl`` with its ``file:line`` and
the reason, and every good record around it is answered and written.

The corpus is ``tests/fixtures/reliability/bad_records/<reader>/<kind>.jsonl``: one bad record per file, one file
per kind, 56 kinds across the five file readers. Each test interleaves a reader's kinds with good records in one
JSONL file and runs ``distill run`` on it in its own process against the local teacher.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from distill.conversation import Conversation, Reject
from distill.servers.teacher import TeacherKnobs, start_teacher_process
from formats.readers import READERS

DISTILL = [sys.executable, "-m", "distill"]
CORPUS = Path(__file__).parent / "fixtures" / "reliability" / "bad_records"
NO_USER_TURN = "no user turn left after clean-up"

# reader -> kind -> a fragment of the reason the reject must give
KINDS: dict[str, dict[str, str]] = {
    "sharegpt": {
        "bare_array": "expected a JSON object, got list",
        "blank_values": NO_USER_TURN,
        "boolean": "expected a JSON object, got bool",
        "broken_json": "invalid JSON: Expecting ',' delimiter at column 52",
        "conversations_not_a_list": "no 'conversations' list",
        "empty_conversation": NO_USER_TURN,
        "invalid_utf8": "not valid UTF-8",
        "missing_conversations": "no 'conversations' list",
        "nested_too_deeply": "nested too deeply",
        "no_human_turn": NO_USER_TURN,
        "null": "expected a JSON object, got NoneType",
        "number": "expected a JSON object, got int",
        "role_is_a_number": "role must be a string, got int",
        "single_quotes": "invalid JSON: Expecting property name enclosed in double quotes",
        "string": "expected a JSON object, got str",
        "system_only": NO_USER_TURN,
        "trailing_garbage": "invalid JSON: Extra data",
        "turn_not_an_object": "a turn must be a JSON object, got str",
        "turn_without_from": "a turn has no 'from' key",
        "unknown_role": "unknown role 'narrator'",
        "value_is_a_number": "a turn's 'value' must be a string, got int",
        "value_is_an_object": "a turn's 'value' must be a string, got dict",
        "value_is_nan": "a turn's 'value' must be a string, got float",
        "zero_width_only": NO_USER_TURN,
    },
    "messages": {
        "assistant_only": NO_USER_TURN,
        "content_is_a_number": "'content' must be a string or a list of parts, got int",
        "empty_messages": NO_USER_TURN,
        "image_part": "content part of type 'image_url' is not supported",
        "message_not_an_object": "a message must be a JSON object, got str",
        "message_without_role": "a message has no 'role'",
        "messages_not_a_list": "no 'messages' list",
        "missing_messages": "no 'messages' list",
        "null_content_only": NO_USER_TURN,
        "part_is_a_number": "a content part must be an object or a string, got int",
        "role_is_a_list": "role must be a string, got list",
        "text_part_without_text": "a text part has no string 'text'",
        "truncated_line": "invalid JSON: Unterminated string starting at column",
        "unknown_role": "unknown role 'bot'",
        "weight_as_string": "message weight must be 0 or 1, got '1'",
        "weight_two": "message weight must be 0 or 1, got 2",
    },
    "coqa": {
        "answer_not_text": "an empty or missing answer text",
        "answers_missing": "no answers",
        "empty_question_text": "an empty or missing question text",
        "fewer_answers_than_questions": "2 questions but 1 answers",
        "questions_empty": "no questions",
        "questions_not_a_list": "no questions",
        "story_blank": "no 'story' text",
        "story_missing": "no 'story' text",
    },
    "booksum": {
        "alignment_row": "an alignment row (paths only)",
        "chapter_blank": "no 'chapter' text",
        "chapter_not_a_string": "no 'chapter' text",
    },
    "hints": {
        "answer_missing": "no answer text",
        "hints_not_a_list": "'hints' must be a list",
        "no_hints_to_count": "no hints to count",
        "question_is_a_number": "no question text",
        "question_missing": "no question text",
    },
}

# A good record of each reader whose user turn carries "good record N".
GOOD: dict[str, Callable[[int], dict]] = {
    "sharegpt": lambda n: {"id": f"g{n}", "conversations": [{"from": "human", "value": f"good record {n}"}]},
    "messages": lambda n: {"id": f"g{n}", "messages": [{"role": "user", "content": f"good record {n}"}]},
    "coqa": lambda n: {
        "id": f"g{n}",
        "story": f"A story numbered {n}.",
        "questions": [f"good record {n}: which number?"],
        "answers": [str(n)],
    },
    "booksum": lambda n: {
        "book_id": f"g{n}",
        "chapter": f"good record {n}: a chapter.",
        "summary_text": "short",
    },
    "hints": lambda n: {
        "id": f"g{n}",
        "question": f"good record {n}: which number?",
        "answer": str(n),
        "hints": ["one"],
    },
}


@pytest.fixture(scope="module")
def teacher():
    with start_teacher_process(TeacherKnobs()) as server:
        yield server


def distill_run(server, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [*DISTILL, "run", str(data), "--model", "teacher", "--base-url", server.base_url, "--quiet"]
    args += ["--cache", str(out.with_suffix(".sqlite")), "--output", str(out), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def user_turns(output: Path) -> list[str]:
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in read_jsonl(output)]


def test_the_corpus_has_at_least_30_kinds_and_the_table_covers_every_file():
    on_disk = {reader.name: {f.stem for f in reader.iterdir()} for reader in CORPUS.iterdir()}
    assert on_disk == {reader: set(kinds) for reader, kinds in KINDS.items()}
    assert sum(len(kinds) for kinds in KINDS.values()) >= 30


@pytest.mark.parametrize("reader", sorted(KINDS))
def test_each_bad_record_is_rejected_with_its_line_and_reason_and_each_good_one_written(
    tmp_path, teacher, reader
):
    kinds = sorted(KINDS[reader])
    lines = [json.dumps(GOOD[reader](0)).encode()]
    for n, kind in enumerate(kinds, 1):
        lines.append((CORPUS / reader / f"{kind}.jsonl").read_bytes().rstrip(b"\n"))
        lines.append(json.dumps(GOOD[reader](n)).encode())
    data = tmp_path / f"{reader}.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"

    result = distill_run(teacher, data, out, "--format", reader)
    assert result.returncode == 0, result.stderr

    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert [r["source"] for r in rejects] == [f"{reader}.jsonl:{2 * n}" for n in range(1, len(kinds) + 1)]
    for kind, reject in zip(kinds, rejects, strict=True):
        assert KINDS[reader][kind] in reject["reason"], (kind, reject["reason"])
    users = user_turns(out)
    assert len(users) == len(kinds) + 1
    assert all(f"good record {n}" in user for n, user in enumerate(users))
    counts = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["counts"]
    assert counts["rejects"] == len(kinds) and counts["written"] == len(kinds) + 1


HEADS = {
    "null_then_array": ["null", "[1, 2]"],
    "two_broken_lines": ['{"conversations": [{"from": "human"', "{broken"],
    "array_first": ['[{"from": "human", "value": "hi"}]'],
    "number_first": ["42"],
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_bad_first_records_do_not_hide_the_good_ones_behind_them(tmp_path, head):
    # The layout of a file (JSONL, a list, one object) is judged from its first lines: bad ones there must not
    # make the file unreadable or turn it into one reject.
    good = [json.dumps(GOOD["sharegpt"](n)) for n in range(3)]
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join([*HEADS[head], *good]) + "\n", encoding="utf-8")
    records = list(READERS.get("sharegpt")().read(data))
    assert [type(r) for r in records] == [Reject] * len(HEADS[head]) + [Conversation] * 3
    assert [r.source for r in records] == [f"in.jsonl:{i}" for i in range(1, len(records) + 1)]


def test_bad_first_lines_through_a_whole_run(tmp_path, teacher):
    good = [json.dumps(GOOD["sharegpt"](n)) for n in range(3)]
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join([*HEADS["null_then_array"], *HEADS["two_broken_lines"], *good]) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    result = distill_run(teacher, data, out, "--format", "sharegpt", "--max-reject-share", "0.6")
    assert result.returncode == 0, result.stderr
    assert "4 of 7 input records (57.1%) were rejected" in result.stderr  # a loud warning, not an error
    assert user_turns(out) == [f"good record {n}" for n in range(3)]
    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert [r["source"] for r in rejects] == [f"in.jsonl:{i}" for i in range(1, 5)]


def test_a_json_list_rejects_bad_items_by_index_and_fails_at_a_syntax_error(tmp_path, teacher):
    items = [GOOD["sharegpt"](0), None, [1], "text", {"conversations": []}, GOOD["sharegpt"](1)]
    body = ", ".join(json.dumps(i) for i in items)
    data = tmp_path / "list.json"
    data.write_text(f'[{body}, {{"conversations": [}}, {json.dumps(GOOD["sharegpt"](2))}]', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = distill_run(teacher, data, out, "--format", "sharegpt")
    assert result.returncode == 1, result.stderr  # the rest of the file is lost: never a silent success
    assert (
        "cannot be read past list.json#6" in result.stderr
        and "every record after it is lost" in result.stderr
    )
    assert user_turns(out) == ["good record 0", "good record 1"]  # what came before is written all the same
    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert [r["source"] for r in rejects] == [f"list.json#{i}" for i in (1, 2, 3, 4, 6)]
    assert "everything after it cannot be read" in rejects[-1]["reason"]


def test_an_input_where_nothing_is_usable_fails_and_writes_every_reject(tmp_path, teacher):
    data = tmp_path / "hopeless.jsonl"
    data.write_text('null\n[1]\n{"conversations": []}\n"text"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    teacher.reset_stats()
    result = distill_run(teacher, data, out, "--format", "sharegpt")
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert "no conversation could be read" in result.stderr and "out.jsonl.rejects.jsonl" in result.stderr
    assert not out.exists()
    assert len(read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")) == 4
    assert teacher.stats(with_hashes=False)["requests"] == 0


def test_a_file_that_is_not_json_at_all_is_one_clear_error(tmp_path, teacher):
    data = tmp_path / "notes.txt"
    data.write_text("these are my notes\nnot a dataset\n", encoding="utf-8")
    result = distill_run(teacher, data, tmp_path / "out.jsonl", "--format", "sharegpt")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not JSON or JSONL" in result.stderr and "--format" in result.stderr
