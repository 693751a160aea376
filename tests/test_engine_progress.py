"""The progress line, the input-size estimate behind its ETA, and the end-of-run summary."""

from __future__ import annotations

import json

from distill.estimate import estimate_records
from distill.export import ExportResult
from distill.progress import status_line
from distill.runner import RunReport
from distill.stats import RunStats
from distill.summary import describe


def test_jsonl_records_are_counted_by_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": "x" * i}]}) + "\n" for i in range(5000))
    )
    assert estimate_records(path) == 5000
    path.write_text(path.read_text().rstrip("\n"))
    assert estimate_records(path) == 5000


def test_json_lists_are_estimated_by_their_conversation_keys_across_chunks(tmp_path):
    records = [
        {"id": i, "conversations": [{"from": "human", "value": "y" * (i % 1500)}]} for i in range(3000)
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, indent=1))
    assert path.stat().st_size > 2 << 20  # spans several chunks
    assert estimate_records(path) == 3000


def test_nothing_to_say_about_an_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.json").write_bytes(b"")
    assert estimate_records(tmp_path / "empty.json") is None
    assert estimate_records(tmp_path / "missing.json") is None


def test_the_status_line_shows_every_counter_and_an_eta():
    stats = RunStats(
        total_expected=100,
        conversations_done=50,
        turns_done=120,
        retries=3,
        rate_limited=2,
        prompt_tokens=12_345,
        completion_tokens=6_789,
    )
    line = status_line(stats, eta=90.0)
    for part in (
        "conversations 50/100",
        "turns done 120",
        "req/s",
        "tokens 12.3k in 6.8k out",
        "retries 3",
        "rate limited 2",
        "ETA 01:30",
    ):
        assert part in line


def test_the_summary_lists_failures_and_counts_that_add_up(tmp_path):
    stats = RunStats(
        conversations_read=3,
        conversations_done=2,
        conversations_failed=1,
        failures=[("c9", "in.json#9", "422 from the teacher")],
    )
    result = ExportResult(tmp_path / "out.jsonl", "run", written=2, failed=1)
    text = describe(
        RunReport("run", stats, result, tmp_path / "out.jsonl.manifest.json", None, tmp_path / "in")
    )
    assert "c9 (in.json#9): 422 from the teacher" in text
    assert "out.jsonl: 2 conversations" in text
    assert "3 conversations = 2 written + 1 failed + 0 not answered" in text
    assert "manifest " + str(tmp_path / "out.jsonl.manifest.json") in text
