"""distill on a Ray cluster: ``distill run ... --ray local|auto|ADDRESS --shards N``.

Orchestration, not core: the driver (:mod:`.driver`) starts one limiter actor and N shard actors
(:mod:`.actors`); each shard runs the ordinary engine over its ``--shard I/N`` of the input into its own SQLite
cache (:mod:`.work`), under leases of one cluster-wide rate limit (:mod:`.lease`); the driver then merges the
caches (``distill merge``) and writes the output exactly as a run without Ray would. Ray is imported only when a
cluster run starts, so distill works without it (``pip install 'distill[ray]'``).
"""

from .options import ClusterOptions

__all__ = ["ClusterOptions"]
