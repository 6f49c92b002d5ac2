"""Two-stage pipeline evaluation: stage metrics against evaluate_ranked, ordering, errors."""

import numpy as np
import pytest

from seqbert.evaluation.metrics import evaluate_ranked, mean_metrics
from seqbert.pipeline import PipelineConfig, format_report, order_by_scores, run_two_stage

CFG = PipelineConfig(ks=(1, 5, 10), batch_size=7, latency_queries=5, progress=False)


def test_order_by_scores_is_stable_and_puts_padding_last():
    cands = np.array([[5, 6, 7, -1], [1, 2, 3, 4]])
    scores = np.array([[1.0, 3.0, 1.0, 9.0], [np.nan, 0.5, 0.5, -np.inf]])
    out = order_by_scores(cands, scores)
    # 6 first, then the tie 5/7 in retriever order, padding last despite its high score
    assert out[0].tolist() == [6, 5, 7, -1]
    # NaN and -inf both rank last among real candidates, stable among themselves (1 before 4)
    assert out[1].tolist() == [2, 3, 1, 4]
    with pytest.raises(ValueError, match="scores"):
        order_by_scores(cands, scores[:, :3])


def _world(Q=40, V=60, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(Q, V))  # the "expensive" model's scores
    noisy = truth + rng.normal(scale=1.0, size=(Q, V))  # a cheap, worse retriever
    targets = truth.argmax(1)[:, None]  # (Q, 1) the expensive model is always right
    queries = list(range(Q))
    return truth, noisy, targets, queries


def test_rerank_with_the_reference_model_recovers_full_ranking_when_depth_covers_it():
    truth, noisy, targets, queries = _world()
    V = truth.shape[1]

    def retrieve(q, scores=noisy, k=V):
        return np.argsort(-scores[q], axis=1, kind="stable")[:, :k]

    def rerank(q, cands):
        return np.take_along_axis(truth[q], cands, axis=1)

    rep = run_two_stage(queries, targets, retrieve, rerank, lambda q: retrieve(q, truth, 20), config=CFG)
    assert rep["depth"] == V
    assert rep["stages"]["retrieve"][f"recall@{V}"] == 1.0  # the whole catalogue
    assert rep["stages"]["rerank"]["ndcg@10"] == rep["stages"]["full"]["ndcg@10"] == 1.0
    assert rep["overlap@10"] == 1.0 and rep["ndcg@10_relative_gap"] == 0.0
    assert rep["cost_ratio"] > 0 and rep["stages"]["rerank"]["pipeline_latency"]["p50_ms"] > 0
    assert "cost ratio" in format_report(rep)


def test_retrieval_metrics_equal_evaluate_ranked_and_recall_bounds_the_reranker():
    truth, noisy, targets, queries = _world(seed=1)
    K = 8

    def retrieve(q):
        return np.argsort(-noisy[q], axis=1, kind="stable")[:, :K]

    rep = run_two_stage(
        queries, targets, retrieve, lambda q, c: np.take_along_axis(truth[q], c, axis=1), config=CFG
    )
    cands = retrieve(queries)
    expect = mean_metrics(evaluate_ranked(cands, targets, ks=(1, 5, K)))
    assert rep["stages"]["retrieve"]["ndcg@5"] == pytest.approx(expect["ndcg@5"])
    assert rep["stages"]["retrieve"][f"recall@{K}"] == pytest.approx(expect[f"recall@{K}"])
    # hand count: the reranker (always right when the target is in the list) hits exactly the recalled ones
    in_list = np.mean([targets[i, 0] in cands[i] for i in range(len(queries))])
    assert rep["stages"]["rerank"]["hr@1"] == pytest.approx(in_list)
    assert 0 < in_list < 1  # the world is hard enough for the check to mean something


def test_bad_stage_outputs_are_named():
    _, _, targets, queries = _world()
    with pytest.raises(ValueError, match="retrieve must return integer ids"):
        run_two_stage(queries, targets, lambda q: np.zeros((len(q), 3)), config=CFG)
    with pytest.raises(ValueError, match="rel_ids"):
        run_two_stage(queries, targets[:3], lambda q: np.zeros((len(q), 3), dtype=int), config=CFG)
    with pytest.raises(ValueError, match="scores"):
        run_two_stage(
            queries,
            targets,
            lambda q: np.zeros((len(q), 3), dtype=int),
            lambda q, c: np.zeros((len(q), 2)),
            config=CFG,
        )
    with pytest.raises(ValueError, match="batch_size"):
        PipelineConfig(batch_size=0)
