"""Pseudo-relevance feedback (PRF) for dense retrieval: move each query vector towards the documents its
first pass ranked highest, then search again (no labels: the top of the first pass is *assumed* relevant).

Rocchio (1971) with alpha = 1 and no negative term, on L2-normalised vectors (Li et al. 2023, "Pseudo
relevance feedback with deep language models and dense retrievers: successes and pitfalls", ACM TOIS):

    q' = (q + beta * mean_{j <= k} d_j) / ||q + beta * mean_{j <= k} d_j||

d_1..d_k the first pass's top k documents. beta = 0 gives q back (normalised), so a tuning grid that holds
beta = 0 can always fall back to plain retrieval. `tune_rocchio` picks (k, beta) by a caller's objective
(e.g. NDCG@10 on train queries), so the reported split never picks them.
Shape legend: B queries, H embedding dim, N corpus rows, K feedback documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def rocchio(xq: np.ndarray, xb: np.ndarray, feedback: np.ndarray, beta: float) -> np.ndarray:
    """q' = normalise(q + beta * mean of xb[feedback]) -> (B, H) float32.

    xq (B, H) query vectors, xb (N, H) corpus vectors, feedback (B, K) corpus rows, -1 = padding (left out
    of the mean; a row with no feedback keeps q). Rows whose result has norm 0 are left unnormalised.
    """
    xq = np.asarray(xq, dtype=np.float64)
    feedback = np.asarray(feedback, dtype=np.int64)
    if xq.ndim != 2 or feedback.ndim != 2 or len(feedback) != len(xq):
        raise ValueError(f"need xq (B, H) and feedback (B, K), got {xq.shape} and {feedback.shape}")
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    if feedback.size and feedback.max() >= len(xb):
        raise ValueError(f"feedback row {int(feedback.max())} is outside the corpus of {len(xb)} rows")
    real = feedback >= 0  # (B, K)
    docs = np.asarray(xb, dtype=np.float64)[np.where(real, feedback, 0)]  # (B, K, H)
    mean = (docs * real[..., None]).sum(1) / np.maximum(real.sum(1, keepdims=True), 1)  # (B, H)
    q = xq + beta * mean  # (B, H)
    norm = np.linalg.norm(q, axis=1, keepdims=True)  # (B, 1)
    return (q / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def tune_rocchio(
    xq: np.ndarray,
    xb: np.ndarray,
    feedback: np.ndarray,
    ks: Sequence[int],
    betas: Sequence[float],
    objective: Callable[[np.ndarray], float],
) -> tuple[int, float, float, dict[str, float]]:
    """argmax over betas x ks of objective(rocchio(xq, xb, feedback[:, :k], beta)) -> (k, beta, value,
    table {"k=K,beta=B": value}). `feedback` (B, max(ks)) holds each query's first-pass top rows, best
    first. Grid order: betas as given, then ks; the first of equal values wins, so with beta = 0 first a
    flat objective keeps plain retrieval. beta = 0 is evaluated once (k does not matter there)."""
    if not ks or not betas or min(ks) < 1 or max(ks) > feedback.shape[1]:
        raise ValueError(f"ks must be non-empty in [1, {feedback.shape[1]}] and betas non-empty, "
                         f"got ks={list(ks)} betas={list(betas)}")  # fmt: skip
    best: tuple[int, float, float] | None = None
    table: dict[str, float] = {}
    for beta in betas:
        for k in ks[:1] if beta == 0 else ks:
            value = float(objective(rocchio(xq, xb, feedback[:, :k], beta)))
            table[f"k={k},beta={beta:g}"] = value
            if best is None or value > best[2]:
                best = (k, float(beta), value)
    assert best is not None
    return best[0], best[1], best[2], table
