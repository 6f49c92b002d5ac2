"""Uncertainty for offline metrics: bootstrap intervals, paired tests between runs, Holm correction.

Every function takes per-query vectors (Q,) aligned across runs (query q of run A is query q of run B),
as returned by `metrics.evaluate_ranked`, `metrics.single_target_metrics` or `EvalResult.per_user`, and
every result carries n, the number of queries it rests on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

_CHUNK_CELLS = 2**23  # resamples x queries count cells per chunk (64 MiB of int64), bounds memory


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # queries
    level: float  # e.g. 0.95


def bootstrap_cis(
    per_query: Mapping[str, np.ndarray], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, Interval]:
    """Percentile bootstrap interval of the mean for each vector, all metrics on the same resamples.

    A resample draws Q queries with replacement; its mean is counts @ values / Q, where counts (R, Q) are
    the multiplicities, computed in chunks of resamples so memory stays O(chunk x Q). The interval is the
    [(1 - level) / 2, (1 + level) / 2] quantiles of the R resampled means (Efron & Tibshirani 1993, §13.3).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    names = list(per_query)
    values = (
        np.stack([np.asarray(per_query[m], dtype=np.float64) for m in names]) if names else np.zeros((0, 0))
    )
    m, q = values.shape
    if q == 0:
        return {name: Interval(float("nan"), float("nan"), float("nan"), 0, level) for name in names}
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // q)
    means = np.empty((n_resamples, m))  # (R, M)
    for start in range(0, n_resamples, chunk):
        c = min(chunk, n_resamples - start)
        idx = rng.integers(0, q, size=(c, q)) + np.arange(c)[:, None] * q  # (c, Q) row-offset draws
        counts = np.bincount(idx.ravel(), minlength=c * q).reshape(c, q)  # (c, Q) multiplicities
        means[start : start + c] = counts @ values.T / q  # (c, M)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)  # (M,) each
    centre = values.mean(axis=1)
    return {
        name: Interval(float(centre[i]), float(lo[i]), float(hi[i]), q, level) for i, name in enumerate(names)
    }


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of mean(values) (see `bootstrap_cis`)."""
    return bootstrap_cis({"x": values}, n_resamples, level, seed)["x"]


def paired_test(a: np.ndarray, b: np.ndarray, test: str = "t") -> tuple[float, float]:
    """(statistic, two-sided p) of a paired test on per-query vectors a, b (Q,).

    "t": paired t-test, t = mean(d) / (sd(d) / sqrt(Q)), d = a - b (scipy.stats.ttest_rel).
    "wilcoxon": signed-rank test on the non-zero d (scipy.stats.wilcoxon, zero_method="wilcox").
    Identical runs (all d = 0) give p = 1; a constant non-zero d gives p = 0 for the t-test (t = +-inf).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired vectors need the same 1-D shape, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired test needs at least 2 queries, got {len(a)}")
    d = a - b
    if np.all(d == 0):
        return 0.0, 1.0
    if test == "t":
        if np.all(d == d[0]):
            return float(np.sign(d[0]) * np.inf), 0.0
        res = sps.ttest_rel(a, b)
    elif test == "wilcoxon":
        res = sps.wilcoxon(a, b, zero_method="wilcox")
    else:
        raise ValueError(f"test must be 't' or 'wilcoxon', got {test!r}")
    return float(res.statistic), float(res.pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * (p.size - np.arange(p.size))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty_like(p)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class Comparison:
    metric: str
    run: str
    baseline: str
    n: int  # paired queries
    mean_run: float
    mean_baseline: float
    diff: float  # mean_run - mean_baseline
    diff_low: float  # bootstrap interval of the mean difference
    diff_high: float
    statistic: float
    p_value: float
    p_holm: float
    significant: bool  # p_holm < alpha


def compare_runs(
    per_query: Mapping[str, Mapping[str, np.ndarray]],
    baseline: str,
    metrics: Sequence[str],
    test: str = "t",
    alpha: float = 0.05,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[Comparison]:
    """Compare every run with `baseline` on each metric: paired test + bootstrap CI of the difference.

    per_query: run name -> metric name -> (Q,) vector, queries aligned across runs. Holm's correction is
    applied per metric across the (runs - 1) comparisons with the baseline, the family a reader scans when
    asking "which systems beat the baseline on NDCG@10?".
    """
    if baseline not in per_query:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {sorted(per_query)}")
    others = [r for r in per_query if r != baseline]
    out: list[Comparison] = []
    for metric in metrics:
        base = np.asarray(per_query[baseline][metric], dtype=np.float64)
        rows = []
        for run in others:
            vec = np.asarray(per_query[run][metric], dtype=np.float64)
            if vec.shape != base.shape:
                raise ValueError(
                    f"{run!r} has {len(vec)} queries for {metric} but {baseline!r} has {len(base)}"
                )
            stat, p = paired_test(vec, base, test)
            ci = bootstrap_ci(vec - base, n_resamples, 1 - alpha, seed)
            rows.append((run, vec, stat, p, ci))
        adjusted = holm([r[3] for r in rows])
        for (run, vec, stat, p, ci), p_adj in zip(rows, adjusted):
            out.append(
                Comparison(
                    metric, run, baseline, len(vec), float(vec.mean()), float(base.mean()), ci.mean,
                    ci.low, ci.high, stat, p, float(p_adj), bool(p_adj < alpha),
                )
            )  # fmt: skip
    return out
