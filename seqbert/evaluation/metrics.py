"""Ranking metrics as pure, vectorised functions over per-query arrays.

Shape legend: Q queries (users), K ranked positions, R judged ids per query (padded), N candidates,
V catalogue size, F item-feature size.

Conventions shared by every function here:
- A ranked list is an int array (Q, K) of ids, best first, padded with -1 when a query has fewer than K
  results. Ids inside one row must be unique (duplicates would be counted twice; `runs.py` reports them).
- Judgements are `rel_ids` (Q, R) padded with -1 and `rel_grades` (Q, R). A document is relevant iff its
  grade is >= 1 (trec_eval's default relevance level, ranx `rel_lvl=1`); grades < 1 are judged
  non-relevant and give no gain.
- Empty relevance (a query with no grade >= 1): every accuracy metric is 0 for that query and the query
  still counts in the mean. This is ranx's convention (its metrics return 0.0 when the cleaned qrels are
  empty); trec_eval agrees for queries present in the qrels.
- Gains: NDCG uses linear gains g = grade with the log2(i + 1) discount (Järvelin & Kekäläinen 2002; ranx
  "ndcg", trec_eval "ndcg_cut"); `exponential=True` gives 2^grade - 1 (Burges et al. 2005; ranx
  "ndcg_burges"). With binary grades the two coincide.
- Ties: a ranked list carries its order. When ordering from scores (`order_by_score`), ties are broken
  pessimistically by default: within a tie the non-relevant ids come first, so a model cannot gain from
  constant scores. The single-target rank uses the same rule (see `pessimistic_rank`).
Per-query functions return float64 vectors (Q,) so statistics (bootstrap, paired tests) can use them;
`mean_metrics` averages them into the `dict[str, float]` with keys like "ndcg@10" used across seqbert.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_BROADCAST_LIMIT = 2**22  # (Q, K, R) bool elements compared at once; beyond it use a sorted-key search


# ---------------------------------------------------------------------------------------------------------
# relevance lookup
def relevance_gains(
    ranked: np.ndarray, rel_ids: np.ndarray, rel_grades: np.ndarray | None = None
) -> np.ndarray:
    """Grade of every ranked id: ranked (Q, K), rel_ids (Q, R) -> gains (Q, K) float64.

    gains[q, i] = grade of ranked[q, i] in query q's judgements if that grade is >= 1, else 0. Padding (-1)
    gets 0. `rel_grades=None` means every listed id has grade 1 (binary relevance).
    """
    ranked, rel_ids = np.asarray(ranked), np.asarray(rel_ids)
    if ranked.ndim != 2 or rel_ids.ndim != 2 or ranked.shape[0] != rel_ids.shape[0]:
        raise ValueError(
            f"ranked (Q, K) and rel_ids (Q, R) need the same Q; got {ranked.shape}, {rel_ids.shape}"
        )
    grades = np.ones(rel_ids.shape) if rel_grades is None else np.asarray(rel_grades, dtype=np.float64)
    if grades.shape != rel_ids.shape:
        raise ValueError(f"rel_grades shape {grades.shape} != rel_ids shape {rel_ids.shape}")
    grades = np.where((rel_ids >= 0) & (grades >= 1), grades, 0.0)  # (Q, R) non-relevant and padding -> 0
    q, k = ranked.shape
    r = rel_ids.shape[1]
    if q == 0 or k == 0 or r == 0:
        return np.zeros((q, k))
    if q * k * r <= _BROADCAST_LIMIT:  # small judgement lists (the recommender case): one comparison
        same = (ranked[:, :, None] == rel_ids[:, None, :]) & (ranked[:, :, None] >= 0)  # (Q, K, R)
        return (same * grades[:, None, :]).max(axis=2)
    # general case: key = row * span + id, sorted once, then a binary search for every ranked id
    span = int(max(ranked.max(), rel_ids.max())) + 2
    rows = np.arange(q, dtype=np.int64)[:, None]
    rel_keys = (rows * span + rel_ids + 1).ravel()  # (Q*R,)
    order = np.argsort(rel_keys, kind="stable")
    rel_keys, flat_grades = rel_keys[order], grades.ravel()[order]
    keys = (rows * span + ranked + 1).ravel()  # (Q*K,)
    pos = np.minimum(np.searchsorted(rel_keys, keys), rel_keys.size - 1)
    found = (rel_keys[pos] == keys) & (ranked.ravel() >= 0)
    return np.where(found, flat_grades[pos], 0.0).reshape(q, k)


def ideal_gains(rel_grades: np.ndarray) -> np.ndarray:
    """Relevant grades (>= 1) of each query sorted descending (Q, R), zeros after: the ideal ranking's gains."""
    grades = np.where(np.asarray(rel_grades, dtype=np.float64) >= 1, rel_grades, 0.0)
    return -np.sort(-grades, axis=1)


