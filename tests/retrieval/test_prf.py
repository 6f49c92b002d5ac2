"""Pseudo-relevance feedback: Rocchio by hand and on a planted corpus, RM3 by hand, BM25 weighted queries
against plain BM25, the grid search, and the `prf` config of the text_pipeline job (its stages run end to
end in test_scifact_recipes.py)."""

from collections import Counter

import numpy as np
import pytest

from seqbert.retrieval.bm25 import Bm25Index
from seqbert.retrieval.prf import rm3_weights, rocchio, tune_feedback


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


def test_tune_feedback_finds_the_planted_setting_and_a_flat_objective_keeps_plain_retrieval():
    xb = unit([[0.9, 0.44, 0.0], [0.3, 0.95, 0.0], [0.5, 0.0, 0.87]])
    xq = unit([[1.0, 0.0, 0.0]])
    feedback = np.array([[0, 2]])  # the first pass's order

    def b_above_c(k, beta):  # 1 when B outranks C after feedback
        s = (rocchio(xq, xb, feedback[:, :k], beta) @ xb.T)[0]
        return float(s[1] > s[2])

    k, beta, value, table = tune_feedback((1, 2), (0.0, 0.5, 1.0), b_above_c)
    assert (k, beta, value) == (1, 1.0, 1.0)  # k=2 averages in C too; beta 0.5 is not enough
    assert set(table) == {"k=1,beta=0", "k=1,beta=0.5", "k=2,beta=0.5", "k=1,beta=1", "k=2,beta=1"}
    assert tune_feedback((1, 2), (0.0, 1.0), lambda k, b: 0.5)[:3] == (1, 0.0, 0.5)
    with pytest.raises(ValueError, match="ks"):
        tune_feedback((0,), (0.0,), b_above_c)


def test_rm3_weights_by_hand_and_beta_zero_is_the_query():
    docs = [Counter({"a": 2, "b": 2}), Counter({"b": 1, "c": 3})]
    # s = (3, 1) / 4; p(a) = .75 * .5 = .375, p(b) = .75 * .5 + .25 * .25 = .4375, p(c) = .25 * .75 = .1875
    # terms=2 keeps b, a (sum .8125); query "a d": c/|q| = .5 each
    got = rm3_weights(["a", "d"], docs, [3.0, 1.0], terms=2, beta=2.0)
    assert got == pytest.approx({"a": 0.5 + 2 * 0.375 / 0.8125, "d": 0.5, "b": 2 * 0.4375 / 0.8125})
    assert rm3_weights(["a", "d", "a"], docs, [3.0, 1.0], terms=2, beta=0.0) == {"a": 2 / 3, "d": 1 / 3}
    # scores that are not all positive weigh the documents uniformly
    uniform = rm3_weights(["x"], docs, [0.0, -1.0], terms=3, beta=1.0)
    assert uniform == pytest.approx({"x": 1.0, "a": 0.25, "b": 0.25 + 0.125, "c": 0.375})
    with pytest.raises(ValueError, match="beta"):
        rm3_weights(["a"], docs, [1.0, 1.0], terms=2, beta=-1.0)


def test_bm25_weighted_queries_equal_plain_bm25_and_expansion_reaches_an_unmatched_document():
    texts = ["solar panel efficiency", "panel data regression", "photovoltaic solar cells efficiency",
             "photovoltaic module cost", "cats and dogs", "regression of dogs on cats"]  # fmt: skip
    index = Bm25Index(texts, stem=False)
    queries = ["solar efficiency", "cats regression regression"]
    plain = [Counter(t) for t in index.terms(queries)]  # repeated terms count twice, as in bm25s
    rows, scores = index.weighted_search(plain, 6)
    np.testing.assert_allclose(scores, index.scores(queries, rows), rtol=1e-6)
    np.testing.assert_allclose(index.weighted_scores(plain, rows), scores)
    for k in (1, 2, 3):  # the partial selection keeps the full sort's top k, ties by row included
        assert index.weighted_search(plain, k)[0].tolist() == rows[:, :k].tolist()
    ranked = index.search(queries, 6)
    for q in range(2):  # equal as rankings up to ties (bm25s and the weighted path may break ties apart)
        np.testing.assert_allclose(np.sort(index.scores(queries, ranked)[q])[::-1], scores[q], rtol=1e-6)
    # "photovoltaic module cost" shares no term with "solar efficiency": only the feedback finds it
    assert index.weighted_full(plain[0])[3] == 0
    fb_rows = rows[0, :2]
    assert sorted(fb_rows.tolist()) == [0, 2]  # the two "solar ... efficiency" documents
    expanded = rm3_weights(index.terms(queries)[0], index.doc_terms(fb_rows.tolist()), scores[0, :2], 10, 1.0)
    assert index.weighted_full(expanded)[3] > 0
    assert index.weighted_full({"unknown": 1.0}).tolist() == [0.0] * 6


