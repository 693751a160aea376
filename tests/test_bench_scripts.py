"""Every benchmark script runs at its tiny size, so none of them can rot (the figures are not judged here).

What is checked is what must hold at any size: each script reports its rows, the teacher received exactly the
requests it should (nothing sent twice, nothing sent for a finished conversation), every run completed, and
``bench.run_all`` turns rows into the Markdown table.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

# bench/ is not an installed package: pytest puts the repository root on the path (pyproject's pythonpath)
from bench import (
    adaptive_rate,
    cpu_per_request,
    curator,
    engine_overhead,
    export_speed,
    latency,
    memory,
    peer_rate,
    process_share,
    rate_limit,
    resume,
    run_all,
    throughput,
    view_list,
)


def rows_of(module, tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / f"{module.__name__}.json"
    assert module.main(["--tiny", "--json", str(out), *extra]) == 0
    return orjson.loads(out.read_bytes())


def test_throughput_sends_each_request_once(tmp_path):
    single, multi = rows_of(throughput, tmp_path)
    for row, expected in ((single, 300), (multi, 200)):
        assert row["detail"]["expected_requests"] == expected
        assert [run["received"] for run in row["detail"]["runs"]] == [expected]
        assert row["figure"] > 0 and row["reference"] > 0 and row["ratio"] > 0


def test_cpu_per_request_measures_every_rung(tmp_path):
    client, engine = rows_of(cpu_per_request, tmp_path)
    for row in (client, engine):
        assert row["figure"] > 0 and row["reference"] > 0 and row["ratio"] > 0
        assert set(row["detail"]["us_per_request"]) == {"bare aiohttp loop", "TeacherClient.send", "engine"}


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists(), reason="Linux's /proc schedstat"
)
def test_process_share_separates_each_process_cpu_and_the_loops_wait(tmp_path):
    out = tmp_path / "share.json"
    assert process_share.main(["--tiny", "--json", str(out)]) == 0
    result = orjson.loads(out.read_bytes())
    for side, roles in (("bare", {"loop", "teacher"}), ("distill", {"loop", "writer", "teacher"})):
        summary = result[side]
        assert roles <= set(summary["us_per_request"]), side
        assert summary["per_second"] > 0 and summary["us_per_request"]["loop"]["user"] > 0
        loop = summary["time_shares"]["loop"]
        assert (
            0 < loop["on_cpu"] <= 1.05
            and 0 <= loop["waiting"] <= 1.05
            and "teacher" in summary["time_shares"]
        )
        assert [r["client"] for r in summary["rounds"]] == [
            "bare aiohttp loop" if side == "bare" else "distill run"
        ]


def test_engine_overhead_answers_every_request_without_a_network(capsys):
    assert engine_overhead.main(["--conversations", "100", "--turns", "2", "--rounds", "1"]) == 0
    assert "200 requests, 2 turn(s) each: " in capsys.readouterr().out


def test_rate_limit_answers_everything_under_both_limits(tmp_path):
    requests, tokens = rows_of(rate_limit, tmp_path)
    assert requests["detail"]["answered"] == 60 and tokens["detail"]["answered"] == 60
    assert 0 < requests["figure"] < 1.2 and 0 < tokens["figure"] < 1.2


def test_latency_keeps_the_teacher_full(tmp_path):
    (row,) = rows_of(latency, tmp_path)
    assert row["detail"]["answered"] == 96
    assert row["detail"]["max_in_flight_at_teacher"] == 32


def test_resume_sends_only_the_new_conversations(tmp_path):
    (row,) = rows_of(resume, tmp_path)
    assert row["detail"]["teacher_received"] == row["detail"]["expected"] == 20
    assert 0 < row["figure"] < 30


def test_memory_reports_both_peaks(tmp_path):
    (row,) = rows_of(memory, tmp_path)
    assert row["detail"]["teacher_received"] == 500
    assert 20 < row["figure"] < 1000 and 20 < row["reference"] < 1000


def test_export_writes_every_conversation(tmp_path):
    (row,) = rows_of(export_speed, tmp_path)
    assert row["detail"]["written"] == 200 and row["figure"] > 0


def test_curator_without_its_interpreter_is_skipped(tmp_path, capsys):
    assert rows_of(curator, tmp_path, "--curator-python", str(tmp_path / "no-python")) == []
    assert "[SKIP] Bespoke Curator" in capsys.readouterr().out


@pytest.mark.skipif(not os.environ.get("CURATOR_PYTHON"), reason="set CURATOR_PYTHON to run the peer")
def test_curator_runs_when_installed(tmp_path):
    peer_throughput, peer_rate = rows_of(curator, tmp_path)
    assert peer_throughput["detail"]["answered"] == 100 and peer_rate["detail"]["answered"] == 60


@pytest.mark.slow  # four runs (six with Curator), each with its own teacher: about 6 s (16 s with Curator)
def test_peer_rate_delivers_every_prompt_in_both_cases(tmp_path):
    """Curator's rows run only where ``CURATOR_PYTHON`` names its interpreter; distill's and the loop's always."""
    curator_python = os.environ.get("CURATOR_PYTHON") or str(tmp_path / "no-python")
    rows = rows_of(peer_rate, tmp_path, "--curator-python", curator_python)
    assert len(rows) == (6 if os.environ.get("CURATOR_PYTHON") else 4)
    for row in rows:
        assert row["detail"]["delivered"] == row["detail"]["prompts"] and row["detail"]["lost"] == 0
        assert row["detail"]["requests_received"] >= row["detail"]["prompts"] and row["figure"] >= 0
    assert [row["detail"]["exit"] for row in rows if "distill" in row["case"]] == [0, 0]


def test_run_all_writes_the_table_and_keeps_what_was_written_by_hand(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(
        f"# Benchmarks\n\n| 1 throughput | an old row |\n\n{run_all.HAND_WRITTEN}\n\n## Issue 99\n\nnotes\n"
    )
    assert run_all.main(["--tiny", "--only", "export_speed", "--output", str(out)]) == 0
    text = out.read_text()
    assert "| 6 export |" in text and "nproc" not in text and "cores" in text
    assert "Command: `python -m bench.run_all --tiny`" in text
    assert "an old row" not in text and text.endswith(f"{run_all.HAND_WRITTEN}\n\n## Issue 99\n\nnotes\n")


@pytest.mark.slow  # eight runs, each with its own teacher process: about 35 s
def test_adaptive_rate_answers_everything_in_every_case(tmp_path):
    rows = rows_of(adaptive_rate, tmp_path)
    assert len(rows) == 8
    for row in rows:
        assert row["detail"].get("answered", 1) > 0 and row["figure"] >= 0


def test_view_list_pages_a_filled_cache(tmp_path):
    [row] = rows_of(view_list, tmp_path)
    assert row["detail"]["median_ms"]["first page"] > 0 and row["reference"] > 0
