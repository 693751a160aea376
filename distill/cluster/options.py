"""``--ray`` and ``--shards``: where a cluster run goes and how it is split (no Ray import here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

LOCAL = "local"
AUTO = "auto"
DEFAULT_SHARDS = 4


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """A run on Ray: ``address`` is ``local`` (start Ray on this machine), ``auto`` (join the cluster this
    machine belongs to) or the head node's ``HOST:6379`` (the driver runs on a node of the cluster).

    ``shards`` Ray actors each answer the conversations of one ``--shard I/N`` into their own cache in
    ``cache_dir`` (default: ``CACHE.shards/`` beside ``--cache``), which on a real cluster must be storage every
    node and the driver see at the same path. ``lease_seconds`` is how much of the cluster's rate a shard is
    lent at a time. ``num_cpus`` caps the CPUs of a ``local`` Ray instance.
    """

    address: str = LOCAL
    shards: int = DEFAULT_SHARDS
    cache_dir: Path | None = None
    lease_seconds: float = 0.1
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if not self.address:
            raise UsageError("--ray takes local, auto or the head node's HOST:6379")
        if self.shards < 1:
            raise UsageError(f"--shards must be at least 1, got {self.shards}")
        if not 0 < self.lease_seconds <= 5:
            raise UsageError(f"--lease-seconds must be in (0, 5], got {self.lease_seconds:g}")

    def shard_dir(self, cache: Path) -> Path:
        """Where the shard caches go: ``cache_dir``, else ``CACHE.shards/`` beside the cache."""
        directory = self.cache_dir if self.cache_dir is not None else cache.with_name(cache.name + ".shards")
        return directory.resolve()

    def shard_cache(self, cache: Path, index: int) -> Path:
        """Shard ``index`` (1-based)'s cache file: ``STEM.shard-I-of-N.sqlite``."""
        return self.shard_dir(cache) / f"{cache.stem}.shard-{index}-of-{self.shards}.sqlite"