def test_prf_config_is_validated():
    from seqbert.jobs.text_pipeline import PrfConfig, ScoreFusionConfig, TextPipelineJob
    from seqbert.retrieval.embed import DenseEncoderConfig

    two = (DenseEncoderConfig(), DenseEncoderConfig(name="bge", pooling="cls"))
    ok = TextPipelineJob(encoders=two, prf=PrfConfig(sources=("dense", "bge"), fuse=False),
                         fusion=ScoreFusionConfig(sources=("bm25", "dense_prf", "bge_prf")))  # fmt: skip
    assert ok.first_stage_names() == ("bm25", "dense", "bge", "dense_prf", "bge_prf", "hybrid", "fused")
    both = TextPipelineJob(encoders=two, prf=PrfConfig(sources=("bm25", "bge")),
                           fusion=ScoreFusionConfig(sources=("bm25", "dense", "bge")))  # fmt: skip
    assert both.first_stage_names()[-2:] == ("fused", "fused_prf")
    assert both.prf.fused_sources(both.fusion) == ("bm25_prf", "dense", "bge_prf")
    with pytest.raises(ValueError, match="prf.fuse"):
        TextPipelineJob(encoders=two, prf=PrfConfig(sources=("bge",)))  # no fusion to feed back into
    with pytest.raises(ValueError, match="prf.fuse"):  # fusion has no source that prf.sources names
        TextPipelineJob(encoders=two, prf=PrfConfig(sources=("bge",)), fusion=ScoreFusionConfig())
    with pytest.raises(ValueError, match="same split"):
        TextPipelineJob(encoders=two, prf=PrfConfig(split="test", fuse=False))
    only_bm25 = TextPipelineJob(encoders=two, prf=PrfConfig(sources=("bm25",), fuse=False))
    assert only_bm25.first_stage_names()[3] == "bm25_prf"
    with pytest.raises(ValueError, match="prf.sources"):
        TextPipelineJob(prf=PrfConfig(sources=("bge",), fuse=False))  # no encoder named bge
    with pytest.raises(ValueError, match="prf.sources"):
        TextPipelineJob(encoders=(*two, DenseEncoderConfig(name="bge_prf")), prf=PrfConfig(fuse=False))
    with pytest.raises(ValueError, match="not first stages"):
        TextPipelineJob(encoders=two, fusion=ScoreFusionConfig(sources=("bm25", "bge_prf")))  # no prf
    with pytest.raises(ValueError, match="below depth"):
        TextPipelineJob(encoders=two, depth=10, prf=PrfConfig(ks=(10,), fuse=False))
    with pytest.raises(ValueError, match="betas"):
        PrfConfig(betas=(0.0, -1.0))
    with pytest.raises(ValueError, match="ks"):
        PrfConfig(ks=(0, 3))
    with pytest.raises(ValueError, match="terms"):
        PrfConfig(terms=0)
    with pytest.raises(ValueError, match="feedback"):
        PrfConfig(feedback="bm25")
    fused = ScoreFusionConfig(sources=("bm25", "dense", "bge"))
    assert (
        TextPipelineJob(encoders=two, fusion=fused, prf=PrfConfig(feedback="fused")).prf.feedback == "fused"
    )
    with pytest.raises(ValueError, match="feed back into each other"):  # fused would read what it feeds
        TextPipelineJob(encoders=two, prf=PrfConfig(feedback="fused", fuse=False),
                        fusion=ScoreFusionConfig(sources=("bm25", "bge_prf")))  # fmt: skip
