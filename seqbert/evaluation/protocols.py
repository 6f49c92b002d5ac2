"""Sampled-negative protocol: draw once, save with a fingerprint, reload; and corrected sampled metrics.

Shape legend: U users, N negatives per user, V catalogue size (score columns).

Sampled metrics (rank the target among N sampled negatives instead of the whole catalogue) are cheap but
biased, and they can even reorder models (Krichene & Rendle, "On Sampled Metrics for Item Recommendation",
KDD 2020). Use full ranking (`ranking.evaluate_ranking(protocol="full")`) for conclusions; when sampled
numbers are needed for comparison with papers, draw the negatives ONCE with a fixed seed, store them next
to the results (`save_negatives`) and reload them (`load_negatives`), which checks a fingerprint of the
inputs so negatives drawn for another split, catalogue or seed are refused. `corrected_metric_table`
implements Krichene & Rendle's bias-variance (BV) correction, which maps a sampled rank to an estimate of the
full-ranking metric.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import binom

_FORMAT_VERSION = 1  # bump when the sampling algorithm changes: old files then fail the fingerprint check


def _forbidden_keys(histories: Sequence[np.ndarray], targets: np.ndarray, num_items: int) -> np.ndarray:
    """Sorted unique keys user * V + item for every (user, seen item) and (user, target) pair."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    items = np.concatenate(
        [np.concatenate(histories).astype(np.int64) if lengths.sum() else np.zeros(0, np.int64), targets]
    )
    users = np.concatenate([np.repeat(np.arange(len(histories)), lengths), np.arange(len(targets))])
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"histories/targets hold ids outside [0, num_items={num_items})")
    keys = np.sort(users * num_items + items)  # sort + dedupe: np.unique's hash path is far slower here
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys


