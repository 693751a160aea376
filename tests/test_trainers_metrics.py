"""EM/F1 as SQuAD (transformers 4.x ``squad_metrics``) computes them, and ROUGE as ``rouge-score`` does."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers import metrics
from trainers.metrics import answer_tokens, exact_match, f1_score, normalize_answer, rouge


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Cat!", "cat"),
        ("  An  apple, a day keeps\tthe doctor away. ", "apple day keeps doctor away"),
        ("a", ""),
        ("the.", ""),
        ("Theatre", "theatre"),  # "the" only as a whole word
        ("$2 million.", "2 million"),
        ("don\u2019t", "don\u2019t"),  # only ASCII punctuation is removed
        ("A-ha", "aha"),  # punctuation goes before articles are looked for
        ("", ""),
    ],
)
def test_normalize_answer(text: str, normalised: str) -> None:
    assert normalize_answer(text) == normalised


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("Hard Rock Cafe", "the hard rock cafe.") == 1
    assert exact_match("white", "White kitten") == 0
    assert exact_match("in a barn", "In the barn!") == 1


def test_f1_hand_worked_partial_overlap() -> None:
    # gold tokens [in, barn]; predicted [barn, near, farm, house]; one shared: P = 1/4, R = 1/2, F1 = 1/3
    assert f1_score("in a barn", "a barn near the farm house") == pytest.approx(1 / 3)


def test_f1_counts_repeated_tokens_as_a_multiset() -> None:
    # gold [cat, cat]; predicted [cat]: one shared, P = 1, R = 1/2, F1 = 2/3
    assert f1_score("the cat cat", "cat") == pytest.approx(2 / 3)
    # predicted [cat, cat, cat] against gold [cat]: one shared, P = 1/3, R = 1, F1 = 1/2
    assert f1_score("cat", "cat cat cat") == pytest.approx(0.5)


def test_f1_no_overlap_is_zero() -> None:
    assert f1_score("white", "black") == 0.0


@pytest.mark.parametrize(
    ("gold", "prediction", "em", "f1"),
    [
        ("", "", 1, 1.0),  # SQuAD 2.0 no-answer agreed on
        ("", "Cotton", 0, 0.0),
        ("Cotton", "", 0, 0.0),
        ("", "the", 1, 1.0),  # an article alone normalises to no answer
        ("a", "an", 1, 1.0),
    ],
)
def test_empty_answers_score_as_squad_does(gold: str, prediction: str, em: int, f1: float) -> None:
    assert exact_match(gold, prediction) == em
    assert f1_score(gold, prediction) == f1


WORDS = [
    "the",
    "The",
    "a",
    "An",
    "cat",
    "cats",
    "barn",
    "in",
    "white",
    ".",
    ",",
    "!",
    "'s",
    "$2",
    "A-ha",
    "don\u2019t",
    "1475",
]
answers = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(answers, answers)
def test_em_and_f1_properties(gold: str, prediction: str) -> None:
    em, f1 = exact_match(gold, prediction), f1_score(gold, prediction)
    assert em in (0, 1) and 0.0 <= f1 <= 1.0
    assert f1 == f1_score(prediction, gold)  # precision and recall swap, their harmonic mean does not change
    assert (f1 == 1.0) == (Counter(answer_tokens(gold)) == Counter(answer_tokens(prediction)))
    assert em <= f1
    assert normalize_answer(normalize_answer(gold)) == normalize_answer(gold)


def test_squad_scores_are_means() -> None:
    scores = metrics.squad_scores([("white", "white"), ("in a barn", "a barn near the farm house")])
    assert scores == {"em": 0.5, "f1": pytest.approx((1 + 1 / 3) / 2)}


def test_rouge_hand_worked() -> None:
    scores = rouge("the cat sat on the mat", "the cat sat")
    # unigrams: 3 shared, P = 3/3, R = 3/6; bigrams: 2 shared, P = 2/2, R = 2/5; LCS = 3 as for unigrams
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(2 * 0.4 / 1.4)
    assert scores["rougeL"] == pytest.approx(2 / 3)


def test_rouge_stems_words() -> None:
    assert rouge("running cats", "run cat") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_rouge_is_rouge_score_with_stemming() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    gold = "During a storm, Mara lights the lamp and spots a fishing boat drifting towards the rocks."
    prediction = "Mara lit the lighthouse lamp in the storm and saw a boat drifting to the rocks."
    expected = scorer.score(gold, prediction)
    assert rouge(gold, prediction) == {name: expected[name].fmeasure for name in metrics.ROUGE_TYPES}


def test_rouge_scores_are_means_and_empty_is_zero() -> None:
    scores = metrics.rouge_scores([("running cats", "run cat"), ("a b", "c d")])
    assert scores == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}
    assert metrics.rouge_scores([]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
