"""``distill view`` driven in a real headless Chromium (Selenium), over a cache a real ``distill run`` made.

The run goes against the bundled teacher in its own process: it throttles some requests (429s for the chart),
refuses one conversation for good (422, for the failures page), cuts long answers at ``--max-tokens``; the
input has a record whose text is ``<script>alert(1)</script>`` and two records the reader rejects. The viewer is
started by the real command (``distill view --port 0 --no-browser``). Each page's screenshot is saved in the
test's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import DISTILL, run_command

from distill.servers.teacher import TeacherKnobs, start_teacher_process

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]

SCRIPT = "<script>alert(1)</script>"
HOSTILE_ANSWER = '<img src=x onerror="alert(2)"> & </td></tr></table>'
LONG_QUESTION = "Please explain, in as many words as you can, why the sky looks blue on a clear afternoon"


def input_records() -> list[str]:
    records = [
        {"id": "alpha", "messages": [
            {"role": "user", "content": "What does a zanzibarian lighthouse keeper eat?"},
            {"role": "assistant", "content": "Mostly fish, says the dataset."},
            {"role": "user", "content": LONG_QUESTION},
            {"role": "assistant", "content": "Rayleigh scattering, says the dataset."},
        ]},
        {"id": "xss", "messages": [
            {"role": "user", "content": SCRIPT},
            {"role": "assistant", "content": HOSTILE_ANSWER},
        ]},
        {"id": "refused", "messages": [{"role": "user", "content": "please REFUSE this one"}]},
    ]  # fmt: skip
    records += [
        {"id": f"filler-{i}", "messages": [{"role": "user", "content": f"filler question number {i}"}]}
        for i in range(20)
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(3, '{"id": "broken", "messages": [')  # not JSON: rejected with its file:line
    lines.insert(5, json.dumps({"id": "empty", "messages": []}))
    return lines


@pytest.fixture(scope="module")
def run_cache(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("view")
    data = tmp / "input.jsonl"
    data.write_text("\n".join(input_records()) + "\n", encoding="utf-8")
    knobs = TeacherKnobs(
        permanent_marker="REFUSE", permanent_status=422, throttle_rate=0.12, throttle_retry_after=0.01,
        answer_words=8,
    )  # fmt: skip
    with start_teacher_process(knobs) as teacher:
        cache, output = tmp / "cache.sqlite", tmp / "out.jsonl"
        command = run_command(
            teacher, data, cache, output, "--quiet", "--max-tokens", "24", "--concurrency", "4"
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # the refused conversation failed; everything else was written
    answers = {}
    for line in output.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        answers[record["messages"][0]["content"]] = [m["content"] for m in record["messages"][1::2]]
    return {"cache": cache, "answers": answers, "tmp": tmp}


@contextlib.contextmanager
def serving(cache: Path) -> Iterator[str]:
    """``distill view`` over ``cache`` as a user starts it, on a free port; yields its address."""
    process = subprocess.Popen(
        [*DISTILL, "view", "--cache", str(cache), "--port", "0", "--no-browser"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert match, line + process.stderr.read()
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def viewer(run_cache):
    with serving(run_cache["cache"]) as address:
        yield address


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """A Selenium driver of a headless Chromium, quit on leaving."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(2)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


def no_alert(driver) -> bool:
    try:
        return driver.switch_to.alert is None
    except NoAlertPresentException:
        return True


def shot(driver, run_cache, name: str) -> Path:
    path = run_cache["tmp"] / f"{name}.png"
    assert driver.save_screenshot(str(path))
    return path


def submit(driver, button) -> None:
    """Click ``button`` and wait until the next page has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "main")
    button.click()
    WebDriverWait(driver, 10).until(lambda _: replaced(page))


def replaced(element) -> bool:
    """Whether ``element``'s page is gone. Mid-navigation chromedriver may answer "does not belong to the
    document" as an unknown error instead of a stale element (seen in CI): that too means the page was replaced."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise
    return False


def open_run(driver, viewer) -> str:
    driver.get(viewer)
    link = driver.find_element(By.CSS_SELECTOR, "table.run th a")
    run_id = link.text
    submit(driver, link)
    return run_id


def rows_of(driver, table: str) -> list[list[str]]:
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tr")[1:]
    ]


def test_runs_page_shows_the_run(browser, viewer, run_cache):
    browser.get(viewer)
    text = browser.find_element(By.CSS_SELECTOR, "table.run").text
    assert "teacher" in text and "input.jsonl" in text
    assert "1 failed" in text and "2 rejected records" in text
    shot(browser, run_cache, "runs")


