import numpy as np
import pytest
import torch

from seqbert.evaluation.metrics import (
    average_precision,
    coverage,
    evaluate_ranked,
    ideal_gains,
    intra_list_diversity,
    mean_metrics,
    ndcg,
    novelty,
    order_by_score,
    pessimistic_rank,
    popularity_bias,
    relevance_gains,
    single_target_metrics,
)

# One query, ranked [3, 1, 4, 2, 5]; relevant {1, 2}: relevant at positions 2 and 4.
RANKED = np.array([[3, 1, 4, 2, 5]])
REL_IDS = np.array([[1, 2]])


def test_hand_computed_binary_table():
    m = mean_metrics(evaluate_ranked(RANKED, REL_IDS, ks=(1, 2, 5)))
    assert m["hr@1"] == 0.0 and m["hr@2"] == 1.0
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["recall@2"] == pytest.approx(1 / 2) and m["recall@5"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 2)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)  # precision at each relevant position / |Rel|
    assert m["map@2"] == pytest.approx((1 / 2) / 2)
    # DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068; IDCG = 1 + 1/log2(3) = 1.63093
    assert m["ndcg@5"] == pytest.approx(1.06161 / 1.63093, abs=1e-5)
    assert m["ndcg@2"] == pytest.approx(0.63093 / 1.63093, abs=1e-5)


def test_hand_computed_graded_gains():
    grades = np.array([[3.0, 1.0]])
    gains = relevance_gains(RANKED, REL_IDS, grades)
    np.testing.assert_array_equal(gains, [[0, 3, 0, 1, 0]])
    ideal = ideal_gains(grades)
    # linear: DCG = 3/log2(3) + 1/log2(5) = 2.32347, IDCG = 3 + 1/log2(3) = 3.63093
    assert ndcg(gains, ideal, 5)[0] == pytest.approx(2.32347 / 3.63093, abs=1e-5)
    # exponential 2^g - 1: DCG = 7/log2(3) + 1/log2(5) = 4.84718, IDCG = 7 + 1/log2(3) = 7.63093
    assert ndcg(gains, ideal, 5, exponential=True)[0] == pytest.approx(4.84718 / 7.63093, abs=1e-5)


def test_empty_relevance_is_zero_and_counted():
    ranked = np.array([[1, 2, 3], [1, 2, 3]])
    rel = np.array([[2, -1], [7, 8]])
    grades = np.array([[1.0, 0.0], [0.0, 0.0]])  # second query: judged, but nothing relevant
    per = evaluate_ranked(ranked, rel, grades, ks=(3,))
    for name, v in per.items():
        assert v[1] == 0.0, name
    assert mean_metrics(per)["hr@3"] == 0.5  # the empty query still counts in the mean


def test_padding_and_short_lists():
    ranked = np.array([[5, -1, -1]])
    per = evaluate_ranked(ranked, np.array([[5, -1]]), ks=(3,))
    assert per["precision@3"][0] == pytest.approx(1 / 3)  # divide by k, not by the list length
    assert per["ndcg@3"][0] == 1.0


def test_search_path_equals_broadcast_path(monkeypatch):
    rng = np.random.default_rng(3)
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(40)])
    rel = np.stack([rng.permutation(50)[:7] for _ in range(40)])
    grades = rng.integers(0, 4, size=rel.shape).astype(float)
    fast = relevance_gains(ranked, rel, grades)
    monkeypatch.setattr("seqbert.evaluation.metrics._BROADCAST_LIMIT", 0)
    np.testing.assert_array_equal(relevance_gains(ranked, rel, grades), fast)


def _random_cases(rng, num_cases):
    """Queries with 1..30 candidates, integer scores (many ties), grades 0..3, ~10% with no relevant doc."""
    cases = []
    for _ in range(num_cases):
        n = int(rng.integers(1, 31))
        docs = rng.permutation(100)[:n]
        scores = rng.integers(0, 6, size=n).astype(float)
        judged = rng.permutation(100)[: int(rng.integers(1, 12))]
        grades = rng.integers(0, 4, size=len(judged)).astype(float)
        if rng.random() < 0.1:
            grades[:] = 0
        cases.append((docs, scores, judged, grades))
    return cases


def _pad(rows, fill):
    width = max(len(r) for r in rows)
    return np.stack([np.concatenate([r, np.full(width - len(r), fill)]) for r in rows])


