"""``distill check``: a corpus of broken files (one rule each), writer outputs pass, fuzzing never crashes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.cli import check as check_cli
from distill.conversation import Conversation
from distill.errors import DistillError, InputError
from formats.check import MAX_FILE_BYTES, RULES, check_file
from formats.readers import ReaderOptions, open_reader
from formats.writers import open_writer
from formats.writers.base import encode_line

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
BROKEN = FIXTURES / "check"
SPECIAL_LINES = {"bom": 1, "file-empty": 0}
MAX_SEQ = {"max-seq-length": 100}


def broken_files() -> list[Path]:
    return sorted(BROKEN.glob("*.jsonl"))


def test_the_corpus_covers_every_rule_but_file_size() -> None:
    assert {p.stem for p in broken_files()} == set(RULES) - {"file-size"}


@pytest.mark.parametrize("path", broken_files(), ids=lambda p: p.stem)
def test_each_broken_file_breaks_exactly_its_rule_on_its_line(path: Path) -> None:
    report = check_file(path, max_seq_length=MAX_SEQ.get(path.stem))
    assert not report.ok
    assert [(p.line, p.rule) for p in report.problems] == [(SPECIAL_LINES.get(path.stem, 2), path.stem)]
    text = report.format()
    assert f"[{path.stem}]" in text and "problem(s)" in text


@pytest.mark.parametrize(
    "path", [p for p in broken_files() if p.stem != "max-seq-length"], ids=lambda p: p.stem
)
def test_without_token_counts_the_check_finds_the_same_problems(path: Path) -> None:
    counted, uncounted = check_file(path), check_file(path, count_tokens=False)
    assert [(p.line, p.rule) for p in uncounted.problems] == [(p.line, p.rule) for p in counted.problems]
    assert "tokens" not in uncounted.stats
    assert uncounted.stats["examples"] == counted.stats["examples"]


def test_a_file_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written or read
    report = check_file(path)
    assert [(p.line, p.rule) for p in report.problems] == [(0, "file-size")]


def test_a_good_file_passes_with_statistics() -> None:
    path = FIXTURES / "messages_together_coqa_slice.jsonl"
    report = check_file(path, max_seq_length=600)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert report.data_format == "messages"
    assert report.stats["examples"] == 3
    assert report.stats["turns"] == sum(len(line["messages"]) for line in lines)
    t = report.stats["tokens"]
    assert t["min"] <= t["p50"] <= t["p90"] <= t["p99"] <= t["max"]
    over = report.stats["over_max_seq_length"]
    assert over == sum(1 for p in report.problems if p.rule == "max-seq-length") and over > 0
    assert check_file(path).ok


def write_all(tmp_path: Path, source: Path, writer: str, options: ReaderOptions | None = None) -> Path:
    out = tmp_path / f"{source.stem}.{writer.partition(':')[0]}.jsonl"
    w = open_writer(writer)
    with open(out, "wb") as f:
        for conv in open_reader(source, None, options).read(source):
            if isinstance(conv, Conversation):
                f.write(encode_line(w.render(conv)))
    return out


ANSWERED = [
    "sharegpt_fastchat_dummy_slice.json",
    "sharegpt_dialogstudio_example.json",
    "sharegpt_glaive_toolcall_slice.json",
    "messages_together_coqa_slice.jsonl",
    "coqa_dialogstudio_examples.json",
    "hints_wikihint_slice.json",
    "booksum_chapters_constructed.jsonl",
]


@pytest.mark.parametrize("writer", ["messages", "llama2", "llama3"])
@pytest.mark.parametrize("fixture", ANSWERED)
def test_every_writer_output_passes_the_check(tmp_path: Path, fixture: str, writer: str) -> None:
    report = check_file(write_all(tmp_path, FIXTURES / fixture, writer))
    assert report.ok, report.format()
    assert report.stats["examples"] > 0


@pytest.mark.parametrize("fixture", ["hints_triviahg_slice.json", "booksum_chapters_constructed.jsonl"])
def test_prompt_completion_output_passes_the_check(tmp_path: Path, fixture: str) -> None:
    report = check_file(write_all(tmp_path, FIXTURES / fixture, "prompt-completion"))
    assert report.ok and report.data_format == "prompt-completion"


def test_conversations_still_waiting_for_answers_fail_the_check(tmp_path: Path) -> None:
    report = check_file(write_all(tmp_path, FIXTURES / "sharegpt_mlenergy_slice.json", "messages"))
    assert {p.rule for p in report.problems} == {"assistant-missing"}


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="distill")
    check_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["check", *argv])
    return args.func(args)


def test_cli_exit_codes_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(FIXTURES / "messages_together_coqa_slice.jsonl")) == 0
    assert "OK (format: messages)" in capsys.readouterr().out
    assert run_cli(str(BROKEN / "alternation.jsonl"), "--max-seq-length", "4096") == 1
    out = capsys.readouterr().out
    assert "line 2: [alternation]" in out and "over --max-seq-length 4096: 0" in out
    assert run_cli(str(BROKEN / "weight.jsonl"), "--json") == 1
    assert json.loads(capsys.readouterr().out)["problems"][0]["rule"] == "weight"


def test_missing_file_and_directory_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        check_file(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="directory"):
        check_file(tmp_path)


def test_other_extensions_are_a_warning_not_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes((FIXTURES / "messages_together_coqa_slice.jsonl").read_bytes())
    report = check_file(path)
    assert report.ok and report.warnings


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_any_bytes_give_a_report_or_a_clean_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    try:
        report = check_file(path, max_seq_length=50)
    except DistillError:
        return
    assert report.ok == (report.problem_count == 0)
    report.format()
    json.dumps(report.to_dict())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(st.sampled_from(["role", "content", "weight", "x"]), kids)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "tool", 1]),
        "content": json_values,
        "weight": json_values,
    },
)
lines = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(message_like | json_values, max_size=5)}),
    st.fixed_dictionaries({"text": json_values}),
    st.fixed_dictionaries({"prompt": json_values, "completion": json_values}),
    st.fixed_dictionaries(
        {"input": json_values, "preferred_output": json_values, "non_preferred_output": json_values}
    ),
    json_values,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(lines, min_size=1, max_size=4))
def test_any_json_lines_give_a_report(tmp_path: Path, rows) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = check_file(path, max_seq_length=20)
    assert all(p.rule in RULES for p in report.problems)
    assert all(1 <= p.line <= len(rows) for p in report.problems)
