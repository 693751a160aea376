"""``distill view``: a local, read-only web page over a cache (runs, conversations, failures, charts).

The viewer is orchestration-level: it reads the cache (read-only, while a run may be writing it) and may use the
readers' helpers; nothing in the core imports it. :func:`make_app` builds the aiohttp app, :func:`serve` runs it.
"""

from .app import make_app
from .server import serve

__all__ = ["make_app", "serve"]