def order_by_score(
    ids: np.ndarray, scores: np.ndarray, gains: np.ndarray | None = None, ties: str = "pessimistic"
) -> np.ndarray:
    """Sort ids (Q, N) by scores (Q, N) descending -> permutation index (Q, N).

    Tie rule: "pessimistic" puts the lower gain first within equal scores (needs `gains`), "optimistic"
    the higher gain first, "id" the larger id first (trec_eval sorts by score, then docid descending).
    Remaining ties keep the input order (stable sort).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if ties == "id":
        secondary = -np.asarray(ids, dtype=np.float64)
    elif ties in ("pessimistic", "optimistic"):
        if gains is None:
            raise ValueError(f"ties={ties!r} needs gains")
        secondary = np.asarray(gains, dtype=np.float64) * (1 if ties == "pessimistic" else -1)
    else:
        raise ValueError(f"ties must be 'pessimistic', 'optimistic' or 'id', got {ties!r}")
    q, n = scores.shape
    rows = np.repeat(np.arange(q), n)
    # lexsort sorts by the last key first: row, then score descending, then the secondary key ascending
    order = np.lexsort((secondary.ravel(), -scores.ravel(), rows))
    return order.reshape(q, n) - (np.arange(q) * n)[:, None]


# ---------------------------------------------------------------------------------------------------------
# accuracy metrics over gains (Q, K); all return (Q,) float64
def _cut(gains: np.ndarray, k: int | None) -> np.ndarray:
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.asarray(gains, dtype=np.float64)[:, :k]


def hit_rate(gains: np.ndarray, k: int) -> np.ndarray:
    """HR@k = 1[exists i <= k : g_i > 0]. With one held-out target this equals Recall@k."""
    return (_cut(gains, k) > 0).any(axis=1).astype(np.float64)


def recall(gains: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall@k = |{i <= k : g_i > 0}| / |Rel|; 0 when |Rel| = 0."""
    hits = (_cut(gains, k) > 0).sum(axis=1)
    return np.divide(hits, num_relevant, out=np.zeros(len(hits)), where=np.asarray(num_relevant) > 0)


def precision(gains: np.ndarray, k: int) -> np.ndarray:
    """Precision@k = |{i <= k : g_i > 0}| / k. Divides by k even when the list is shorter (ranx, trec_eval)."""
    return (_cut(gains, k) > 0).sum(axis=1) / k


def ndcg(gains: np.ndarray, ideal: np.ndarray, k: int | None = None, exponential: bool = False) -> np.ndarray:
    """NDCG@k = DCG@k / IDCG@k, DCG@k = sum_{i<=k} gain(g_i) / log2(i + 1), i 1-based.

    gain(g) = g (linear, default) or 2^g - 1 (exponential). IDCG@k is the DCG of `ideal` (Q, R), the
    query's positive grades sorted descending (`ideal_gains`). 0 when the query has no relevant id.
    """
    g, best = _cut(gains, k), _cut(ideal, k)
    if exponential:
        g, best = np.exp2(g) - 1, np.exp2(best) - 1
    dcg = (g / np.log2(np.arange(2, g.shape[1] + 2))).sum(axis=1)
    idcg = (best / np.log2(np.arange(2, best.shape[1] + 2))).sum(axis=1)
    return np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)


def reciprocal_rank(gains: np.ndarray, k: int | None = None) -> np.ndarray:
    """RR@k = 1 / (position of the first relevant id) if it is <= k, else 0; MRR is its mean."""
    rel = _cut(gains, k) > 0
    first = rel.argmax(axis=1) + 1.0
    return np.where(rel.any(axis=1), 1.0 / first, 0.0)


