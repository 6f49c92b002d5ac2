import warnings

import numpy as np
import pytest
import torch

from seqbert.evaluation.protocols import sample_negatives
from seqbert.evaluation.ranking import evaluate_ranking, repeat_rate

V = 23  # odd-sized catalogue; id 0 is padding, id 22 a mask token


def _table_scorer(table: torch.Tensor):
    """score_fn over users in order: returns views of one (U, V) table, to catch in-place writes."""
    state = {"next": 0}

    def score_fn(histories):
        start = state["next"]
        state["next"] += len(histories)
        return table[start : start + len(histories)]

    return score_fn


def _random_setup(seed=0, users=37):
    rng = np.random.default_rng(seed)
    histories = [
        rng.choice(np.arange(1, 22), size=int(rng.integers(0, 12)), replace=False) for _ in range(users)
    ]
    targets = rng.integers(1, 22, size=users)
    table = torch.from_numpy(rng.integers(0, 5, size=(users, V)).astype(np.float32))  # many ties
    return histories, targets, table


def _reference_full_rank(scores, history, target, exclude, seen="target_exempt"):
    """The rank by definition: a loop over the items that stay under the `seen` protocol."""
    hist = set(history.tolist())
    if seen == "strict" and target in hist:
        return np.inf  # removed with the history: a miss
    kept = (lambda j: True) if seen == "none" else (lambda j: j == target or j not in hist)
    valid = [j for j in range(V) if j not in exclude and kept(j)]
    t = scores[target]
    return 1 + sum(scores[j] > t for j in valid) + sum(scores[j] == t for j in valid if j != target)


def test_hand_computed_full_rank():
    # item: 0(pad) 1 2 3(target) 4 5 6; history {1, 2} outscores everything but is excluded
    scores = torch.tensor([[9.0, 10.0, 10.0, 5.0, 5.0, 7.0, 1.0]])
    res = evaluate_ranking(
        lambda h: scores, [np.array([1, 2])], np.array([3]), 7, exclude_ids=(0,), ks=(1, 5)
    )
    assert res.ranks[0] == 3  # 1 + #{5: 7 > 5} + #{4: tie with 5}
    assert res.metrics["hr@1"] == 0.0 and res.metrics["hr@5"] == 1.0
    assert res.metrics["ndcg@5"] == pytest.approx(0.5)  # 1 / log2(3 + 1)
    assert res.metrics["mrr"] == pytest.approx(1 / 3)
    assert res.topk[0, :4].tolist() == [5, 3, 4, 6] or res.topk[0, :4].tolist() == [5, 4, 3, 6]
    assert res.topk[0, 4:].tolist() == [-1] * 6  # only 4 items remain after exclusions
    assert res.metrics["coverage@10"] == pytest.approx(4 / 6)  # catalogue = 7 ids minus the pad id


@pytest.mark.parametrize("batch_size", [1, 5, 64])
@pytest.mark.parametrize("seen", ["strict", "none", "target_exempt"])
def test_full_protocol_matches_reference_loop(batch_size, seen):
    histories, targets, table = _random_setup()
    before = table.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # target_exempt warns
        res = evaluate_ranking(
            _table_scorer(table), histories, targets, V, batch_size=batch_size, exclude_ids=(0, 22),
            exclude_seen=seen,
        )  # fmt: skip
    torch.testing.assert_close(table, before)  # the caller's scores are not modified
    expected = [
        _reference_full_rank(table[u].numpy(), histories[u], targets[u], {0, 22}, seen) for u in range(37)
    ]
    np.testing.assert_array_equal(res.ranks, expected)
    repeats = [targets[u] in set(histories[u].tolist()) for u in range(37)]
    assert res.exclude_seen == seen and res.repeat_rate == pytest.approx(np.mean(repeats))
    assert repeat_rate(histories, targets) == pytest.approx(np.mean(repeats))
    assert 0 < sum(repeats) < 37  # both kinds of user are tested
    for u in range(37):  # top-k never holds an excluded item
        hist = set(histories[u].tolist())
        banned = {"strict": hist, "none": set(), "target_exempt": hist - {targets[u]}}[seen] | {0, 22}
        assert not banned & set(res.topk[u].tolist())


