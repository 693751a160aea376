"""The ``--ray`` flags of ``distill run`` (see :mod:`distill.cluster`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.cluster import ClusterOptions
from distill.cluster.options import DEFAULT_SHARDS
from distill.config import option
from distill.errors import UsageError


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    option(
        p,
        "--ray",
        metavar="local|auto|ADDRESS",
        help="answer on Ray: 'local' starts Ray here, 'auto' or HOST:6379 joins a cluster "
        "(needs: pip install 'distill[ray]')",
    )
    option(
        p,
        "--shards",
        type=int,
        help=f"with --ray: shard actors, each with its own cache in --cache-dir (default: {DEFAULT_SHARDS})",
    )
    option(
        p,
        "--cache-dir",
        type=Path,
        help="with --ray: directory of the shard caches, shared by every node (default: CACHE.shards/)",
    )
    option(
        p,
        "--lease-seconds",
        type=float,
        default=0.1,
        help="with --ray: seconds of the cluster's rate lent to a shard at a time (default: 0.1)",
    )


def cluster_from_args(args: argparse.Namespace) -> ClusterOptions | None:
    """The cluster options the flags give, or None without ``--ray``."""
    if not args.ray:
        for flag, value in (("--shards", args.shards), ("--cache-dir", args.cache_dir)):
            if value is not None:
                raise UsageError(f"{flag} needs --ray (local, auto or a cluster address)")
        return None
    return ClusterOptions(
        address=args.ray,
        shards=DEFAULT_SHARDS if args.shards is None else args.shards,
        cache_dir=args.cache_dir,
        lease_seconds=args.lease_seconds,
    )
