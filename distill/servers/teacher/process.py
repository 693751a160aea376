"""The local teacher in a process of its own: serving until a signal, and a handle to start one from Python.

``python -m distill.servers.teacher --port 0 --port-file F [knob flags]`` (the same as ``distill teacher serve``)
binds, writes the port to ``F`` and serves until SIGTERM or SIGINT. :func:`start_teacher_process` runs that in
a subprocess and returns a :class:`TeacherProcess` handle, so the engine and the teacher do not share a core's
event loop in benchmarks and the teacher's counters survive the engine being killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from distill.errors import DistillError, UsageError

from .app import HOST, LoopbackAddress, TeacherServer
from .knobs import KNOBS_ENV, TeacherKnobs, add_knob_arguments, knobs_from_args

LOOPS = ("auto", "asyncio", "uvloop")
PARENT_ENV = "DISTILL_TEACHER_PARENT_PID"


class TeacherProcessError(DistillError):
    """The teacher subprocess failed to start or to answer its control routes."""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``distill teacher serve``: where to listen, and every knob."""
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file once serving")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: uvloop when installed (auto), or plain asyncio",
    )
    add_knob_arguments(parser)


def serve_from_args(args: argparse.Namespace) -> int:
    """Run the server that parsed ``args`` describe until SIGTERM or SIGINT; return the exit status."""
    knobs = knobs_from_args(args)
    _die_with_parent()
    coroutine = serve(knobs, port=args.port, port_file=args.port_file)
    loop_factory = _loop_factory(args.loop)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(coroutine)
    parent = os.environ.get(PARENT_ENV)
    if parent is not None and args.port_file is not None and os.getppid() != int(parent):
        shutil.rmtree(args.port_file.parent, ignore_errors=True)  # the helper that made it is gone
    return 0


def _loop_factory(loop: str) -> Any:
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise UsageError("--loop uvloop needs the uvloop package: pip install uvloop") from None
        return None
    return uvloop.new_event_loop


async def serve(knobs: TeacherKnobs, *, port: int = 0, port_file: Path | None = None) -> None:
    """Serve ``knobs`` on ``port`` until SIGTERM or SIGINT; announce the URL on stdout and in ``port_file``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = TeacherServer(knobs, port=port)
    try:
        await server.start()
    except OSError as e:
        raise UsageError(
            f"cannot listen on {HOST}:{port}: {e.strerror}; pick another --port (0 picks a free one)"
        ) from None
    try:
        if port_file is not None:
            partial = port_file.with_name(port_file.name + ".partial")
            partial.write_text(f"{server.port}\n")
            partial.replace(port_file)
        print(f"distill teacher: serving {server.base_url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


class TeacherProcess(LoopbackAddress):
    """A teacher subprocess started by :func:`start_teacher_process`; a context manager that stops it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, stderr_path: Path) -> None:
        self.process = process
        self.port = port
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self, *, with_hashes: bool = True) -> dict[str, Any]:
        """The server's ``GET /stats``."""
        return self._call("GET", "/stats" if with_hashes else "/stats?hashes=0")

    def reset_stats(self) -> None:
        """Zero the server's counters."""
        self._call("POST", "/stats/reset", b"")

    def set_knobs(self, **changes: Any) -> TeacherKnobs:
        """Change knobs of the running server by name; return the knobs now in force."""
        return TeacherKnobs.from_dict(self._call("POST", "/knobs", orjson.dumps(changes)))

    def _call(self, method: str, path: str, data: bytes | None = None) -> Any:
        request = urllib.request.Request(self.root_url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return orjson.loads(response.read())
        except OSError as e:
            raise TeacherProcessError(
                f"the teacher process at {self.root_url} did not answer {path}: {e}"
            ) from None

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM the server, SIGKILL it if it has not exited within ``timeout`` s; return its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.stderr_path.unlink()
            self.stderr_path.parent.rmdir()
        return self.process.returncode

    def __enter__(self) -> TeacherProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_teacher_process(
    knobs: TeacherKnobs | None = None,
    *,
    port: int = 0,
    loop: str = "auto",
    timeout: float = 30.0,
    python: str = sys.executable,
) -> TeacherProcess:
    """Start ``python -m distill.servers.teacher`` with ``knobs`` and wait until it serves.

    The subprocess dies with this one (Linux) and is stopped by :meth:`TeacherProcess.stop` or on leaving a
    ``with`` block. Raises :class:`TeacherProcessError` with the server's stderr when it fails to start.
    """
    knobs = knobs or TeacherKnobs()
    workdir = Path(tempfile.mkdtemp(prefix="distill-teacher-"))
    port_file, stderr_path = workdir / "port", workdir / "stderr"
    command = [python, "-m", "distill.servers.teacher", "--port", str(port), "--port-file", str(port_file)]
    # Knobs travel in the environment, not argv, so a configured api_key does not show in ps.
    env = {**os.environ, KNOBS_ENV: orjson.dumps(knobs.to_dict()).decode(), PARENT_ENV: str(os.getpid())}
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--loop", loop],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            detail = stderr_path.read_text(errors="replace").strip()[-2000:] or "(no output)"
            shutil.rmtree(workdir, ignore_errors=True)
            raise TeacherProcessError(f"the teacher process did not come up within {timeout:g} s: {detail}")
        time.sleep(0.02)
    served = TeacherProcess(process, int(port_file.read_text()), stderr_path)
    port_file.unlink()
    return served


def _die_with_parent() -> None:
    """When started by :func:`start_teacher_process`, exit with that process (Linux), never outlive it."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
