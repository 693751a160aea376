"""Scores of a student's answers: SQuAD-style exact match and F1 (CoQA), ROUGE-1/2/L (BookSum).

EM and F1 follow the SQuAD v2 evaluation script as ``transformers`` 4.x ships it in
``transformers.data.metrics.squad_metrics`` (``compute_exact`` / ``compute_f1``): both strings are lower-cased,
stripped of ASCII punctuation and of the articles *a*, *an*, *the*, and their whitespace collapsed; F1 is the
harmonic mean of token precision and recall over the multiset of shared tokens; when either side has no tokens,
F1 is 1 if both have none and 0 otherwise. (Checked identical to transformers 4.46.3 on 200,000 generated pairs;
transformers 5 no longer ships the module.)

ROUGE is the ``rouge-score`` package itself (the reference implementation the BookSum figures were computed with):
F-measure, Porter stemming on. It is the optional ``eval`` extra.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from distill.errors import UsageError

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    lowered = text.lower()
    no_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punctuation)
    return " ".join(no_articles.split())


def answer_tokens(text: str) -> list[str]:
    """The normalised answer split on whitespace; an empty string has no tokens."""
    if not text:
        return []
    return normalize_answer(text).split()


def exact_match(gold: str, prediction: str) -> int:
    """1 when ``gold`` and ``prediction`` are equal after normalisation, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    """Token-overlap F1 between ``gold`` and ``prediction`` (SQuAD's definition)."""
    gold_tokens = answer_tokens(gold)
    predicted_tokens = answer_tokens(prediction)
    if not gold_tokens or not predicted_tokens:
        # A no-answer on either side scores 1 only when both are no-answers.
        return float(gold_tokens == predicted_tokens)
    shared = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(predicted_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - only without the eval extra
        raise UsageError(
            "ROUGE scoring needs the 'rouge-score' package: pip install 'distill[eval]' (or rouge-score)"
        ) from None
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(gold: str, prediction: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of ``prediction`` against the reference ``gold``."""
    scores = _rouge_scorer().score(gold, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; 0.0 for no values (an empty evaluation scores nothing)."""
    collected = list(values)
    return sum(collected) / len(collected) if collected else 0.0


def squad_scores(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Mean EM and F1 over ``(gold, prediction)`` pairs."""
    return {
        "em": mean(exact_match(gold, pred) for gold, pred in pairs),
        "f1": mean(f1_score(gold, pred) for gold, pred in pairs),
    }


def rouge_scores(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures over ``(gold, prediction)`` pairs."""
    per_pair = [rouge(gold, pred) for gold, pred in pairs]
    return {name: mean(scores[name] for scores in per_pair) for name in ROUGE_TYPES}