def average_precision(gains: np.ndarray, num_relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """AP@k = sum_{i<=k, g_i>0} Precision@i / |Rel| (trec_eval map_cut, ranx map@k); 0 when |Rel| = 0."""
    rel = _cut(gains, k) > 0
    prec_at_i = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    total = (prec_at_i * rel).sum(axis=1)
    return np.divide(total, num_relevant, out=np.zeros(len(total)), where=np.asarray(num_relevant) > 0)


def evaluate_ranked(
    ranked: np.ndarray,
    rel_ids: np.ndarray,
    rel_grades: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10, 20),
    exponential: bool = False,
) -> dict[str, np.ndarray]:
    """Per-query metrics of ranked lists (Q, K) against judgements (Q, R).

    Keys: hr@k, recall@k, precision@k, ndcg@k, map@k for each k, plus "mrr" and "map" over the whole list.
    """
    gains = relevance_gains(ranked, rel_ids, rel_grades)  # (Q, K)
    grades = np.ones(np.shape(rel_ids)) if rel_grades is None else np.asarray(rel_grades, dtype=np.float64)
    grades = np.where(np.asarray(rel_ids) >= 0, grades, 0.0)
    ideal = ideal_gains(grades)  # (Q, R)
    num_rel = (ideal > 0).sum(axis=1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(gains, k)
        out[f"recall@{k}"] = recall(gains, num_rel, k)
        out[f"precision@{k}"] = precision(gains, k)
        out[f"ndcg@{k}"] = ndcg(gains, ideal, k, exponential)
        out[f"map@{k}"] = average_precision(gains, num_rel, k)
    out["mrr"] = reciprocal_rank(gains)
    out["map"] = average_precision(gains, num_rel)
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Average per-query vectors into {"ndcg@10": 0.41, ...}; an empty query set averages to nan."""
    return {name: float(np.mean(v)) if len(v) else float("nan") for name, v in per_query.items()}


# ---------------------------------------------------------------------------------------------------------
# single held-out target (leave-one-out) fast path
def pessimistic_rank(scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of a target among candidate scores (B, N) that do NOT include the target itself.

    rank = 1 + #{j : s_j > t} + #{j : s_j == t}: every tie is counted against the target, so a constant
    scorer gets the worst rank rather than the best. NaN candidate scores never outrank the target.
    """
    t = target_scores.reshape(-1, 1)  # (B, 1)
    return 1 + (scores > t).sum(dim=1) + (scores == t).sum(dim=1)  # (B,)


def single_target_metrics(
    ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10, 20), truncated_mrr: bool = False
) -> dict[str, np.ndarray]:
    """Per-user metrics from the 1-based rank of the one relevant item, ranks (U,).

    A rank of inf marks a target removed by the protocol (a miss: every metric 0).
    HR@k = 1[rank <= k]; NDCG@k = 1 / log2(rank + 1) if rank <= k else 0 (IDCG = 1 with one relevant item);
    MRR = 1 / rank over the full ranking (not truncated); `truncated_mrr` adds MRR@k = 1[rank <= k] / rank.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"ranks are 1-based; got a minimum of {ranks.min()}")
    out: dict[str, np.ndarray] = {}
    for k in ks:
        inside = ranks <= k
        out[f"hr@{k}"] = inside.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(inside, 1.0 / np.log2(ranks + 1), 0.0)
        if truncated_mrr:
            out[f"mrr@{k}"] = np.where(inside, 1.0 / ranks, 0.0)
    out["mrr"] = 1.0 / ranks
    return out


# ---------------------------------------------------------------------------------------------------------
# beyond accuracy, over recommended lists topk (U, K) padded with -1
def coverage(topk: np.ndarray, catalogue_size: int, k: int | None = None) -> float:
    """Catalogue coverage@k = |union over users of their top-k ids| / catalogue_size (padding ignored)."""
    ids = np.asarray(topk)[:, :k]
    ids = ids[ids >= 0]
    if ids.size == 0:
        return 0.0
    seen = np.zeros(int(ids.max()) + 1, dtype=bool)  # a bitmap: np.unique's hash path is slow on 10^7 ids
    seen[ids] = True
    return float(seen.sum() / catalogue_size)


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    n = valid.sum(axis=1)
    return np.divide((values * valid).sum(axis=1), n, out=np.full(len(n), np.nan), where=n > 0)


def novelty(topk: np.ndarray, item_counts: np.ndarray, num_users: int, k: int | None = None) -> np.ndarray:
    """Novelty@k per user = mean_{i in top-k} -log2 p(i), p(i) = count(i) / num_users (Zhou et al. 2010).

    count(i) is the number of training users who interacted with i; items never seen count as 1 (so
    -log2 p is finite and an unseen item is as novel as the rarest seen one). nan for an empty list.
    """
    ids = np.asarray(topk)[:, :k]
    valid = ids >= 0
    counts = np.maximum(np.asarray(item_counts, dtype=np.float64), 1.0)
    return _masked_mean(-np.log2(counts[np.where(valid, ids, 0)] / num_users), valid)


def popularity_bias(topk: np.ndarray, item_counts: np.ndarray, k: int | None = None) -> np.ndarray:
    """Average recommendation popularity ARP@k per user = mean_{i in top-k} count(i) (Abdollahpouri 2019)."""
    ids = np.asarray(topk)[:, :k]
    valid = ids >= 0
    return _masked_mean(np.asarray(item_counts, dtype=np.float64)[np.where(valid, ids, 0)], valid)


def intra_list_diversity(topk: np.ndarray, item_features: np.ndarray, k: int | None = None) -> np.ndarray:
    """ILD@k per user = mean over pairs i != j in the top-k of (1 - cos(f_i, f_j)) (Ziegler et al. 2005).

    item_features (V, F); nan when the list has fewer than two items; a zero feature vector has cosine 0.
    """
    ids = np.asarray(topk)[:, :k]
    valid = ids >= 0
    feats = np.asarray(item_features, dtype=np.float64)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    unit = np.divide(feats, norms, out=np.zeros_like(feats), where=norms > 0)[
        np.where(valid, ids, 0)
    ]  # (U, K, F)
    cos = np.einsum("ukf,ujf->ukj", unit, unit)  # (U, K, K)
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(ids.shape[1], dtype=bool)  # (U, K, K)
    n = pair.sum(axis=(1, 2))
    return np.divide(((1 - cos) * pair).sum(axis=(1, 2)), n, out=np.full(len(n), np.nan), where=n > 0)


# ---------------------------------------------------------------------------------------------------------
# measure names: seqbert keys <-> trec_eval names <-> ir_measures names
# seqbert key family -> (trec_eval prefix, ir_measures prefix); a family with a cut-off takes "_k" / "@k"
_FAMILIES = {
    "ndcg": ("ndcg_cut", "nDCG"),
    "precision": ("P", "P"),
    "recall": ("recall", "R"),
    "hr": ("success", "Success"),
    "map": ("map_cut", "AP"),
}
_UNCUT = {"mrr": ("recip_rank", "RR"), "map": ("map", "AP")}


def trec_name(key: str) -> str:
    """seqbert key -> trec_eval measure name: "ndcg@10" -> "ndcg_cut_10", "mrr" -> "recip_rank"."""
    if key in _UNCUT:
        return _UNCUT[key][0]
    family, _, k = key.partition("@")
    if family not in _FAMILIES or not k.isdigit():
        raise KeyError(f"no trec_eval name for the measure {key!r}")
    return f"{_FAMILIES[family][0]}_{k}"


def parse_measure(name: str) -> str:
    """A measure name in any of three spellings -> the seqbert key (ValueError for anything else).

    seqbert ("ndcg@10", "mrr", "map@100"), trec_eval ("ndcg_cut_10", "recip_rank", "map", "map_cut_100",
    "P_10", "recall_100", "success_1") and ir_measures ("nDCG@10", "RR", "AP", "AP@100", "P@10", "R@100",
    "Success@1"). Cut-offs must be >= 1.
    """
    text = name.strip()
    for key, (trec, ir) in _UNCUT.items():
        if text in (key, trec, ir):
            return key
    for family, (trec, ir) in _FAMILIES.items():
        for prefix in (f"{family}@", f"{trec}_", f"{ir}@"):
            k = text[len(prefix) :]
            if text.startswith(prefix) and k.isdigit() and int(k) >= 1:
                return f"{family}@{int(k)}"
    known = "nDCG@k, RR, AP, AP@k, P@k, R@k, Success@k (or ndcg_cut_k, recip_rank, map, map_cut_k, P_k, recall_k, success_k)"
    raise ValueError(f"unknown measure {name!r}; expected one of {known} with k >= 1")