def test_seen_protocols_by_hand():
    # item 2 (the target) was seen, and so was item 1, which outscores everything
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    hist, tgt = [np.array([1, 2])], np.array([2])
    strict = evaluate_ranking(lambda h: scores, hist, tgt, 4, ks=(1, 3))
    assert strict.ranks[0] == np.inf and strict.exclude_seen == "strict"  # default: a seen target is a miss
    assert strict.metrics["hr@3"] == 0.0 and strict.metrics["mrr"] == 0.0 and strict.repeat_rate == 1.0
    assert 2 not in strict.topk[0] and 1 not in strict.topk[0]
    assert evaluate_ranking(lambda h: scores, hist, tgt, 4, exclude_seen=True).ranks[0] == np.inf
    for flag in (False, "none"):  # everything competes
        none = evaluate_ranking(lambda h: scores, hist, tgt, 4, exclude_seen=flag)
        assert none.ranks[0] == 2 and none.exclude_seen == "none"
    with pytest.warns(UserWarning, match="target_exempt"):
        exempt = evaluate_ranking(lambda h: scores, hist, tgt, 4, exclude_seen="target_exempt")
    assert exempt.ranks[0] == 1  # item 1 removed, the seen target kept: the leak
    assert exempt.settings["exclude_seen"] == "target_exempt"
    with pytest.raises(ValueError, match="exclude_seen must be"):
        evaluate_ranking(lambda h: scores, hist, tgt, 4, exclude_seen="sometimes")
    negatives = np.array([[3]])
    sampled = evaluate_ranking(lambda h: scores, hist, tgt, 4, protocol="sampled", candidates=negatives)
    assert sampled.ranks[0] == np.inf and 2 not in sampled.topk[0]  # strict holds for sampled too


def test_minus_inf_target_gets_the_worst_valid_rank():
    scores = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, float("-inf")]])
    res = evaluate_ranking(lambda h: scores, [np.array([3])], np.array([2]), 5, exclude_ids=(0,))
    assert res.ranks[0] == 3  # valid: 1, 2, 4 -> tie with 4 counts against the target


def test_sampled_protocol_matches_reference():
    histories, targets, table = _random_setup(seed=1)
    negatives = sample_negatives(histories, targets, V, n=6, seed=0, exclude_ids=(0, 22))
    res = evaluate_ranking(
        _table_scorer(table), histories, targets, V, protocol="sampled", candidates=negatives, batch_size=8
    )
    s = table.numpy()
    t = s[np.arange(37), targets]
    picked = np.take_along_axis(s, negatives, axis=1)
    expected = 1 + (picked > t[:, None]).sum(1) + (picked == t[:, None]).sum(1)
    seen = np.array([targets[u] in set(histories[u].tolist()) for u in range(37)])
    assert seen.any() and not seen.all()
    np.testing.assert_array_equal(res.ranks, np.where(seen, np.inf, expected))  # strict: seen = miss
    assert res.ranks[~seen].max() <= 7
    for u in range(37):  # 7 < 10: padded; a seen target is not listed
        kept = set() if seen[u] else {targets[u]}
        assert set(res.topk[u].tolist()) == set(negatives[u].tolist()) | kept | {-1}


def test_metrics_are_means_of_per_user_vectors():
    histories, targets, table = _random_setup(seed=2)
    res = evaluate_ranking(_table_scorer(table), histories, targets, V, ks=(1, 10))
    assert set(res.metrics) == {"hr@1", "ndcg@1", "hr@10", "ndcg@10", "mrr", "coverage@10"}
    for name, vec in res.per_user.items():
        assert vec.shape == (37,)
        assert res.metrics[name] == pytest.approx(vec.mean())
    assert res.num_users == 37


