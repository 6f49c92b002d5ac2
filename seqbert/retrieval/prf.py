"""Pseudo-relevance feedback (PRF): move each query towards the documents its first pass ranked highest,
then search again (no labels: the top k of the first pass are *assumed* relevant).

Dense: Rocchio (1971) with alpha = 1 and no negative term, on L2-normalised vectors (Li et al. 2023,
"Pseudo relevance feedback with deep language models and dense retrievers: successes and pitfalls"):

    q' = (q + beta * mean_{j <= k} d_j) / ||q + beta * mean_{j <= k} d_j||

d_1..d_k the first pass's top k documents. Sparse (BM25): RM3 term expansion (`rm3_weights`). In both,
beta = 0 gives the query back, so a tuning grid that holds beta = 0 can always fall back to plain
retrieval; `tune_feedback` picks (k, beta) by a caller's objective (e.g. NDCG@10 on train queries), so the
reported split never picks them.
Shape legend: B queries, H embedding dim, N corpus rows, K feedback documents.
"""

from __future__ import annotations

from collections import Counter
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
    docs = np.asarray(xb)[np.where(real, feedback, 0)].astype(np.float64)  # (B, K, H), rows gathered first
    mean = (docs * real[..., None]).sum(1) / np.maximum(real.sum(1, keepdims=True), 1)  # (B, H)
    q = xq + beta * mean  # (B, H)
    norm = np.linalg.norm(q, axis=1, keepdims=True)  # (B, 1)
    return (q / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def tune_feedback(
    ks: Sequence[int], betas: Sequence[float], evaluate: Callable[[int, float], float]
) -> tuple[int, float, float, dict[str, float]]:
    """argmax over betas x ks of evaluate(k, beta) (e.g. NDCG@10 on train queries of the search with k
    feedback documents at weight beta) -> (k, beta, value, table {"k=K,beta=B": value}). Grid order: betas
    as given, then ks; the first of equal values wins, so with beta = 0 first a flat objective keeps plain
    retrieval. beta = 0 is evaluated once (k does not matter there)."""
    if not ks or not betas or min(ks) < 1:
        raise ValueError(
            f"ks must be non-empty and >= 1, betas non-empty; got ks={list(ks)} betas={list(betas)}"
        )
    best: tuple[int, float, float] | None = None
    table: dict[str, float] = {}
    for beta in betas:
        for k in ks[:1] if beta == 0 else ks:
            value = float(evaluate(k, beta))
            table[f"k={k},beta={beta:g}"] = value
            if best is None or value > best[2]:
                best = (k, float(beta), value)
    assert best is not None
    return best[0], best[1], best[2], table


def rm3_weights(
    query_terms: Sequence[str], docs: Sequence[Counter], doc_scores: Sequence[float], terms: int, beta: float
) -> dict[str, float]:
    """RM3 query expansion (Lavrenko & Croft 2001 relevance model RM1; Abdul-Jaleel et al. 2004 RM3, as
    Anserini/Pyserini run it over BM25) -> weighted query {term: w}:

        p(t|R) = sum_d s_d tf(t, d) / |d|  over the k feedback documents d, s_d = score_d / sum score
                 (the first pass's scores; uniform when they are not all positive);
                 the `terms` most probable t kept and renormalised to sum 1
        w(t)   = c(t, q) / |q| + beta * p(t|R)

    (Anserini's convex form w = a c/|q| + (1 - a) p ranks the same with a = 1 / (1 + beta)). beta = 0 is
    the query itself; docs are the feedback documents' term counts, query_terms its analysed terms."""
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    if terms < 1 or len(docs) != len(doc_scores):
        raise ValueError(f"need terms >= 1 and one score per document, got {terms}, {len(docs)} docs, "
                         f"{len(doc_scores)} scores")  # fmt: skip
    q = Counter(query_terms)
    out = {t: c / max(len(query_terms), 1) for t, c in q.items()}
    s = np.asarray(doc_scores, dtype=np.float64)
    s = s / s.sum() if len(s) and (s > 0).all() else np.full(len(s), 1.0 / max(len(s), 1))
    p: Counter = Counter()
    for d, sd in zip(docs, s):
        n = sum(d.values())
        for t, tf in d.items():
            p[t] += sd * tf / max(n, 1)
    top = sorted(p.items(), key=lambda x: (-x[1], x[0]))[:terms]  # ties by term: deterministic
    z = sum(v for _, v in top)
    for t, v in top:
        if beta > 0 and z > 0:
            out[t] = out.get(t, 0.0) + beta * v / z
    return out