def test_the_list_shows_the_runs_conversations_and_search_finds_one(browser, viewer, run_cache):
    open_run(browser, viewer)
    ids = [row[1] for row in rows_of(browser, "conversations")]
    assert ids[:3] == ["alpha", "xss", "refused"] and len(ids) == 23
    shot(browser, run_cache, "conversations")
    browser.find_element(By.NAME, "q").send_keys("zanzibarian")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert [row[1] for row in rows_of(browser, "conversations")] == ["alpha"]
    browser.find_element(By.NAME, "failed").click()
    browser.find_element(By.NAME, "q").clear()
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert [row[1] for row in rows_of(browser, "conversations")] == ["refused"]
    shot(browser, run_cache, "conversations-failed")
    browser.find_element(By.NAME, "rejected").click()
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert [row[0] for row in rows_of(browser, "rejects")] == ["input.jsonl:4", "input.jsonl:6"]


def test_side_by_side_shows_both_answers_and_a_length_cut(browser, viewer, run_cache):
    open_run(browser, viewer)
    submit(browser, browser.find_element(By.LINK_TEXT, "alpha"))
    originals = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".answer.original .text")]
    teachers = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".answer.teacher > .text")]
    assert originals == ["Mostly fish, says the dataset.", "Rayleigh scattering, says the dataset."]
    assert teachers == run_cache["answers"]["What does a zanzibarian lighthouse keeper eat?"]
    meta = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".answer.teacher .meta")]
    assert "length (cut)" in " ".join(meta) and "completion tokens" in meta[0] and "latency" in meta[0]
    assert "cache key" in " ".join(meta)
    shot(browser, run_cache, "conversation")


def test_a_failed_request_appears_under_failures(browser, viewer, run_cache):
    run_id = open_run(browser, viewer)
    browser.get(f"{viewer}runs/{run_id}/failures")
    [failed] = rows_of(browser, "failures")
    assert failed[0] == "refused" and failed[2] == "422" and "422" in failed[3] and failed[4] == "1"
    rejects = rows_of(browser, "rejects")
    assert [r[0] for r in rejects] == ["input.jsonl:4", "input.jsonl:6"]
    shot(browser, run_cache, "failures")
    submit(browser, browser.find_element(By.LINK_TEXT, "refused"))
    assert "failed (422)" in browser.find_element(By.CSS_SELECTOR, ".answer.teacher").text


def test_hostile_text_renders_as_text(browser, viewer, run_cache):
    run_id = open_run(browser, viewer)
    [row] = [r for r in rows_of(browser, "conversations") if r[1] == "xss"]
    assert row[3] == SCRIPT
    browser.get(f"{viewer}runs/{run_id}/conversations/1")
    assert browser.find_element(By.CSS_SELECTOR, ".turn .user .text").text == SCRIPT
    assert browser.find_element(By.CSS_SELECTOR, ".answer.original .text").text == HOSTILE_ANSWER
    assert SCRIPT in browser.find_element(By.CSS_SELECTOR, ".answer.teacher > .text").text
    count = "return document.querySelectorAll('script, img, [onerror]').length"
    assert browser.execute_script(count) == 0
    assert no_alert(browser)
    browser.get(f"{viewer}runs/{run_id}/conversations?q=alert")
    assert [r[1] for r in rows_of(browser, "conversations")] == ["xss"] and no_alert(browser)
    shot(browser, run_cache, "hostile")


def test_charts_show_429s_and_finish_reasons(browser, viewer, run_cache):
    with sqlite3.connect(run_cache["cache"]) as conn:
        limited = conn.execute("SELECT count(*) FROM attempts WHERE status = 429").fetchone()[0]
    conn.close()
    assert limited > 0  # the teacher throttled some attempts; the engine retried them
    run_id = open_run(browser, viewer)
    browser.get(f"{viewer}runs/{run_id}/charts")
    titles = [e.text for e in browser.find_elements(By.TAG_NAME, "figcaption")]
    assert titles == [
        "Tokens per turn", "Tokens per conversation", "Finish reasons", "Requests over time", "Cost accumulating",
        "Rate over time",
    ]  # fmt: skip
    assert "this run's" in browser.find_element(By.ID, "scope").text
    learned = browser.find_element(By.ID, "limits").find_element(By.XPATH, "following-sibling::p").text
    assert "observation windows" in learned and "rate limited (429)" in learned
    assert browser.find_elements(By.CSS_SELECTOR, "rect.limited")
    assert browser.find_elements(By.CSS_SELECTOR, "rect.cut")
    assert browser.find_elements(By.CSS_SELECTOR, "polyline")
    shot(browser, run_cache, "charts")
