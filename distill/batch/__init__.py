"""``distill run --batch``: answer a dataset through Together's or OpenAI's Batch API instead of live requests.

Half the price, no rate limit to pace, results within the provider's 24 h window. The answers go into the same
cache under the same keys as a live run's (a batch line's ``custom_id`` is the request's cache key), so a run can
switch between ``--batch`` and live requests, and ``distill export`` works the same. See :mod:`.runner` for
the waves, resubmission and re-attaching; :mod:`.options` for the settings.
"""

from .options import BatchOptions, open_provider
from .runner import BatchFailed, BatchRunner

__all__ = ["BatchFailed", "BatchOptions", "BatchRunner", "open_provider"]
