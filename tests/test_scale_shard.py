"""``--shard I/N`` and ``distill merge``: N machines, N caches, one dataset again."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from distill.cache import RunLock
from distill.cli import merge as merge_cli
from distill.errors import CacheError, UsageError
from distill.export import export
from distill.merge import merge
from distill.runner import RunJob, run_async
from distill.settings import RunSettings
from distill.shard import Shard, bucket
from formats.readers import open_reader
from formats.writers import open_writer

FIXTURES = Path(__file__).parent / "fixtures" / "scale"
COQA = FIXTURES / "together_cookbook_small_coqa_10.jsonl"


def run_job(teacher, data: Path, directory: Path, **kw) -> RunJob:
    directory.mkdir(parents=True, exist_ok=True)
    return RunJob(
        input=data,
        output=directory / "out.jsonl",
        cache=directory / "cache.sqlite",
        settings=RunSettings(model="teacher", base_url=teacher.base_url),
        **kw,
    )


def test_the_split_is_a_stable_partition():
    ids = [f"conversation-{i}" for i in range(3000)]
    for count in (1, 2, 5):
        owners = Counter(next(i for i in range(1, count + 1) if Shard(i, count).owns(c)) for c in ids)
        assert sum(owners.values()) == 3000 and len(owners) == count
        assert all(abs(n - 3000 / count) < 0.15 * 3000 / count for n in owners.values())
        assert all(sum(Shard(i, count).owns(c) for i in range(1, count + 1)) == 1 for c in ids[:200])
    # the same id lands in the same shard on every machine and Python: sha256, not hash()
    assert (bucket("conversation-0", 4), bucket("conversation-1", 4), bucket("x", 1000)) == (0, 1, 876)
    assert Shard.parse(" 2 / 8 ") == Shard(2, 8) and str(Shard(3, 4)) == "3/4"
    for bad in ("0/4", "5/4", "a/b", "", "1/0", "1-4"):
        with pytest.raises(UsageError, match="--shard"):
            Shard.parse(bad)


async def test_shards_on_three_machines_merge_into_the_file_one_run_writes(tmp_path, teacher, sharegpt_60):
    whole = await run_async(run_job(teacher, sharegpt_60, tmp_path / "whole"))
    caches, written = [], Counter()
    for i in (1, 2, 3):
        machine = tmp_path / f"machine{i}"  # each machine keeps the input in its own place
        machine.mkdir()
        data = shutil.copy(sharegpt_60, machine / sharegpt_60.name)
        report = await run_async(run_job(teacher, Path(data), machine, shard=Shard(i, 3)))
        assert report.exit_code == 0 and 0 < report.export.written < 60
        written.update(line for line in (machine / "out.jsonl").read_text().splitlines())
        caches.append(machine / "cache.sqlite")
    assert sum(written.values()) == 60
    result = merge(tmp_path / "merged.sqlite", caches)
    assert result.inputs == 3 and result.runs_added == 1 and result.conversations_added == 60
    assert result.answers_conflicting == 0
    export(tmp_path / "merged.sqlite", tmp_path / "merged.jsonl", open_writer("messages").line)
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "whole" / "out.jsonl").read_bytes()
    assert whole.export.written == 60


async def test_rejects_are_reported_by_one_shard_only(tmp_path, teacher):
    data = tmp_path / "in.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(30)]
    lines += [{"messages": []} for _ in range(9)]  # unusable: rejected by the reader
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rejects = []
    for i in (1, 2):
        report = await run_async(run_job(teacher, data, tmp_path / f"s{i}", shard=Shard(i, 2)))
        rejects.append(report.stats.rejects)
    assert sum(rejects) == 9


async def test_identical_answers_dedupe_and_different_ones_are_counted(tmp_path, teacher):
    await run_async(run_job(teacher, COQA, tmp_path / "a"))
    await run_async(run_job(teacher, COQA, tmp_path / "b"))
    con = sqlite3.connect(tmp_path / "b" / "cache.sqlite")
    (key,) = con.execute("SELECT key FROM responses ORDER BY key LIMIT 1").fetchone()
    con.execute("UPDATE responses SET text = 'another answer' WHERE key = ?", (key,))
    con.commit()
    (answers,) = con.execute("SELECT count(*) FROM responses").fetchone()
    con.close()
    result = merge(tmp_path / "m.sqlite", [tmp_path / "a" / "cache.sqlite", tmp_path / "b" / "cache.sqlite"])
    assert result.answers_added == answers and result.answers_duplicate == answers - 1
    assert result.answers_conflicting == 1 and result.runs_added == 1
    con = sqlite3.connect(tmp_path / "m.sqlite")
    assert con.execute("SELECT text FROM responses WHERE key = ?", (key,)).fetchone()[0] != "another answer"
    con.close()
    assert "1 differed from the answer already there" in result.summary()


async def test_a_failure_answered_by_another_cache_is_dropped(tmp_path, teacher):
    teacher.set_knobs(permanent_marker="Lassiter")  # a name in one CoQA story's questions
    failed = await run_async(run_job(teacher, COQA, tmp_path / "a"))
    assert failed.export.failed > 0
    teacher.set_knobs(permanent_marker=None)
    await run_async(run_job(teacher, COQA, tmp_path / "b"))
    merge(tmp_path / "m.sqlite", [tmp_path / "a" / "cache.sqlite", tmp_path / "b" / "cache.sqlite"])
    con = sqlite3.connect(tmp_path / "m.sqlite")
    assert con.execute("SELECT count(*) FROM failures").fetchone()[0] == 0
    con.close()
    assert export(tmp_path / "m.sqlite", tmp_path / "m.jsonl", open_writer("messages").line).written == 10


async def test_caches_that_read_different_inputs_are_not_mixed(tmp_path, teacher, sharegpt_60):
    for name, source in (("a", COQA), ("b", sharegpt_60)):
        (tmp_path / name).mkdir()
        shutil.copy(source, tmp_path / name / "data.json")  # same name, same settings, other content
        await run_async(run_job(teacher, tmp_path / name / "data.json", tmp_path / name))
    merge(tmp_path / "m.sqlite", [tmp_path / "a" / "cache.sqlite"])
    with pytest.raises(CacheError, match="did not read the same input"):
        merge(tmp_path / "m.sqlite", [tmp_path / "b" / "cache.sqlite"])
    con = sqlite3.connect(tmp_path / "m.sqlite")
    assert con.execute("SELECT count(*) FROM conversations").fetchone()[0] == 10  # b's were rolled back
    con.close()


async def test_merge_refuses_what_it_cannot_merge_safely(tmp_path, teacher):
    await run_async(run_job(teacher, COQA, tmp_path / "a"))
    cache = tmp_path / "a" / "cache.sqlite"
    with pytest.raises(UsageError, match="both the output and an input"):
        merge(cache, [cache])
    with pytest.raises(CacheError, match="does not exist"):
        merge(tmp_path / "m.sqlite", [tmp_path / "nope.sqlite"])
    lock = RunLock(cache)
    lock.acquire()
    try:
        with pytest.raises(CacheError, match="in use by another distill run"):
            merge(tmp_path / "m.sqlite", [cache])
    finally:
        lock.release()
    con = sqlite3.connect(cache)
    con.execute(
        "INSERT INTO batches VALUES ('part.jsonl', 'r', 'together', 3, 'file-1', 'batch-1', 'submitted', 0, 0)"
    )
    con.commit()
    con.close()
    with pytest.raises(CacheError, match="in flight"):
        merge(tmp_path / "m.sqlite", [cache])


async def test_merge_from_the_command_line(tmp_path, teacher, capsys):
    await run_async(run_job(teacher, COQA, tmp_path / "a", shard=Shard(1, 2)))
    await run_async(run_job(teacher, COQA, tmp_path / "b", shard=Shard(2, 2)))
    parser = argparse.ArgumentParser(prog="distill")
    merge_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "merge",
            str(tmp_path / "m.sqlite"),
            str(tmp_path / "a" / "cache.sqlite"),
            str(tmp_path / "b" / "cache.sqlite"),
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "merged 2 cache(s)" in out and "conversations: 10 added" in out
    records = list(open_reader(COQA).read(COQA))
    assert export(tmp_path / "m.sqlite", tmp_path / "m.jsonl", open_writer("messages").line).written == len(
        records
    )


async def test_a_run_already_in_the_output_keeps_its_id_over_a_namesake(tmp_path, teacher):
    """Inputs of the same name and settings are one run to merge, unless the output holds the exact run (a cluster
    run's driver records its run before merging its shards)."""
    first, second = tmp_path / "a" / "data.jsonl", tmp_path / "b" / "data.jsonl"
    for path, text in ((first, "one"), (second, "two")):
        path.parent.mkdir()
        path.write_text(json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n")
    await run_async(run_job(teacher, first, tmp_path / "older"))
    newer = await run_async(run_job(teacher, second, tmp_path / "newer"))
    out = Path(shutil.copy(tmp_path / "older" / "cache.sqlite", tmp_path / "out.sqlite"))
    columns = "id, input, settings, created, updated"
    with closing(sqlite3.connect(out)) as conn, conn:
        conn.execute("ATTACH DATABASE ? AS newer", (str(tmp_path / "newer" / "cache.sqlite"),))
        conn.execute(f"INSERT INTO runs ({columns}) SELECT {columns} FROM newer.runs")
    merge(out, [tmp_path / "newer" / "cache.sqlite"])
    export(out, tmp_path / "out.jsonl", open_writer("messages").line, run_id=newer.run_id)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "newer" / "out.jsonl").read_bytes()
