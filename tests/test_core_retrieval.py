"""guard.core.retrieval against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guard.core.retrieval import (
    Scores,
    exact_top_k,
    first_sentence,
    quality,
    recall_ratio_lower,
    score,
)


def test_recall_mrr_and_ndcg_of_three_queries_match_the_hand_computed_values() -> None:
    """q0: its one relevant id at rank 2; q1: 1 of 2 relevant at rank 1; q2: missed."""
    scores = score([["a", "b", "c"], [7, 8, 9], ["x", "y", "z"]], [["b"], [7, 5], ["w"]], k=3)
    assert scores.recall.tolist() == [1.0, 0.5, 0.0]
    assert scores.reciprocal_rank.tolist() == [0.5, 1.0, 0.0]
    ideal_two = 1.0 + 1.0 / math.log2(3)
    assert scores.ndcg.tolist() == pytest.approx([1.0 / math.log2(3), 1.0 / ideal_two, 0.0])


def test_hits_below_k_do_not_count() -> None:
    scores = score([["a", "b", "c"]], [["c"]], k=2)
    assert (scores.recall[0], scores.reciprocal_rank[0], scores.ndcg[0]) == (0.0, 0.0, 0.0)


def test_a_query_without_relevant_ids_is_refused() -> None:
    with pytest.raises(ValueError, match="no relevant id"):
        score([["a"]], [[]], k=1)


def test_the_interval_holds_the_mean_and_repeats_with_the_seed() -> None:
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    scores = Scores(values, values, values)
    first, again = quality(scores, seed=4), quality(scores, seed=4)
    assert first == again
    assert first.recall.value == 0.75
    assert 0.0 <= first.recall.low < 0.75 < first.recall.high <= 1.0
    assert first.as_dict()["recall_at_k"] == 0.75
    assert first.as_dict()["queries"] == 8


def test_identical_answers_have_a_point_interval() -> None:
    ones = np.ones(5)
    figure = quality(Scores(ones, ones, ones), seed=0).ndcg
    assert (figure.value, figure.low, figure.high) == (1.0, 1.0, 1.0)


def test_recall_ratio_bound_is_below_the_ratio_of_means_and_none_without_stored_recall() -> None:
    stored = np.ones(10)
    switch = np.array([1.0] * 8 + [0.0] * 2)
    lower = recall_ratio_lower(
        Scores(switch, switch, switch), Scores(stored, stored, stored), seed=1
    )
    assert lower is not None and lower < 0.8
    same = recall_ratio_lower(
        Scores(stored, stored, stored), Scores(stored, stored, stored), seed=1
    )
    assert same == 1.0
    zeros = np.zeros(10)
    assert (
        recall_ratio_lower(Scores(stored, stored, stored), Scores(zeros, zeros, zeros), seed=1)
        is None
    )


def test_exact_top_k_ranks_by_the_store_distance() -> None:
    corpus = np.array([[1.0, 0.0], [0.0, 1.0], [10.0, 1.0]], dtype=np.float32)
    query = np.array([[1.0, 0.1]], dtype=np.float32)
    assert exact_top_k(query, corpus, 2, "cosine").tolist() == [[2, 0]]
    assert exact_top_k(query, corpus, 2, "dot").tolist() == [[2, 0]]
    assert exact_top_k(query, corpus, 3, "l2").tolist() == [[0, 1, 2]]
    assert exact_top_k(query, corpus, 5, "l1").tolist() == [[0, 1, 2]]


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("Return the sum of a list. Floats are added in order.", "Return the sum of a list."),
        ("Too short. The rest of the record.", None),
        ("Only one sentence with enough words here.", None),
        ("Open  the\nfile named by path! Then read it.", "Open the file named by path!"),
    ],
)
def test_first_sentence_is_a_query_only_when_it_stands_for_its_record(
    text: str, query: str | None
) -> None:
    assert first_sentence(text) == query
