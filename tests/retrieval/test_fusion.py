"""Score fusion: per-query normalisation by hand, the simplex grid, RRF scores, and weight tuning that finds a
planted combination."""

import numpy as np
import pytest

from seqbert.retrieval.bm25 import Bm25Index
from seqbert.retrieval.fusion import (
    normalize_scores,
    rrf,
    rrf_with_scores,
    simplex_grid,
    tune_weights,
    weighted_scores,
)

NEG = -np.inf


def test_normalize_scores_by_hand_and_padding_stays_padding():
    s = np.array([[1.0, 2.0, 4.0, NEG], [3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_allclose(normalize_scores(s, "minmax"), [[0, 1 / 3, 1, NEG], [0, 0, 0, 0]])
    mean, std = 7 / 3, np.std([1.0, 2.0, 4.0])
    np.testing.assert_allclose(normalize_scores(s, "zscore")[0], [*((np.array([1, 2, 4]) - mean) / std), NEG])
    assert (normalize_scores(s, "zscore")[1] == 0).all()  # a constant row carries no information
    with pytest.raises(ValueError, match="normalisation"):
        normalize_scores(s, "rank")
    with pytest.raises(ValueError, match="finite"):
        normalize_scores(np.array([[np.nan, 1.0]]), "minmax")


def test_weighted_scores_is_the_convex_combination_and_padding_wins():
    a = np.array([[0.0, 5.0, 10.0]])  # minmax -> 0, .5, 1
    b = np.array([[2.0, 1.0, NEG]])  # minmax -> 1, 0, pad
    np.testing.assert_allclose(weighted_scores([a, b], (0.25, 0.75), "minmax"), [[0.75, 0.125, NEG]])
    with pytest.raises(ValueError, match="one weight per"):
        weighted_scores([a, b], (1.0,), "minmax")
    with pytest.raises(ValueError, match="shape"):
        weighted_scores([a, b[:, :2]], (0.5, 0.5), "minmax")


def test_simplex_grid_counts_and_order():
    assert simplex_grid(2, 0.25) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    grid = simplex_grid(3, 0.05)
    assert len(grid) == 231 == 21 * 22 // 2 and grid[0] == (1.0, 0.0, 0.0)
    assert all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in grid)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(2, 0.3)


def test_tune_weights_finds_a_planted_combination():
    rng = np.random.default_rng(0)
    Q, C = 300, 40
    sources = [rng.random((Q, C)) for _ in range(3)]
    sources = [
        (s - s.min(1, keepdims=True)) / np.ptp(s, axis=1, keepdims=True) for s in sources
    ]  # minmax-exact
    planted = (0.2, 0.5, 0.3)
    relevant = np.argmax(sum(w * s for w, s in zip(planted, sources)), axis=1)  # (Q,)
    scale = [3.0, 0.01, 100.0]  # raw scales differ wildly (BM25, cosine, logits): normalisation undoes it
    raw = [s * k + 7 for s, k in zip(sources, scale)]

    def hit_at_1(fused: np.ndarray) -> float:
        return float((fused.argmax(1) == relevant).mean())

    weights, method, value = tune_weights(raw, hit_at_1, step=0.1)
    assert weights == pytest.approx(planted) and method == "minmax" and value == 1.0
    # every other grid point misses some queries, so the planted weights are the unique optimum
    others = [w for w in simplex_grid(3, 0.1) if not np.allclose(w, planted)]
    assert max(hit_at_1(weighted_scores(raw, w, "minmax")) for w in others) < 1.0
    # a flat objective keeps the grid's first point (the first source alone)
    assert tune_weights(raw, lambda fused: 0.0, ("zscore",), 0.5) == ((1.0, 0.0, 0.0), "zscore", 0.0)


def test_rrf_with_scores_by_hand():
    ids, scores = rrf_with_scores([np.array([[1, 2, 3]]), np.array([[3, 1, -1]])], k=60, depth=4)
    assert (
        ids.tolist()
        == [[1, 3, 2, -1]]
        == rrf([np.array([[1, 2, 3]]), np.array([[3, 1, -1]])], 60, 4).tolist()
    )
    np.testing.assert_allclose(scores, [[1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, NEG]])


def test_bm25_scores_agree_with_its_search_and_score_any_row():
    docs = ["the cat sat on the mat", "dogs run far", "cats and dogs are pets", "quantum physics", "a cat"]
    index = Bm25Index(docs, stem=False)
    queries = ["cat dogs zebra", "physics"]
    rows = index.search(queries, 3)  # (2, 3)
    scores = index.scores(queries, rows)
    assert (np.diff(scores, axis=1) <= 1e-12).all()  # search order = descending score
    _, want = index.retriever.retrieve(index._tokenize(queries), k=3, show_progress=False)
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    any_rows = index.scores(queries, np.array([[3, -1], [0, 3]]))
    assert any_rows[0, 0] == 0.0 and any_rows[0, 1] == NEG and any_rows[1, 0] == 0.0 and any_rows[1, 1] > 0
    with pytest.raises(ValueError, match="outside the corpus"):
        index.scores(queries, np.array([[9], [0]]))
