"""What ``--model`` names for the local back-end: a folder, or a hub id loaded from the cache or downloaded.

No torch needed and no network touched: the hub's reachability is injected, the cache is a folder made here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.errors import UsageError
from trainers.local import model_ref
from trainers.local.model_ref import ModelSource, looks_like_path, resolve_model

HUB_ID = "meta-llama/Llama-3.2-1B-Instruct"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own, with the offline switches off."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return cache


def cache_model(cache: Path, repo: str) -> None:
    """The layout huggingface_hub writes: refs/main naming a snapshot that holds config.json."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / "config.json").write_text("{}")


@pytest.mark.parametrize(
    ("ref", "is_path"),
    [("./x", True), ("/abs/model", True), ("~/m", True), ("adapter/", True), ("a/b/c", True),
     ("gpt2", False), (HUB_ID, False)],
)  # fmt: skip
def test_paths_and_hub_ids_are_told_apart(ref, is_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_path(ref) is is_path


def test_an_existing_folder_is_a_path_even_without_a_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    assert resolve_model("tiny") == ModelSource("tiny", local_files_only=True)


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"no model at \./nothing-here \(no such folder\)"):
        resolve_model("./nothing-here")
    with pytest.raises(UsageError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_a_hub_id_downloads_when_the_hub_answers(hub_cache, monkeypatch):
    monkeypatch.setattr(model_ref, "hub_unreachable", lambda: None)
    assert resolve_model(HUB_ID) == ModelSource(HUB_ID, local_files_only=False)


def test_an_unreachable_hub_uses_the_cache_or_fails_at_once(hub_cache, monkeypatch):
    monkeypatch.setattr(model_ref, "hub_unreachable", lambda: "huggingface.co does not resolve")
    with pytest.raises(UsageError, match="cannot download it, huggingface.co does not resolve"):
        resolve_model(HUB_ID)
    cache_model(hub_cache, HUB_ID)
    assert resolve_model(HUB_ID) == ModelSource(HUB_ID, local_files_only=True)


def test_offline_mode_reads_the_cache_only(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_ref, "hub_unreachable", lambda: pytest.fail("offline mode must not probe"))
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set"):
        resolve_model(HUB_ID)
    cache_model(hub_cache, HUB_ID)
    assert resolve_model(HUB_ID) == ModelSource(HUB_ID, local_files_only=True)


def test_the_probe_names_a_host_that_does_not_answer(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert "http://127.0.0.1:9 does not answer" in model_ref.hub_unreachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert model_ref.hub_unreachable() is None  # behind a proxy the download is left to transformers
