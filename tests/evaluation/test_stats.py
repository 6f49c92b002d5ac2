import numpy as np
import pytest
from scipy import stats as sps

from seqbert.evaluation.stats import bootstrap_ci, bootstrap_cis, compare_runs, holm, paired_test


def test_bootstrap_matches_a_plain_loop_and_is_chunk_invariant(monkeypatch):
    values = np.random.default_rng(0).random(37)
    ci = bootstrap_ci(values, n_resamples=200, level=0.9, seed=5)
    rng = np.random.default_rng(5)  # the same stream, one resample at a time
    means = [values[rng.integers(0, 37, size=37)].mean() for _ in range(200)]
    assert ci.low == pytest.approx(np.quantile(means, 0.05))
    assert ci.high == pytest.approx(np.quantile(means, 0.95))
    assert ci.mean == pytest.approx(values.mean()) and ci.n == 37 and ci.level == 0.9
    monkeypatch.setattr("seqbert.evaluation.stats._CHUNK_CELLS", 37 * 3)  # 3 resamples per chunk
    chunked = bootstrap_ci(values, n_resamples=200, level=0.9, seed=5)
    assert (chunked.low, chunked.high) == pytest.approx((ci.low, ci.high))


def test_bootstrap_agrees_with_scipy_and_shares_resamples():
    values = np.random.default_rng(1).binomial(1, 0.3, size=500).astype(float)
    ci = bootstrap_ci(values, n_resamples=2000, seed=0)
    ref = sps.bootstrap(
        (values,), np.mean, n_resamples=2000, method="percentile", random_state=0
    ).confidence_interval
    assert ci.low == pytest.approx(ref.low, abs=0.01) and ci.high == pytest.approx(ref.high, abs=0.01)
    both = bootstrap_cis({"a": values, "b": 2 * values}, n_resamples=300, seed=2)
    assert both["b"].low == pytest.approx(2 * both["a"].low)  # same resamples for every metric
    assert np.isnan(bootstrap_ci(np.zeros(0)).mean)


def test_paired_tests_against_scipy_and_edge_cases():
    rng = np.random.default_rng(2)
    a = rng.random(50)
    b = a - 0.05 + 0.1 * rng.random(50)
    assert paired_test(a, b, "t")[1] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert paired_test(a, b, "wilcoxon")[1] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert paired_test(a, a) == (0.0, 1.0)
    assert paired_test(np.arange(5.0) + 1, np.arange(5.0), "t")[1] == 0.0
    with pytest.raises(ValueError, match="same 1-D shape"):
        paired_test(a, b[:3])
    with pytest.raises(ValueError, match="'t' or 'wilcoxon'"):
        paired_test(a, b, "z")


def test_holm_hand_table():
    # sorted p: 0.01*3 = 0.03, 0.02*2 = 0.04, 0.04*1 = 0.04 (monotone); original order restored
    np.testing.assert_allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])


def test_compare_runs_marks_only_real_differences():
    rng = np.random.default_rng(3)
    base = rng.binomial(1, 0.3, size=400).astype(float)
    better = np.maximum(base, rng.binomial(1, 0.3, size=400))  # strictly dominates on ~20% of queries
    noise = np.where(rng.random(400) < 0.02, 1 - base, base)
    runs = {"base": {"hr@10": base}, "better": {"hr@10": better}, "noise": {"hr@10": noise}}
    rows = {c.run: c for c in compare_runs(runs, "base", ["hr@10"], n_resamples=300)}
    assert rows["better"].significant and rows["better"].diff > 0 and rows["better"].diff_low > 0
    assert not rows["noise"].significant
    assert rows["better"].n == 400 and rows["better"].p_holm >= rows["better"].p_value
    with pytest.raises(ValueError, match="baseline"):
        compare_runs(runs, "missing", ["hr@10"])
