"""What every benchmark shares: the machine, synthetic inputs, the baseline client, timed ``distill run``s.

A benchmark measures our figure and the baseline's side by side in the same process run, so the ratio holds
even on a noisy machine where the absolute numbers do not. Inputs are generated into a temporary directory and
removed afterwards; nothing large is ever written into the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from distill.servers.teacher import TeacherKnobs, TeacherProcess, start_teacher_process
from distill.servers.teacher.loadgen import plain_client_load

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench-teacher"


@dataclass(slots=True)
class Result:
    """One row of the benchmark table: our figure, the reference it is compared with, and the verdict."""

    target: str
    case: str
    figure: float
    unit: str
    reference: float | None
    ratio: float | None
    goal: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def line(self) -> str:
        ratio = f" ratio {self.ratio:.3f}" if self.ratio is not None else ""
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"[{verdict}] {self.target} {self.case}: {self.figure:,.3f} {self.unit}{ratio} (goal {self.goal})"
        )


def machine() -> dict[str, str]:
    """Where the figures were taken: cores, CPU model, Python, OS."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes: ``--tiny`` (the test-suite size) and ``--json PATH``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="a few seconds' run, only to prove the script works")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p


def report(results: list[Result], json_path: Path | None) -> int:
    """Print each result; write them as JSON when asked. Exit status 0: a benchmark reports, it does not gate."""
    for result in results:
        print(result.line(), flush=True)
    if json_path is not None:
        json_path.write_bytes(orjson.dumps([asdict(r) for r in results], option=orjson.OPT_INDENT_2))
    return 0


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory for inputs, caches and outputs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as name:
        yield Path(name)


@contextmanager
def teacher(**knobs: Any) -> Iterator[TeacherProcess]:
    """The local teacher in its own process; usage counted in words (fast), no per-request tables."""
    settings = {"token_counter": "words", "track_hashes": False, "model": MODEL, **knobs}
    with start_teacher_process(TeacherKnobs(**settings)) as served:
        yield served


# -- inputs -------------------------------------------------------------------------------------------------


def question(n: int) -> str:
    return f"Question {n}: in one paragraph, why does the number {n} matter to anyone?"


def write_conversations(path: Path, count: int, turns: int = 1, start: int = 0) -> Path:
    """``count`` messages-JSONL conversations with ``turns`` user turns each (dataset answers between them)."""
    with open(path, "ab") as out:
        lines: list[bytes] = []
        for n in range(start, start + count):
            messages = []
            for t in range(turns):
                if t:
                    messages.append({"role": "assistant", "content": f"An earlier answer {n}.{t}."})
                messages.append({"role": "user", "content": question(n) + (f" (part {t + 1})" if t else "")})
            lines.append(orjson.dumps({"id": f"conv-{n}", "messages": messages}))
            if len(lines) >= 10_000:
                out.write(b"\n".join(lines) + b"\n")
                lines = []
        if lines:
            out.write(b"\n".join(lines) + b"\n")
    return path


# -- the baseline -------------------------------------------------------------------------------------------


def baseline_rps(base_url: str, seconds: float, in_flight: int = 64) -> float:
    """Requests/s of a plain aiohttp client loop (one session, ``in_flight`` requests open, no cache)."""
    result = asyncio.run(plain_client_load(base_url, in_flight=in_flight, seconds=seconds, model=MODEL))
    return result.rps


def interleaved(
    measure: Callable[[], float], baseline: Callable[[], float], rounds: int
) -> tuple[list[float], list[float], float]:
    """Baseline, ours, baseline, ours, ..., baseline: each of ours is divided by the mean of its neighbours.

    Returns our figures, the baseline figures and the median of those ratios, so that a burst of load from
    elsewhere on the machine moves both sides of a ratio alike.
    """
    ours: list[float] = []
    base = [baseline()]
    ratios: list[float] = []
    for _ in range(rounds):
        ours.append(measure())
        base.append(baseline())
        ratios.append(ours[-1] / statistics.mean(base[-2:]))
    return ours, base, statistics.median(ratios)


# -- running distill ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Completed:
    """A finished command: exit status, wall seconds, peak RSS in MB, and its stderr."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    stderr: str


def distill_command(input_path: Path, output: Path, cache: Path, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill",
        "run",
        str(input_path),
        "--output",
        str(output),
        "--cache",
        str(cache),
        "--model",
        MODEL,
        "--base-url",
        base_url,
        "--quiet",
        *extra,
    ]


def shown(command: list[str]) -> str:
    """A command as the table shows it: the interpreter and temporary paths shortened."""
    parts = ["distill" if part == sys.executable else part for part in command]
    text = " ".join(parts).replace("distill -m distill", "distill")
    return text.replace(tempfile.gettempdir() + "/", "$TMP/")


def run_command(command: list[str], on_start: Callable[[], None] | None = None) -> Completed:
    """Run ``command``; measure its wall time and peak RSS (``wait4``'s ``ru_maxrss``) exactly."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        if on_start is not None:
            on_start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Completed(process.returncode, seconds, usage.ru_maxrss / 1024.0, text)


def check_completed(done: Completed, what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed with exit status {done.returncode}:\n{done.stderr[-3000:]}")


class RequestClock:
    """Polls the teacher's request count from a thread: when the first request came, and when the last did.

    The window between them (to within two polls) is how long the run was sending, whatever its start-up and
    export cost; rates over it are what the teacher saw.
    """

    def __init__(self, served: TeacherProcess, interval: float = 0.01) -> None:
        self.served = served
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> RequestClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            stats = self.served.stats(with_hashes=False)
            self.samples.append((time.perf_counter(), stats["requests"], stats["answered"]))
            time.sleep(self.interval)

    def first_request_at(self) -> float | None:
        return next((t for t, n, _ in self.samples if n > 0), None)

    def window(self, until: str = "requests") -> tuple[float, int]:
        """Seconds from the first request to the last one (or to the last answer), and that final count."""
        column = 1 if until == "requests" else 2
        first = self.first_request_at()
        final = self.samples[-1][column] if self.samples else 0
        last = next((sample[0] for sample in self.samples if sample[column] >= final), None)
        if first is None or last is None or last <= first:
            return 0.0, final
        return last - first, final
