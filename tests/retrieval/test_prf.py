"""Dense pseudo-relevance feedback: Rocchio by hand, on a planted corpus, its grid search, and the
`prf` config of the text_pipeline job (its stages run end to end in test_scifact_recipes.py)."""

import numpy as np
import pytest

from seqbert.retrieval.prf import rocchio, tune_rocchio


def unit(rows) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rocchio_by_hand_and_beta_zero_is_the_query():
    xb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    xq = np.array([[2.0, 0.0], [0.0, 3.0]])
    # q1 = (2, 0) + 0.5 * mean((0, 1), (0.6, 0.8)) = (2.15, 0.45); q2 has no feedback (padding): q2 itself
    want = np.array([[2.15, 0.45], [0.0, 3.0]])
    got = rocchio(xq, xb, np.array([[1, 2], [-1, -1]]), beta=0.5)
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(rocchio(xq, xb, np.array([[1, 2], [0, 1]]), 0.0), unit(xq), rtol=1e-6)
    # padding is left out of the mean, not averaged in as a zero vector
    np.testing.assert_allclose(rocchio(xq, xb, np.array([[1, -1], [2, -1]]), 0.7),
                               rocchio(xq, xb, np.array([[1], [2]]), 0.7), rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="beta"):
        rocchio(xq, xb, np.array([[1], [2]]), -0.1)
    with pytest.raises(ValueError, match="outside the corpus"):
        rocchio(xq, xb, np.array([[1], [3]]), 0.5)


def test_rocchio_pulls_a_relevant_document_up_on_a_planted_corpus():
    # A is the query's clear top hit; B, also relevant, points A's way but far from the query; C is a
    # distractor nearer the query than B. Feedback from A alone must lift B above C.
    xb = unit([[0.9, 0.44, 0.0], [0.3, 0.95, 0.0], [0.5, 0.0, 0.87]])  # A, B, C
    xq = unit([[1.0, 0.0, 0.0]])
    before = np.argsort(-(xq @ xb.T)[0]).tolist()
    after = np.argsort(-(rocchio(xq, xb, np.array([[0]]), beta=1.0) @ xb.T)[0]).tolist()
    assert before == [0, 2, 1] and after == [0, 1, 2]


def test_tune_rocchio_finds_the_planted_setting_and_a_flat_objective_keeps_plain_retrieval():
    xb = unit([[0.9, 0.44, 0.0], [0.3, 0.95, 0.0], [0.5, 0.0, 0.87]])
    xq = unit([[1.0, 0.0, 0.0]])
    feedback = np.array([[0, 2]])  # the first pass's order

    def b_above_c(x):  # 1 when B outranks C
        s = (x @ xb.T)[0]
        return float(s[1] > s[2])

    k, beta, value, table = tune_rocchio(xq, xb, feedback, (1, 2), (0.0, 0.5, 1.0), b_above_c)
    assert (k, beta, value) == (1, 1.0, 1.0)  # k=2 averages in C too; beta 0.5 is not enough
    assert set(table) == {"k=1,beta=0", "k=1,beta=0.5", "k=2,beta=0.5", "k=1,beta=1", "k=2,beta=1"}
    assert tune_rocchio(xq, xb, feedback, (1, 2), (0.0, 1.0), lambda x: 0.5)[:3] == (1, 0.0, 0.5)
    with pytest.raises(ValueError, match="ks"):
        tune_rocchio(xq, xb, feedback, (3,), (0.0,), b_above_c)  # deeper than the feedback given


def test_prf_config_is_validated():
    from seqbert.jobs.text_pipeline import DensePrfConfig, ScoreFusionConfig, TextPipelineJob
    from seqbert.retrieval.embed import DenseEncoderConfig

    two = (DenseEncoderConfig(), DenseEncoderConfig(name="bge", pooling="cls"))
    ok = TextPipelineJob(encoders=two, prf=DensePrfConfig(sources=("dense", "bge")),
                         fusion=ScoreFusionConfig(sources=("bm25", "dense_prf", "bge_prf")))  # fmt: skip
    assert ok.first_stage_names() == ("bm25", "dense", "bge", "dense_prf", "bge_prf", "hybrid", "fused")
    with pytest.raises(ValueError, match="same split"):
        TextPipelineJob(encoders=two, prf=DensePrfConfig(split="test"))
    with pytest.raises(ValueError, match="prf.sources"):
        TextPipelineJob(prf=DensePrfConfig(sources=("bge",)))  # no encoder named bge
    with pytest.raises(ValueError, match="prf.sources"):
        TextPipelineJob(encoders=(*two, DenseEncoderConfig(name="bge_prf")), prf=DensePrfConfig())
    with pytest.raises(ValueError, match="not first stages"):
        TextPipelineJob(encoders=two, fusion=ScoreFusionConfig(sources=("bm25", "bge_prf")))  # no prf
    with pytest.raises(ValueError, match="below depth"):
        TextPipelineJob(encoders=two, depth=10, prf=DensePrfConfig(ks=(10,)))
    with pytest.raises(ValueError, match="betas"):
        DensePrfConfig(betas=(0.0, -1.0))
    with pytest.raises(ValueError, match="ks"):
        DensePrfConfig(ks=(0, 3))
