"""``distill view`` after a ``distill run --batch``: every page as useful as after a live run (issue 15).

The batch run goes through the real CLI against the bundled teacher's Together Batch API (in its own process),
over the input of ``test_view_browser``: a conversation the teacher refuses for good (422 in the batch's error
file), two records the reader rejects, a two-turn conversation whose second turn is cut at ``--max-tokens``.
A live run over another input then writes into the same cache, so each run's page must show its own charts.
The pages are read in headless Chromium (the fixtures and helpers of ``test_view_browser``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from support import run_command
from test_view_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    headless_chromium,
    input_records,
    rows_of,
    serving,
    shot,
    submit,
)

from distill.servers.teacher import TeacherKnobs, start_teacher_process

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]
LIVE_QUESTIONS = 5


@pytest.fixture(scope="module")
def batch_cache(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("viewbatch")
    data, other = tmp / "input.jsonl", tmp / "other.jsonl"
    data.write_text("\n".join(input_records()) + "\n", encoding="utf-8")
    other.write_text(
        "".join(
            json.dumps({"id": f"live-{i}", "messages": [{"role": "user", "content": f"live question {i}"}]})
            + "\n"
            for i in range(LIVE_QUESTIONS)
        ),
        encoding="utf-8",
    )
    knobs = TeacherKnobs(permanent_marker="REFUSE", permanent_status=422, answer_words=8)
    cache = tmp / "cache.sqlite"
    env = {**os.environ, "TOGETHER_API_KEY": "test-key"}
    with start_teacher_process(knobs) as teacher:
        batch = run_command(teacher, data, cache, tmp / "out.jsonl", "--max-tokens", "24")
        batch += ["--batch", "together", "--batch-poll", "0.05"]
        done = subprocess.run(batch, capture_output=True, text=True, timeout=120, env=env)
        # the refused conversation failed; everything else was written
        assert done.returncode == 1 and "\nrequests " in done.stderr, done.stderr
        assert "requests/min" not in done.stderr  # a Batch API is not paced by a rate: none is shown
        live = run_command(teacher, other, cache, tmp / "live.jsonl", "--quiet")
        done = subprocess.run(live, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    return {"cache": cache, "tmp": tmp}


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def viewer(batch_cache):
    with serving(batch_cache["cache"]) as address:
        yield address


def open_batch_run(driver, viewer) -> str:
    driver.get(viewer)
    link = driver.find_elements(By.CSS_SELECTOR, "table.run th a")[0]  # runs in the order they started
    run_id = link.text
    submit(driver, link)
    return run_id


def bar_total(driver, figure: int) -> int:
    """The sum of the counts in the tooltips of one chart's bars (``HH:MM:SS: N answered``)."""
    titles = driver.find_elements(By.TAG_NAME, "figure")[figure].find_elements(By.CSS_SELECTOR, "rect title")
    return sum(int(t.get_attribute("textContent").rsplit(": ", 1)[1].split()[0]) for t in titles)


def test_the_runs_page_counts_a_batch_runs_conversations(browser, viewer, batch_cache):
    browser.get(viewer)
    batch_run, live_run = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "table.run")]
    assert "input.jsonl" in batch_run and "other.jsonl" in live_run
    assert (
        "23 read · 22 finished" in batch_run and "1 failed" in batch_run and "2 rejected records" in batch_run
    )
    tokens = re.search(r"tokens ([\d,]+) prompt · ([\d,]+) completion", batch_run)
    assert tokens and int(tokens.group(1).replace(",", "")) > 0 and int(tokens.group(2).replace(",", "")) > 0
    ended = re.search(r"ended (\S+)", batch_run)
    assert ended and ended.group(1) != "—"
    shot(browser, batch_cache, "batch-runs")


def test_a_batch_answer_shows_its_tokens_and_batch_and_no_made_up_latency(browser, viewer, batch_cache):
    open_batch_run(browser, viewer)
    submit(browser, browser.find_element(By.LINK_TEXT, "alpha"))
    meta = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".answer.teacher .meta")]
    assert "completion tokens" in meta[0] and "length (cut)" in " ".join(meta)
    assert all("in batch batch-" in m and "no per-request latency" in m for m in meta[::2])
    assert not any("latency —" in m for m in meta)
    shot(browser, batch_cache, "batch-conversation")


def test_a_failed_batch_line_appears_under_failures_with_its_status(browser, viewer, batch_cache):
    run_id = open_batch_run(browser, viewer)
    browser.find_element(By.NAME, "failed").click()
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert [row[1] for row in rows_of(browser, "conversations")] == ["refused"]
    browser.get(f"{viewer}runs/{run_id}/failures")
    [failed] = rows_of(browser, "failures")
    assert failed[0] == "refused" and failed[2] == "422" and "REFUSE" in failed[3] and failed[4] == "1"
    assert [r[0] for r in rows_of(browser, "rejects")] == ["input.jsonl:4", "input.jsonl:6"]
    shot(browser, batch_cache, "batch-failures")
    submit(browser, browser.find_element(By.LINK_TEXT, "refused"))
    teacher = browser.find_element(By.CSS_SELECTOR, ".answer.teacher").text
    assert "failed (422)" in teacher and "1 attempts (422) · last in batch batch-" in teacher


def test_each_runs_charts_are_its_own(browser, viewer, batch_cache):
    run_id = open_batch_run(browser, viewer)
    browser.get(f"{viewer}runs/{run_id}/charts")
    assert "this run's" in browser.find_element(By.ID, "scope").text
    requests = bar_total(browser, 3)
    assert requests == 24  # 23 first turns and alpha's second: one line each, none of the live run's
    assert bar_total(browser, 2) == 23  # finish reasons of the 23 answers the batches brought
    assert "Batch API" in browser.find_element(By.ID, "no-windows").text
    shot(browser, batch_cache, "batch-charts")
    browser.get(f"{viewer}charts")
    assert "every run" in browser.find_element(By.ID, "scope").text
    assert bar_total(browser, 3) == requests + LIVE_QUESTIONS and bar_total(browser, 2) == 23 + LIVE_QUESTIONS
    shot(browser, batch_cache, "cache-charts")


def test_the_last_conversation_links_back_but_not_on(browser, viewer, batch_cache):
    run_id = open_batch_run(browser, viewer)
    browser.get(f"{viewer}runs/{run_id}/conversations/22")
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "main > p a")]
    assert links == ["« previous", "in the list"]
    submit(browser, browser.find_element(By.LINK_TEXT, "« previous"))
    assert browser.find_element(By.ID, "conversation-id").text == "filler-18"