def test_bad_inputs_raise_clear_errors():
    hist, tgt = [np.array([1])], np.array([2])
    ok = torch.zeros(1, 5)
    with pytest.raises(ValueError, match="expected \\(B=1, num_items=5\\)"):
        evaluate_ranking(lambda h: torch.zeros(1, 4), hist, tgt, 5)
    with pytest.raises(ValueError, match="exclude_ids"):
        evaluate_ranking(lambda h: ok, hist, np.array([0]), 5, exclude_ids=(0,))
    with pytest.raises(ValueError, match="num_items=5"):
        evaluate_ranking(lambda h: ok, hist, np.array([5]), 5)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(lambda h: torch.full((1, 5), float("nan")), hist, tgt, 5)
    with pytest.raises(ValueError, match="contains that user's target"):
        evaluate_ranking(lambda h: ok, hist, tgt, 5, protocol="sampled", candidates=np.array([[2, 3]]))
    with pytest.raises(ValueError, match="needs candidates"):
        evaluate_ranking(lambda h: ok, hist, tgt, 5, protocol="sampled")
    with pytest.raises(ValueError, match="outside"):
        evaluate_ranking(lambda h: ok, [np.array([9])], tgt, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_give_the_same_ranks_as_cpu():
    histories, targets, table = _random_setup(seed=3)
    cpu = evaluate_ranking(_table_scorer(table), histories, targets, V, batch_size=8, exclude_ids=(0, 22))
    gpu = evaluate_ranking(
        _table_scorer(table.cuda()), histories, targets, V, batch_size=8, exclude_ids=(0, 22)
    )
    np.testing.assert_array_equal(gpu.ranks, cpu.ranks)
    for name, vec in cpu.per_user.items():  # coverage may differ: topk picks among tied scores freely
        np.testing.assert_array_equal(gpu.per_user[name], vec)


def test_sort_by_length_reorders_calls_but_not_results():
    rng = np.random.default_rng(3)
    V = 30
    histories = [rng.choice(np.arange(1, V), size=rng.integers(1, 12), replace=False) for _ in range(41)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, V), h)) for h in histories])
    weights = torch.from_numpy(rng.normal(size=(V, V)))

    def score_fn(hist):  # depends on the histories only
        return torch.stack([weights[torch.from_numpy(h)].sum(0) for h in hist])

    calls = []

    def recording(hist):
        calls.append([len(h) for h in hist])
        return score_fn(hist)

    negatives = np.stack([rng.choice(np.setdiff1d(np.arange(1, V), [t]), 5, replace=False) for t in targets])
    for protocol, cands in (("full", None), ("sampled", negatives)):
        a = evaluate_ranking(score_fn, histories, targets, V, protocol=protocol, candidates=cands,
                             batch_size=8, exclude_ids=(0,))  # fmt: skip
        b = evaluate_ranking(recording, histories, targets, V, protocol=protocol, candidates=cands,
                             batch_size=8, exclude_ids=(0,), sort_by_length=True)  # fmt: skip
        np.testing.assert_array_equal(a.ranks, b.ranks)
        np.testing.assert_array_equal(a.topk, b.topk)
        assert a.metrics == b.metrics
    lengths = [n for batch in calls[: len(calls) // 2] for n in batch]
    assert lengths == sorted(lengths)  # shortest first, in batches


@pytest.mark.parametrize("protocol", ["full", "sampled"])
def test_workers_give_the_same_results_as_one_caller(protocol):
    """Batches scored on a pool of single-threaded workers: same ranks, top-C, metrics and repeat rate as
    one caller, with grad mode off inside the workers and the caller's torch thread count left as it was."""
    rng = np.random.default_rng(5)
    V = 40
    histories = [rng.choice(np.arange(1, V), size=rng.integers(1, 15), replace=False) for _ in range(53)]
    targets = rng.integers(1, V, size=53)  # some targets are in their history: strict makes them misses
    bag, out = torch.nn.EmbeddingBag(V, 16, mode="mean").eval(), torch.nn.Linear(16, V).eval()
    grad_modes, threads_seen = set(), set()

    def score_fn(hist):  # a model in eval mode: thread-safe, depends on the histories only
        grad_modes.add(torch.is_grad_enabled())
        threads_seen.add(torch.get_num_threads())
        flat = torch.from_numpy(np.concatenate(hist))
        offsets = torch.from_numpy(np.cumsum([0] + [len(h) for h in hist[:-1]]))
        return out(bag(flat, offsets)).round(decimals=1)  # (B, V) with ties

    negatives = np.stack([rng.choice(np.setdiff1d(np.arange(1, V), [t]), 6, replace=False) for t in targets])
    cands = negatives if protocol == "sampled" else None
    kwargs = dict(protocol=protocol, candidates=cands, batch_size=4, exclude_ids=(0,), sort_by_length=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the reference runs single-threaded kernels, as the workers do
        one = evaluate_ranking(score_fn, histories, targets, V, **kwargs)
        torch.set_num_threads(2)
        grad_modes.clear(), threads_seen.clear()
        pool = evaluate_ranking(score_fn, histories, targets, V, workers=3, **kwargs)
        assert torch.get_num_threads() == 2  # the caller's setting, restored
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one.ranks, pool.ranks)
    np.testing.assert_array_equal(one.topk, pool.topk)
    assert one.metrics == pool.metrics and one.repeat_rate == pool.repeat_rate > 0
    assert np.isinf(pool.ranks).any() and np.isfinite(pool.ranks).any()
    assert grad_modes == {False} and threads_seen == {1}  # inside the workers
    with pytest.raises(ValueError, match="workers"):
        evaluate_ranking(score_fn, histories, targets, V, workers=0, **kwargs)
