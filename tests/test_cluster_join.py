"""Issue 14: ``distill run --ray HOST:PORT`` joins a Ray cluster that ``ray start --head`` started (its own processes).

The head runs in its own session, with token authentication (Ray's default for a cluster ``ray start`` starts);
distill's driver joins it with ``RAY_AUTH_MODE=token`` and the token in Ray's default place, as on a real cluster:
the token is made by ``ray get-auth-token --generate`` in a home of the test's own (``ray start`` makes none, and
a fresh machine has none), so the user's ``~/.ray`` is neither needed nor touched. At the end the head's whole
session (every process Ray started for it) is stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest
from support import run_command, write_multi_turn

from distill.servers.teacher import TeacherKnobs, start_teacher_process

pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_session(head: subprocess.Popen) -> None:
    """Stop ``ray start`` and every process of its session (gcs, raylet, workers): all started by this test."""
    head.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(15)


def test_a_run_joins_a_cluster_started_with_ray_start(tmp_path):
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "HOME": str(home)}
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    assert (home / ".ray" / "auth_token").is_file()
    # its own temp dir (short: Ray's socket paths must fit): `ray start` leaves the address of its cluster there,
    # where any ray.init() on this machine would otherwise find it (and try to join it once it is gone)
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp), "--block"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        said: list[str] = []
        for line in head.stdout:  # type: ignore[union-attr]
            said.append(line)
            if "--block" in line or time.monotonic() > deadline:
                break
        assert head.poll() is None, "ray start --head exited:\n" + "".join(said)
        data = write_multi_turn(tmp_path / "in.jsonl", 50, 2)
        with start_teacher_process(TeacherKnobs(latency=0.02)) as server:
            command = run_command(
                server, data, tmp_path / "c.sqlite", tmp_path / "o.jsonl", "--ray", f"127.0.0.1:{port}",
                "--shards", "2",
            )  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            stats = server.stats(with_hashes=False)
    finally:
        stop_session(head)
        shutil.rmtree(temp, ignore_errors=True)
    assert (
        not Path("/tmp/ray/ray_current_cluster").exists()
        or str(port) not in Path("/tmp/ray/ray_current_cluster").read_text()
    )
    assert done.returncode == 0, done.stderr
    assert "50 conversations = 50 written + 0 failed" in done.stderr
    assert stats["answered"] == stats["requests"] == 100
    report = orjson.loads((tmp_path / "c.sqlite.shards" / "cluster-report.json").read_bytes())
    assert len(report["nodes"]) == 2 and report["restarts"] == 0
