"""``--ray``/``--shards`` flags and what a cluster run refuses, without starting Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main
from distill.cluster import ClusterOptions
from distill.cluster.driver import check_job, connected
from distill.errors import UsageError
from distill.runner import RunJob
from distill.settings import RunSettings
from distill.shard import Shard


def test_shard_caches_go_beside_the_cache_unless_a_directory_is_given(tmp_path):
    options = ClusterOptions(shards=3)
    assert (
        options.shard_cache(tmp_path / "run.sqlite", 2)
        == tmp_path / "run.sqlite.shards" / "run.shard-2-of-3.sqlite"
    )
    shared = ClusterOptions(shards=3, cache_dir=tmp_path / "nfs")
    assert shared.shard_cache(tmp_path / "run.sqlite", 1) == tmp_path / "nfs" / "run.shard-1-of-3.sqlite"
    for bad in ({"shards": 0}, {"address": ""}, {"lease_seconds": 0}):
        with pytest.raises(UsageError):
            ClusterOptions(**bad)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shards", "2"], "--shards needs --ray"),
        (["--cache-dir", "x"], "--cache-dir needs --ray"),
        (["--ray", "local", "--shards", "0"], "--shards must be at least 1"),
    ],
)
def test_cluster_flags_are_checked_before_anything_runs(tmp_path, capsys, flags, message):
    data = tmp_path / "in.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    argv = [
        "run",
        str(data),
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--cache",
        str(tmp_path / "c.sqlite"),
    ]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.sqlite").exists()


def test_a_cluster_run_refuses_what_it_does_not_do(tmp_path):
    settings = RunSettings(model="m", base_url="http://127.0.0.1:9/v1")
    job = RunJob(
        Path("in.jsonl"),
        tmp_path / "o.jsonl",
        tmp_path / "c.sqlite",
        settings,
        shard=Shard(1, 2),
        cluster=ClusterOptions(),
    )
    with pytest.raises(UsageError, match="--shard cannot be combined with --ray"):
        check_job(job)


def test_without_ray_installed_the_message_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'distill\[ray\]'"), connected(ClusterOptions()):
        pass


def test_distill_imports_ray_only_when_a_cluster_run_starts():
    code = "import sys, distill.cli.run, distill.runner, distill.cluster; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_cluster_shards_keep_conversations_that_open_alike_together():
    from distill.conversation import Conversation, Message
    from distill.shard import OpeningShard

    def conversation(n: int, first: str, system: str | None = None) -> Conversation:
        head = [Message("system", system)] if system else []
        return Conversation(
            f"c{n}", [*head, Message("user", first), Message("assistant", "a"), Message("user", f"q{n}")]
        )

    hellos = [conversation(n, "hi") for n in range(50)]  # could share their first request: one shard for all
    shards = [OpeningShard(i, 4) for i in (1, 2, 3, 4)]
    assert sum(any(s.owns_conversation(c) for c in hellos) for s in shards) == 1
    others = [conversation(n, f"question {n}") for n in range(400)] + [
        conversation(0, "hi", system="be brief")
    ]
    owners = [sum(s.owns_conversation(c) for s in shards) for c in others]
    assert owners == [1] * len(others)  # a partition
    assert all(sum(s.owns_conversation(c) for c in others) > 60 for s in shards)  # and a spread
