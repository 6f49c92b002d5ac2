"""Fusing rankings of the same query.

Reciprocal-rank fusion (Cormack et al. 2009): s(d) = sum_r 1 / (k + rank_r(d)), ranks from 1; no weight to
tune, so lists whose scores live on different scales (BM25, cosine, cross-encoder logits) fuse.

Weighted score fusion (a convex combination, Bruch et al. 2023): every source scores the same candidates
(Q, C), each row is normalised on its own, then s(d) = sum_i w_i n_i(d) with w on the simplex. The weights
come from `tune_weights`, a grid search of a caller's objective (e.g. NDCG@10 on train queries), so the
split that is reported never picks them.
Shape legend: Q queries, K list length, C candidates.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

NORMS = ("minmax", "zscore")


def rrf(lists: list[np.ndarray], k: int = 60, depth: int | None = None) -> np.ndarray:
    """Fuse ranked id rows (Q, K_r) each, -1 padded -> (Q, depth) ids by descending RRF score, -1 padded.

    Ties keep first-seen order: the first list's order, then the next list's for ids it alone holds.
    """
    return rrf_with_scores(lists, k, depth)[0]


def rrf_with_scores(
    lists: list[np.ndarray], k: int = 60, depth: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`rrf` and the fused RRF score of each returned id -> ids (Q, depth), scores (Q, depth) (-inf on
    padding), so an RRF list can itself be a source of score fusion."""
    if not lists:
        raise ValueError("rrf needs at least one ranked list")
    if k < 1:
        raise ValueError(f"rrf k must be >= 1, got {k}")
    Q = len(lists[0])
    if any(len(ranked) != Q for ranked in lists):
        raise ValueError(f"rrf lists differ in their number of queries: {[len(r) for r in lists]}")
    depth = depth if depth is not None else max(r.shape[1] for r in lists)
    fused = np.full((Q, depth), -1, dtype=np.int64)
    fused_scores = np.full((Q, depth), -np.inf)
    for q in range(Q):
        scores: dict[int, float] = {}
        for ranked in lists:
            for rank, doc in enumerate(ranked[q], 1):
                if doc >= 0:
                    scores[int(doc)] = scores.get(int(doc), 0.0) + 1.0 / (k + rank)
        best = sorted(scores, key=lambda d: -scores[d])[:depth]  # stable: ties in first-seen order
        fused[q, : len(best)] = best
        fused_scores[q, : len(best)] = [scores[d] for d in best]
    return fused, fused_scores


def rrf_scores(first: np.ndarray, second: np.ndarray, k: int = 60) -> np.ndarray:
    """RRF scores (Q, K) of the candidates `first` (Q, K) given a second ranking `second` (Q, K) of the same
    candidates; sorting `first` by them (stably) equals `rrf([first, second], k)`. -1 padding scores -inf."""
    if first.shape != second.shape:
        raise ValueError(f"rrf_scores needs equal shapes, got {first.shape} and {second.shape}")
    ranks = np.arange(1, first.shape[1] + 1, dtype=np.float64)  # (K,)
    scores = np.full(first.shape, -np.inf)
    for q in range(len(first)):
        rank_in_second = {int(d): r for d, r in zip(second[q], ranks) if d >= 0}
        for j, d in enumerate(first[q]):
            if d >= 0:
                scores[q, j] = 1.0 / (k + ranks[j]) + 1.0 / (k + rank_in_second[int(d)])
    return scores


def normalize_scores(scores: np.ndarray, method: str) -> np.ndarray:
    """Per-row normalisation of (Q, C) scores over each row's finite entries; -inf (padding) stays -inf.

    minmax: n = (s - min) / (max - min)      zscore: n = (s - mean) / std
    A row whose finite scores are all equal (no information) normalises to 0.
    """
    if method not in NORMS:
        raise ValueError(f"normalisation must be one of {NORMS}, got {method!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (Q, C), got shape {s.shape}")
    finite = np.isfinite(s)
    if np.isnan(s).any() or np.isposinf(s).any():
        raise ValueError("scores must be finite or -inf (padding)")
    x = np.where(finite, s, 0.0)
    n = np.maximum(finite.sum(1, keepdims=True), 1)  # (Q, 1)
    if method == "minmax":
        lo = np.where(finite, s, np.inf).min(1, keepdims=True)  # (Q, 1)
        hi = np.where(finite, s, -np.inf).max(1, keepdims=True)
        span = hi - lo
        out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)
    else:
        mean = x.sum(1, keepdims=True) / n  # (Q, 1)
        std = np.sqrt((np.where(finite, x - mean, 0.0) ** 2).sum(1, keepdims=True) / n)
        out = np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)
    return np.where(finite, out, -np.inf)


def weighted_scores(scores: Sequence[np.ndarray], weights: Sequence[float], method: str) -> np.ndarray:
    """sum_i w_i normalize_scores(scores_i) -> (Q, C); a candidate that is padding (-inf) in any source is
    -inf (the sources score one shared candidate array, so padding lines up)."""
    if len(scores) != len(weights) or not scores:
        raise ValueError(f"need one weight per score source, got {len(weights)} for {len(scores)}")
    shapes = {np.shape(s) for s in scores}
    if len(shapes) != 1:
        raise ValueError(f"score sources differ in shape: {sorted(shapes)}")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {list(weights)}")
    return weighted_scores_normed([normalize_scores(s, method) for s in scores], weights)


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of n entries, each a multiple of `step`, summing to 1, the first source's
    weight descending first: (1, 0, ...) leads, so ties in `tune_weights` keep the first source alone."""
    if n < 1:
        raise ValueError(f"need at least one source, got {n}")
    m = round(1 / step)
    if step <= 0 or abs(m * step - 1) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.05, 0.1), got {step}")
    out = []
    for counts in itertools.product(range(m, -1, -1), repeat=n - 1):
        if sum(counts) <= m:
            out.append(tuple(c / m for c in (*counts, m - sum(counts))))
    return out


def tune_weights(
    scores: Sequence[np.ndarray],
    objective: Callable[[np.ndarray], float],
    methods: Sequence[str] = NORMS,
    step: float = 0.05,
) -> tuple[tuple[float, ...], str, float]:
    """argmax over (simplex_grid(len(scores), step) x methods) of objective(weighted_scores(...)) ->
    (weights, method, value). objective maps fused (Q, C) scores to a number to maximise (e.g. mean
    NDCG@10 of the candidates sorted by them on train queries); the first of equal values wins, so a
    flat objective keeps the grid's first point."""
    if not methods:
        raise ValueError("need at least one normalisation method")
    normed = {m: [normalize_scores(s, m) for s in scores] for m in methods}  # once, not per grid point
    best: tuple[tuple[float, ...], str, float] | None = None
    for method in methods:
        for w in simplex_grid(len(scores), step):
            value = float(objective(weighted_scores_normed(normed[method], w)))
            if best is None or value > best[2]:
                best = (w, method, value)
    assert best is not None
    return best


def weighted_scores_normed(normed: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """`weighted_scores` of already normalised sources (the grid search's inner loop)."""
    pad = np.any([~np.isfinite(n) for n in normed], axis=0)  # (Q, C)
    fused = sum(w * np.where(pad, 0.0, n) for w, n in zip(weights, normed))
    return np.where(pad, -np.inf, fused)
