"""Reciprocal-rank fusion (Cormack et al. 2009): s(d) = sum_r 1 / (k + rank_r(d)), ranks from 1; no
weight to tune, so lists whose scores live on different scales (BM25, cosine, cross-encoder logits) fuse.
Shape legend: Q queries, K list length.
"""

from __future__ import annotations

import numpy as np


def rrf(lists: list[np.ndarray], k: int = 60, depth: int | None = None) -> np.ndarray:
    """Fuse ranked id rows (Q, K_r) each, -1 padded -> (Q, depth) ids by descending RRF score, -1 padded.

    Ties keep first-seen order: the first list's order, then the next list's for ids it alone holds.
    """
    if not lists:
        raise ValueError("rrf needs at least one ranked list")
    if k < 1:
        raise ValueError(f"rrf k must be >= 1, got {k}")
    Q = len(lists[0])
    if any(len(ranked) != Q for ranked in lists):
        raise ValueError(f"rrf lists differ in their number of queries: {[len(r) for r in lists]}")
    depth = depth if depth is not None else max(r.shape[1] for r in lists)
    fused = np.full((Q, depth), -1, dtype=np.int64)
    for q in range(Q):
        scores: dict[int, float] = {}
        for ranked in lists:
            for rank, doc in enumerate(ranked[q], 1):
                if doc >= 0:
                    scores[int(doc)] = scores.get(int(doc), 0.0) + 1.0 / (k + rank)
        best = sorted(scores, key=lambda d: -scores[d])[:depth]  # stable: ties in first-seen order
        fused[q, : len(best)] = best
    return fused


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