@pytest.mark.filterwarnings("ignore::Warning")
def test_parity_with_ranx_on_random_cases_with_ties():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    cases = _random_cases(rng, 1200)
    ids, scores = _pad([c[0] for c in cases], -1), _pad([c[1] for c in cases], -np.inf)
    rel_ids, grades = _pad([c[2] for c in cases], -1), _pad([c[3] for c in cases], 0.0)
    gains = relevance_gains(ids, rel_ids, grades)
    order = order_by_score(ids, scores, gains, ties="pessimistic")
    ranked = np.take_along_axis(ids, order, axis=1)
    ours = evaluate_ranked(ranked, rel_ids, grades, ks=(1, 3, 5, 10))
    ours["ndcg_burges@10"] = evaluate_ranked(ranked, rel_ids, grades, ks=(10,), exponential=True)["ndcg@10"]
    # ranx breaks ties arbitrarily; nudging each score down by its gain reproduces the pessimistic order
    qrels = {f"q{i}": {f"d{d}": int(g) for d, g in zip(c[2], c[3])} for i, c in enumerate(cases)}
    run = {}
    for i, c in enumerate(cases):
        g = relevance_gains(c[0][None], c[2][None], c[3][None])[0]
        run[f"q{i}"] = {f"d{d}": float(s - 1e-3 * gi) for d, s, gi in zip(c[0], c[1], g)}
    names = [f"{m}@{k}" for m in ("hit_rate", "recall", "precision", "ndcg", "map") for k in (1, 3, 5, 10)]
    names += ["mrr", "map", "ndcg_burges@10"]
    ref = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), names, return_mean=False, threads=1)
    mine = {n.replace("hit_rate", "hr"): n for n in names}
    keys = [f"q{i}" for i in range(len(cases))]
    order_idx = np.argsort(keys)  # ranx returns queries sorted by id
    for ours_name, ranx_name in mine.items():
        np.testing.assert_allclose(ours[ours_name][order_idx], ref[ranx_name], atol=1e-9, err_msg=ours_name)


def test_tie_rules_bound_each_other():
    ids = np.array([[0, 1, 2, 3]])
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    gains = np.array([[0.0, 1.0, 0.0, 0.0]])
    worst = np.take_along_axis(gains, order_by_score(ids, scores, gains, "pessimistic"), axis=1)
    best = np.take_along_axis(gains, order_by_score(ids, scores, gains, "optimistic"), axis=1)
    by_id = np.take_along_axis(ids, order_by_score(ids, scores, ties="id"), axis=1)
    np.testing.assert_array_equal(worst, [[0, 0, 1, 0]])
    np.testing.assert_array_equal(best, [[1, 0, 0, 0]])
    np.testing.assert_array_equal(by_id, [[2, 1, 0, 3]])  # trec_eval: docid descending within a tie


def test_single_target_table():
    per = single_target_metrics(np.array([1, 3, 11]), ks=(1, 10), truncated_mrr=True)
    np.testing.assert_array_equal(per["hr@1"], [1, 0, 0])
    np.testing.assert_array_equal(per["hr@10"], [1, 1, 0])
    np.testing.assert_allclose(per["ndcg@10"], [1.0, 0.5, 0.0])  # 1/log2(3+1) = 0.5
    np.testing.assert_allclose(per["mrr"], [1.0, 1 / 3, 1 / 11])  # full, not truncated
    np.testing.assert_allclose(per["mrr@10"], [1.0, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="1-based"):
        single_target_metrics(np.array([0]))


def test_single_target_fast_path_equals_general_metrics():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 8, size=(300, 40)).astype(float)  # heavy ties
    target = rng.integers(0, 40, size=300)
    t = scores[np.arange(300), target]
    others = np.where(np.arange(40)[None] == target[:, None], -np.inf, scores)  # drop the target itself
    ranks = pessimistic_rank(torch.from_numpy(others), torch.from_numpy(t)).numpy()
    fast = single_target_metrics(ranks, ks=(1, 5, 10))
    ids = np.tile(np.arange(40), (300, 1))
    gains = (ids == target[:, None]).astype(float)
    ranked = np.take_along_axis(ids, order_by_score(ids, scores, gains), axis=1)
    slow = evaluate_ranked(ranked, target[:, None], ks=(1, 5, 10))
    for name in ("hr@1", "hr@5", "ndcg@10", "mrr"):
        np.testing.assert_allclose(fast[name], slow[name], err_msg=name)


def test_beyond_accuracy_metrics():
    topk = np.array([[0, 1, -1], [1, 2, 3]])
    counts = np.array([10.0, 5.0, 0.0, 20.0])
    assert coverage(topk, catalogue_size=8) == pytest.approx(4 / 8)
    assert coverage(topk, catalogue_size=8, k=1) == pytest.approx(2 / 8)
    np.testing.assert_allclose(popularity_bias(topk, counts), [7.5, (5 + 0 + 20) / 3])
    # p = count / 20 users, unseen items count as 1: -log2(10/20) = 1, -log2(5/20) = 2, -log2(1/20)
    np.testing.assert_allclose(novelty(topk, counts, num_users=20)[0], 1.5)
    np.testing.assert_allclose(novelty(topk, counts, num_users=20)[1], (2 + np.log2(20) + 0) / 3)
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    ild = intra_list_diversity(topk, feats)
    assert ild[0] == pytest.approx(1.0)  # orthogonal pair
    # pairs (1,2): cos 0, (1,3): 1/sqrt2, (2,3): 1/sqrt2 -> mean (1 - cos)
    assert ild[1] == pytest.approx((1 + 2 * (1 - 2**-0.5)) / 3)
    assert np.isnan(intra_list_diversity(np.array([[2, -1]]), feats)[0])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same Q"):
        relevance_gains(np.zeros((2, 3), int), np.zeros((3, 1), int))
    with pytest.raises(ValueError, match="k must be"):
        average_precision(np.zeros((1, 3)), np.ones(1), k=0)
