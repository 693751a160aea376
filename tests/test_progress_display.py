"""The progress display (issue 13, item 9): a smoothed ETA that does not count cached conversations as work, the
limit that binds, every counter of RunStats, a library that prints nothing, and the real CLI on a terminal."""

from __future__ import annotations

import dataclasses
import io
import os
import pty
import re
import select
import signal
import subprocess
import time

from support import FakeClock, run_command, write_multi_turn

from distill.progress import Eta, LimitWatch, RunObserver, other_counters, status_line
from distill.progress_bar import ProgressBar, _View
from distill.runner import RunJob, run_async
from distill.servers.teacher import TeacherKnobs, start_teacher_process
from distill.settings import RunSettings
from distill.stats import RunStats


def test_the_eta_leaves_out_cached_conversations_and_does_not_jump():
    clock = FakeClock()
    eta = Eta(clock, time_constant=30.0)
    stats = RunStats(total_expected=1000)
    assert eta.update(stats) is None
    stats.conversations_done = stats.conversations_cached = 500  # found whole in the cache: no work, no rate
    clock.now = 1.0
    assert eta.update(stats) is None
    for _ in range(10):  # then 10 conversations a second
        clock.now += 1.0
        stats.conversations_done += 10
        eta.update(stats)
    assert eta.seconds_left(stats) == 400 / 10
    clock.now += 1.0
    stats.conversations_done += 100  # a burst of ten times the rate moves the estimate by a fraction only
    left = eta.update(stats)
    assert 300 / 14 < left < 300 / 10


def test_the_limit_that_binds_is_the_one_that_made_requests_wait_lately():
    watch, stats = LimitWatch(), RunStats()
    assert watch.update(stats) is None
    stats.waits = {"rpm": 50, "concurrency": 3}
    assert watch.update(stats) == "RPM"
    stats.waits = {"rpm": 51, "concurrency": 40, "tpm": 2}
    assert watch.update(stats) == "concurrency"
    stats.requests_sent = (
        10  # sent without waiting for any limit: the cap in flight (and latency) set the pace
    )
    assert watch.update(stats) == "concurrency"
    assert watch.update(stats) is None  # nothing sent, nothing waited


def test_counters_added_to_run_stats_later_are_shown_without_touching_the_display():
    Later = dataclasses.make_dataclass(
        "Later", [("learned_rpm", float, 512.5), ("answered_503", int, 7)], bases=(RunStats,)
    )
    stats = Later(retries=2)
    assert ("learned rpm", 512.5) in other_counters(stats) and ("answered 503", 7) in other_counters(stats)
    assert "learned rpm 512.5" in status_line(stats) and "answered 503 7" in status_line(stats)
    out = io.StringIO()
    ProgressBar(out, force_terminal=True).console.print(_View(stats))
    assert "learned rpm 512.5" in out.getvalue() and "retries 2" in out.getvalue()


def test_the_bar_shows_done_total_rate_eta_failures_cost_and_the_binding_limit():
    stats = RunStats(
        total_expected=200,
        conversations_done=80,
        conversations_cached=30,
        conversations_failed=2,
        cost_usd=0.0123,
        cost_before_usd=0.5,
        budget_usd=2.0,
        waits={"tpm": 9},
    )
    out = io.StringIO()
    bar = ProgressBar(out, force_terminal=True)
    bar.console.width = 200
    bar.console.print(_View(stats))
    text = plain(out.getvalue())
    for part in (
        "82/200 conversations (30 from cache)",
        "req/s",
        "ETA",
        "2 failed",
        "$0.0123 this run, $0.5123 in all of $2.00 budget",
        "held by TPM",
        "━",
    ):
        assert part in text, part


class Notes(RunObserver):
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.started_with: RunStats | None = None

    def started(self, stats: RunStats) -> None:
        self.started_with = stats

    def warn(self, message: str) -> None:
        self.warnings.append(message)


async def test_the_library_prints_nothing_unless_given_an_observer(tmp_path, teacher, capfd):
    data = tmp_path / "in.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n[1]\n')
    settings = RunSettings(model="not-listed", base_url=teacher.base_url)
    job = RunJob(data, tmp_path / "out.jsonl", tmp_path / "c.sqlite", settings, max_reject_share=1.0)
    report = await run_async(job)
    assert capfd.readouterr() == ("", "")
    assert len(report.warnings) == 1 and report.export.written == 1
    notes = Notes()
    job.cache = tmp_path / "fresh.sqlite"  # a run that sends something, so the pre-flight runs
    await run_async(job, notes)
    assert capfd.readouterr() == ("", "")
    assert notes.started_with is not None and notes.started_with.conversations_read == 1
    assert any("not among the 1 models" in w for w in notes.warnings)
    assert any("1 of 2 input records (50.0%) were rejected" in w for w in notes.warnings)


def test_on_a_terminal_the_cli_draws_the_bar_and_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path):
    data = write_multi_turn(tmp_path / "in.jsonl", 200, 2)
    with start_teacher_process(TeacherKnobs(model="teacher", latency=0.05)) as server:
        cmd = run_command(
            server, data, tmp_path / "c.sqlite", tmp_path / "o.jsonl", "--concurrency", "2", "--rpm", "1200"
        )
        primary, secondary = pty.openpty()
        proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
        os.close(secondary)
        screen = _read_until(
            primary, proc, lambda text: "ETA" in text and "from cache" not in text and "held by" in text
        )
        proc.send_signal(signal.SIGINT)
        screen += _read_until(primary, proc, lambda text: False)
        os.close(primary)
    screen = plain(screen)
    assert proc.wait(10) == 130
    assert "━" in screen and "/200 conversations" in screen and "req/s" in screen and "held by RPM" in screen
    assert "saved    " in screen and f"in the cache {tmp_path / 'c.sqlite'}" in screen
    assert "resume   distill run " in screen and "--concurrency 2" in screen


def plain(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _read_until(fd: int, proc: subprocess.Popen, done, timeout: float = 60.0) -> str:
    """What the process wrote to the terminal until ``done(text)`` or its end."""
    text, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            text += chunk
            if done(text.decode("utf-8", "replace")):
                break
        elif proc.poll() is not None:
            break
    return text.decode("utf-8", "replace")


def test_the_limiter_says_which_limit_made_a_request_wait():
    from distill.limiter import RateLimiter

    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=600, headroom=1.0, clock=clock)
    limiter.reserve(5)
    assert limiter.held_by is None  # the first request goes at once
    limiter.reserve(5)
    assert limiter.held_by == "rpm"  # one a second: the next waits for the request budget
    clock.now = 10.0
    limiter.reserve(500)
    limiter.reserve(5)
    assert limiter.held_by == "tpm"  # 500 tokens at 10 a second outlast the one-second request spacing
    limiter.on_rate_limited(retry_after=100.0)
    limiter.reserve(5)
    assert limiter.held_by == "pause"
