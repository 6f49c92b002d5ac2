import numpy as np
import pytest

from seqbert.evaluation.protocols import (
    corrected_metric_table,
    load_negatives,
    load_or_sample_negatives,
    negatives_fingerprint,
    sample_negatives,
    save_negatives,
)

V = 61


def _setup(users=29, seed=0):
    rng = np.random.default_rng(seed)
    histories = [
        rng.choice(np.arange(1, V), size=int(rng.integers(0, 40)), replace=False) for _ in range(users)
    ]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, V), h)) for h in histories])
    return histories, targets


@pytest.mark.parametrize("strategy", ["uniform", "popularity"])
def test_negatives_are_distinct_unseen_and_deterministic(strategy):
    histories, targets = _setup()
    pop = np.arange(V, dtype=float) % 7  # ids divisible by 7 have weight 0 and must never be drawn
    neg = sample_negatives(
        histories, targets, V, n=15, strategy=strategy, popularity=pop, seed=3, exclude_ids=(0,)
    )
    assert neg.shape == (29, 15) and neg.dtype == np.int64
    for u in range(29):
        row = set(neg[u].tolist())
        assert len(row) == 15
        assert not row & set(histories[u].tolist())
        assert targets[u] not in row and 0 not in row
        if strategy == "popularity":
            assert all(i % 7 for i in row)
    again = sample_negatives(
        histories, targets, V, n=15, strategy=strategy, popularity=pop, seed=3, exclude_ids=(0,)
    )
    np.testing.assert_array_equal(neg, again)
    other = sample_negatives(
        histories, targets, V, n=15, strategy=strategy, popularity=pop, seed=4, exclude_ids=(0,)
    )
    assert (neg != other).any()


def test_popularity_sampling_follows_weights():
    histories, targets = [np.array([], dtype=np.int64)] * 4000, np.zeros(4000, dtype=np.int64)
    pop = np.array([0.0, 1.0, 2.0, 5.0])  # one draw per user from {1, 2, 3} with weights 1:2:5
    neg = sample_negatives(histories, targets, 4, n=1, strategy="popularity", popularity=pop, seed=0)
    freq = np.bincount(neg[:, 0], minlength=4)[1:] / 4000
    np.testing.assert_allclose(freq, [1 / 8, 2 / 8, 5 / 8], atol=0.03)  # ~4 standard errors


def test_infeasible_user_and_bad_arguments_raise():
    histories, targets = [np.arange(1, 9)], np.array([9])
    with pytest.raises(ValueError, match="user 0 has only 1 items"):
        sample_negatives(histories, targets, 11, n=2, exclude_ids=(0,))
    with pytest.raises(ValueError, match="strategy"):
        sample_negatives(histories, targets, 11, n=1, strategy="zipf")
    with pytest.raises(ValueError, match="popularity"):
        sample_negatives(histories, targets, 11, n=1, strategy="popularity")


def test_save_load_and_fingerprint_mismatch(tmp_path):
    histories, targets = _setup()
    path = tmp_path / "negatives.npz"
    neg = load_or_sample_negatives(path, histories, targets, V, n=10, seed=1, exclude_ids=(0,))
    assert path.exists()
    np.testing.assert_array_equal(
        load_or_sample_negatives(path, histories, targets, V, n=10, seed=1, exclude_ids=(0,)), neg
    )
    with pytest.raises(ValueError, match="different inputs"):
        load_or_sample_negatives(path, histories, targets, V, n=10, seed=2, exclude_ids=(0,))
    changed = targets.copy()
    changed[0] = histories[0][0] if len(histories[0]) else (targets[0] % (V - 1)) + 1
    fp = negatives_fingerprint(histories, changed, V, 10, "uniform", 1, exclude_ids=(0,))
    with pytest.raises(ValueError, match="different inputs"):
        load_negatives(path, fp)
    save_negatives(tmp_path / "b.npz", neg, "abc")
    np.testing.assert_array_equal(load_negatives(tmp_path / "b.npz", "abc"), neg)


def test_bv_correction_reduces_bias_of_sampled_ndcg():
    rng = np.random.default_rng(0)
    num_items, n = 500, 50
    ndcg10 = lambda r: np.where(r <= 10, 1 / np.log2(r + 1), 0.0)  # noqa: E731
    full_ranks = np.minimum(rng.geometric(0.02, size=20000), num_items)  # a decent model: many top ranks
    sampled = 1 + rng.binomial(n, (full_ranks - 1) / (num_items - 1))  # uniform negatives, the paper's model
    truth, naive = ndcg10(full_ranks).mean(), ndcg10(sampled).mean()
    table = corrected_metric_table(ndcg10, num_items, n, gamma=0.01)
    corrected = table[sampled - 1].mean()
    assert table.shape == (n + 1,)
    assert abs(corrected - truth) < 0.5 * abs(naive - truth)
