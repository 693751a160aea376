"""What ``--model`` names for the local back-end and server: a model folder here, or a Hugging Face hub id.

transformers itself treats anything that is not an existing folder as a hub id and, with no network, spends
about 50 s retrying before it says so. :func:`resolve_model` decides first, in well under a second:

* a path (it exists, or starts with ``.``, ``/`` or ``~``, or ends with ``/``) must be a folder with a
  ``config.json``, else "no model at ./x";
* a hub id is loaded from the Hugging Face cache when the hub cannot be reached (or ``HF_HUB_OFFLINE=1``) and
  the cache has it, else refused at once naming the host; with the hub reachable transformers downloads it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from distill.errors import UsageError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
MAKE_ONE = "distill train --make-tiny-model DIR builds a tiny one offline"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where to load a model from: ``ref`` for ``from_pretrained``, and whether to stay off the network."""

    ref: str
    local_files_only: bool


def resolve_model(ref: str, flag: str = "--model") -> ModelSource:
    """Check ``ref`` and say how to load it; a :class:`UsageError` with the fix when it cannot be loaded."""
    if looks_like_path(ref):
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise UsageError(f"{flag} {ref}: no model at {ref} (no such folder); {MAKE_ONE}")
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"{flag} {ref}: no model at {ref} (the folder has no config.json); point at a saved "
                f"Hugging Face model folder, or {MAKE_ONE}"
            )
        return ModelSource(str(folder), local_files_only=True)
    cached = _in_hub_cache(ref)
    if _hub_offline():
        if not cached:
            raise UsageError(
                f"{flag} {ref}: HF_HUB_OFFLINE is set and the Hugging Face cache has no {ref}; "
                f"download it once with the network on, or pass a local folder ({MAKE_ONE})"
            )
        return ModelSource(ref, local_files_only=True)
    unreachable = hub_unreachable()
    if unreachable is None:
        return ModelSource(ref, local_files_only=False)
    if cached:
        return ModelSource(ref, local_files_only=True)
    raise UsageError(
        f"{flag} {ref}: cannot download it, {unreachable}, and the Hugging Face cache has no copy; "
        f"pass a local model folder instead ({MAKE_ONE})"
    )


def looks_like_path(ref: str) -> bool:
    """A folder rather than a hub id (hub ids are ``name`` or ``org/name``, never ``./x`` or ``a/b/c``)."""
    return (
        Path(ref).expanduser().exists()
        or ref.startswith((".", "/", "~"))
        or ref.endswith("/")
        or ref.count("/") > 1
        or (os.sep != "/" and os.sep in ref)
    )


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (DNS or connection, within 3 s), or None when it answers or a proxy is set.

    Behind a proxy the direct probe says nothing, so the download is left to transformers.
    """
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    url = urlsplit(endpoint)
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except socket.gaierror as e:
        return f"{host} does not resolve ({e.strerror}; no network?)"
    except OSError as e:
        return f"{endpoint} does not answer ({e.strerror or type(e).__name__})"


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(ref: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref, "config.json")
    return isinstance(found, str)