def sample_negatives(
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    n: int = 100,
    strategy: str = "uniform",
    popularity: np.ndarray | None = None,
    seed: int = 0,
    exclude_ids: Sequence[int] = (),
) -> np.ndarray:
    """Draw n distinct negatives per user -> (U, n) int64, never a seen item, the target or an excluded id.

    strategy "uniform": each allowed item equally likely; "popularity": P(i) proportional to popularity[i]
    (e.g. training interaction counts; items with weight 0 are never drawn). Both are successive sampling
    without replacement, done by rejection: i.i.d. draws from the base distribution, keeping the first n
    distinct allowed ids per user, which is exactly sequential sampling without replacement from the base
    distribution restricted to allowed items. Deterministic for a given seed and inputs.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if len(histories) != len(targets):
        raise ValueError(f"histories has {len(histories)} users but targets has {len(targets)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    weights = np.ones(num_items)
    if strategy == "popularity":
        if popularity is None or np.shape(popularity) != (num_items,):
            raise ValueError(f"strategy='popularity' needs popularity of shape (num_items={num_items},)")
        weights = np.asarray(popularity, dtype=np.float64).copy()
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise ValueError("popularity must be finite and >= 0")
    elif strategy != "uniform":
        raise ValueError(f"strategy must be 'uniform' or 'popularity', got {strategy!r}")
    exclude = np.asarray(exclude_ids, dtype=np.int64)
    weights[exclude] = 0.0
    forbidden = _forbidden_keys(histories, targets, num_items)
    # feasibility per user: drawable items (weight > 0) minus the forbidden ones that are drawable
    drawable = weights > 0
    users_of, items_of = np.divmod(forbidden, num_items)
    blocked = np.bincount(users_of[drawable[items_of]], minlength=len(targets))
    short = np.flatnonzero(drawable.sum() - blocked < n)
    if short.size:
        u = short[0]
        raise ValueError(
            f"user {u} has only {drawable.sum() - blocked[u]} items left to sample, fewer than n={n}"
        )
    cdf = np.cumsum(weights / weights.sum())
    rng = np.random.default_rng(seed)
    out = np.full((len(targets), n), -1, dtype=np.int64)
    pending = np.arange(len(targets))
    while pending.size:
        m = 2 * n + 16  # draws per round; most users finish in one round on sparse data
        draws = np.minimum(np.searchsorted(cdf, rng.random((pending.size, m)), side="right"), num_items - 1)
        block = np.concatenate([out[pending], draws], axis=1)  # (P, n + m): kept ids first, so they stay
        keys = pending[:, None] * num_items + block  # (P, n + m)
        pos = np.minimum(np.searchsorted(forbidden, keys), forbidden.size - 1)  # forbidden holds the targets
        ok = (block >= 0) & (forbidden[pos] != keys) & (weights[np.maximum(block, 0)] > 0)
        first = np.zeros(block.size, dtype=bool)  # first occurrence of each id within its row; +1 keeps -1
        row_keys = pending[:, None] * (num_items + 1) + block + 1  # padding inside its own row's key range
        first[np.unique(row_keys.ravel(), return_index=True)[1]] = True
        ok &= first.reshape(block.shape)
        take = np.argsort(~ok, axis=1, kind="stable")[:, :n]  # valid positions first, in draw order
        chosen = np.take_along_axis(block, take, axis=1)
        valid = np.take_along_axis(ok, take, axis=1)
        out[pending] = np.where(valid, chosen, -1)
        pending = pending[~valid.all(axis=1)]
    return out


def negatives_fingerprint(
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    n: int,
    strategy: str,
    seed: int,
    popularity: np.ndarray | None = None,
    exclude_ids: Sequence[int] = (),
) -> str:
    """sha256 over everything that determines the negatives (histories, targets, V, n, strategy, seed...)."""
    h = hashlib.sha256()
    h.update(
        f"v{_FORMAT_VERSION}|{num_items}|{n}|{strategy}|{seed}|{sorted(int(i) for i in exclude_ids)}".encode()
    )
    h.update(np.fromiter((len(x) for x in histories), dtype=np.int64, count=len(histories)).tobytes())
    for x in histories:
        h.update(np.asarray(x, dtype=np.int64).tobytes())
    h.update(np.asarray(targets, dtype=np.int64).tobytes())
    if popularity is not None:
        h.update(np.asarray(popularity, dtype=np.float64).tobytes())
    return h.hexdigest()


def save_negatives(path: str | Path, negatives: np.ndarray, fingerprint: str) -> None:
    """Write negatives (U, N) and the fingerprint of their inputs to an .npz file."""
    np.savez_compressed(Path(path), negatives=np.asarray(negatives, dtype=np.int64), fingerprint=fingerprint)


def load_negatives(path: str | Path, fingerprint: str) -> np.ndarray:
    """Read negatives saved by `save_negatives`; raise if they were drawn from different inputs."""
    with np.load(Path(path)) as data:
        if "negatives" not in data or "fingerprint" not in data:
            raise ValueError(
                f"{path}: expected arrays 'negatives' and 'fingerprint' (written by save_negatives)"
            )
        stored = str(data["fingerprint"])
        if stored != fingerprint:
            raise ValueError(
                f"{path}: negatives were drawn from different inputs (fingerprint {stored[:12]}... != "
                f"{fingerprint[:12]}...); the split, catalogue, n, strategy or seed changed: delete it to redraw"
            )
        return data["negatives"]


def load_or_sample_negatives(
    path: str | Path,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    n: int = 100,
    strategy: str = "uniform",
    popularity: np.ndarray | None = None,
    seed: int = 0,
    exclude_ids: Sequence[int] = (),
) -> np.ndarray:
    """Reload the negatives at `path` if they match these inputs, else draw them once and save them there."""
    fp = negatives_fingerprint(histories, targets, num_items, n, strategy, seed, popularity, exclude_ids)
    if Path(path).exists():
        return load_negatives(path, fp)
    negatives = sample_negatives(histories, targets, num_items, n, strategy, popularity, seed, exclude_ids)
    save_negatives(path, negatives, fp)
    return negatives


def corrected_metric_table(
    metric: Callable[[np.ndarray], np.ndarray],
    num_items: int,
    n: int,
    gamma: float = 0.01,
    rank_prior: np.ndarray | None = None,
) -> np.ndarray:
    """Krichene & Rendle (2020) BV-corrected value c[r - 1] for every sampled rank r in 1..n+1 -> (n + 1,).

    With uniform sampling of n negatives (with replacement, the paper's model) a target whose full rank is R
    among V items gets sampled rank r with r - 1 ~ Binomial(n, (R - 1) / (V - 1)). The correction picks c
    minimising sum_R p(R) [(M(R) - E[c_r | R])^2 + gamma Var(c_r | R)], where M is the full-ranking metric
    (e.g. `lambda R: (R <= 10) / np.log2(R + 1)` for NDCG@10) and p(R) the prior over full ranks (uniform
    by default). gamma = 0 is the minimal-bias estimator; the paper finds a small gamma (0.01) best.
    Estimate: mean over users of c[sampled_rank - 1]. Only valid for uniform sampling.
    """
    full = np.arange(1, num_items + 1)  # (V,) full ranks R
    prior = (
        np.full(num_items, 1.0 / num_items)
        if rank_prior is None
        else np.asarray(rank_prior, dtype=np.float64)
    )
    a = binom.pmf(
        np.arange(n + 1)[None, :], n, ((full - 1) / max(num_items - 1, 1))[:, None]
    )  # (V, n+1) p(r|R)
    target = np.asarray(metric(full), dtype=np.float64)  # (V,)
    # quadratic in c: c^T [(1 - gamma) A^T P A + gamma diag(A^T p)] c - 2 (A^T P M)^T c
    lhs = (1 - gamma) * a.T @ (prior[:, None] * a) + gamma * np.diag(a.T @ prior)
    rhs = a.T @ (prior * target)
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
