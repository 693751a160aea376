"""A large input read by a child process: the same records, errors and stats as the reader gives in the run's own."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, SHAREGPT_60
from test_engine_run import make_job

from distill.conversation import Conversation, Message, Reject
from distill.errors import InputError
from distill.runner import run_async
from formats import reading_process
from formats.readers import ReaderOptions, open_reader
from formats.readers.base import Reader
from formats.reading_process import ReadingProcess, read_in_a_process

SAMPLES = [
    (str(SHAREGPT_60.relative_to(FIXTURES)), None, ReaderOptions()),
    ("formats/messages_llamafactory_slice.jsonl", None, ReaderOptions(system_prompt="Answer briefly.")),
    ("formats/booksum_chapters_constructed.jsonl", "booksum", ReaderOptions(extra={"context_window": "100"})),
    ("formats/coqa_dialogstudio_examples.json", "coqa", ReaderOptions()),
]


@pytest.mark.parametrize(("name", "fmt", "options"), SAMPLES, ids=[s[0].rsplit("/")[-1] for s in SAMPLES])
def test_the_child_yields_what_the_reader_yields_and_its_stats(name, fmt, options):
    path = FIXTURES / name
    here = open_reader(path, fmt, options)
    expected = list(here.read(path))
    there = ReadingProcess(open_reader(path, fmt, options))
    assert list(there.read(path)) == expected
    assert there.stats == here.stats
    assert there.name == here.name


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_rejects_weights_and_meta_cross_in_order(tmp_path):
    path = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps(
                {"id": "a", "messages": [{"role": "user", "content": "hi", "weight": 1}], "lang": "en"}
            ),
            "{not json",
            json.dumps({"id": "b", "messages": []}),
            json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}),
        ],
    )
    expected = list(open_reader(path).read(path))
    assert [type(r) for r in expected] == [Conversation, Reject, Reject, Conversation]
    assert list(ReadingProcess(open_reader(path)).read(path)) == expected


class NamedOnlyReader(Reader):
    """A reader chosen by name only (never detected)."""

    @classmethod
    def sniff(cls, path, head):
        return False


class FailingReader(NamedOnlyReader):
    """Two conversations, then the error a reader might raise."""

    name = "failing"

    def read(self, path):
        for n in range(2):
            yield Conversation(f"c{n}", [Message("user", f"q{n}")], f"{path}:{n + 1}")
        self.stats["read"] = 2
        raise InputError(f"{path} went away while it was read")


class DatedReader(NamedOnlyReader):
    """Conversations whose meta holds a value marshal refuses."""

    name = "dated"

    def read(self, path):
        when = datetime.datetime(2026, 12, 3, 9, 0)
        for n in range(300):  # more than one batch
            yield Conversation(f"c{n}", [Message("user", f"q{n}")], f"{path}:{n + 1}", {"when": when})
        self.stats["read"] = 300


def test_an_error_is_raised_after_the_records_before_it(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", ["{}"])
    records = ReadingProcess(FailingReader()).read(path)
    assert [c.id for c in (next(records), next(records))] == ["c0", "c1"]
    with pytest.raises(InputError, match="went away while it was read"):
        next(records)


def test_values_marshal_refuses_cross_by_pickle(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", ["{}"])
    there = ReadingProcess(DatedReader())
    assert list(there.read(path)) == list(DatedReader().read(path))
    assert there.stats == {"read": 300}


def test_closing_the_stream_early_ends_the_child(tmp_path, monkeypatch):
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(reading_process.subprocess, "Popen", popen)
    path = write_lines(tmp_path / "in.jsonl", ["{}"])
    records = ReadingProcess(DatedReader()).read(path)
    next(records)
    records.close()
    assert started and started[0].poll() is not None


def test_only_a_large_input_of_an_importable_reader_goes_to_a_child(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [json.dumps({"messages": [{"role": "user", "content": "q"}]})])
    reader = open_reader(path)
    assert read_in_a_process(reader, path) is reader  # under MIN_BYTES
    assert isinstance(read_in_a_process(reader, path, min_bytes=0), ReadingProcess)

    class LocalReader(FailingReader):
        name = "local"

    local = LocalReader()
    assert read_in_a_process(local, path, min_bytes=0) is local  # a fresh interpreter cannot find it
    assert read_in_a_process(reader, tmp_path / "missing.jsonl", min_bytes=0) is reader


async def test_a_run_reading_in_a_child_writes_the_same_output(tmp_path, teacher, sharegpt_60, monkeypatch):
    here = await run_async(make_job(tmp_path, teacher.base_url, sharegpt_60, output_name="here.jsonl"))
    monkeypatch.setattr(reading_process, "MIN_BYTES", 0)
    there = await run_async(
        make_job(
            tmp_path,
            teacher.base_url,
            sharegpt_60,
            output_name="there.jsonl",
            cache=tmp_path / "there.sqlite",
        )
    )
    assert there.stats.conversations_read == here.stats.conversations_read == 60
    assert (tmp_path / "there.jsonl").read_bytes() == (tmp_path / "here.jsonl").read_bytes()
