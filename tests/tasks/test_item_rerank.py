"""Cross-attention item reranker: candidates are scored independently, hard negatives are clean."""

import numpy as np
import pytest
import torch

from seqbert.data.vocab import FIRST_ITEM_ID, PAD_ID
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import RecConfig, SeqRecommender, candidate_scores, score_histories
from seqbert.tasks.item_rerank import CrossRecReranker, cross_reranker, hard_negative_examples, history_tensor

V = FIRST_ITEM_ID + 29


def recommender(max_len=10, layout="bert"):
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                      max_len=max_len, type_vocab_size=0, layout=layout)  # fmt: skip
    return SeqRecommender(bert, RecConfig(max_len=max_len)).eval()


def test_candidates_are_scored_independently_of_each_other():
    model = CrossRecReranker.from_recommender(recommender()).eval()
    torch.nn.init.normal_(model.gate, std=0.5)  # open the gate: candidates' identities enter the encoder
    hist = history_tensor([np.array([3, 4, 5]), np.array([7, 8, 9, 10, 11, 12])], model.max_len)  # (2, 6)
    cands = torch.tensor([[9, 3, 20, -1], [2, 30, 6, 14]])
    together = model({"history": hist, "candidates": cands}).scores  # (2, 4)
    for k in range(4):
        alone = model({"history": hist, "candidates": cands[:, k : k + 1]}).scores[:, 0]
        real = cands[:, k] >= 0
        torch.testing.assert_close(together[real, k], alone[real], rtol=0, atol=1e-5)
    assert torch.isneginf(together[0, 3])
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        model({"history": hist, "candidates": cands[:, perm]}).scores, together[:, perm]
    )
    # extra leading padding (dropped as shared padding) changes nothing
    padded = torch.cat([torch.full((2, 3), PAD_ID), hist], dim=1)
    torch.testing.assert_close(
        model({"history": padded, "candidates": cands}).scores, together, atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="at most"):
        model({"history": torch.ones(2, 10, dtype=torch.long), "candidates": cands})


def test_pipeline_reranker_batches_match_one_pass():
    model = CrossRecReranker.from_recommender(recommender()).eval()
    hists = [np.array([3, 4]), np.array([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])]  # the second is truncated
    cands = np.array([[9, 10, 11], [2, 3, 4]])
    got = cross_reranker(model, batch_size=1)(hists, cands)
    ref = model(
        {"history": history_tensor(hists, model.max_len), "candidates": torch.from_numpy(cands)}
    ).scores
    np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-5)


def test_hard_negatives_exclude_seen_items_and_the_positive():
    teacher = recommender()
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(np.arange(FIRST_ITEM_ID, V))[: rng.integers(2, 15)] for _ in range(20)]
    scorer = lambda h: score_histories(teacher, h)  # noqa: E731
    rows = hard_negative_examples(
        seqs, scorer, teacher.rec_config.max_len, cuts_per_user=3, num_negatives=4, pool=8
    )
    assert rows["candidates"].shape[1] == 5 and (rows["labels"] == 0).all()
    assert 0 < len(rows["labels"]) < 3 * 20  # rows whose positive is outside the teacher's top 8 are dropped
    for hist, cand in zip(rows["history"], rows["candidates"]):
        h = set(hist[hist != PAD_ID].tolist())
        negs = cand[1:].tolist()
        assert len(set(negs)) == 4 and int(cand[0]) not in negs
        assert not (h & set(negs)) and min(negs) >= FIRST_ITEM_ID
        scores = score_histories(teacher, [hist[hist != PAD_ID].numpy()])[0]
        scores[list(h)] = float("-inf")
        top8 = set(scores.topk(8).indices.tolist())
        assert int(cand[0]) in top8 and set(negs) <= top8  # the positive and negatives: the teacher's top 8
        # the history is the (at most max_len - 1 = 9) items just before the positive in a training sequence
        assert any(s[t] == int(cand[0]) and set(s[max(0, t - 9) : t].tolist()) == h
                   for s in seqs for t in range(1, len(s)))  # fmt: skip
    with pytest.raises(ValueError, match="two items"):
        hard_negative_examples([np.array([3])], None, 10, 1, 1, 2)


def test_training_on_hard_negatives_reduces_the_loss():
    teacher = recommender()
    rng = np.random.default_rng(1)
    seqs = [
        np.arange(FIRST_ITEM_ID + s, FIRST_ITEM_ID + s + 8) % (V - FIRST_ITEM_ID) + FIRST_ITEM_ID
        for s in rng.integers(0, 20, size=64)
    ]  # fmt: skip  (a planted "next id" chain)
    rows = hard_negative_examples(seqs, lambda h: score_histories(teacher, h), 10, 3, 5, 10)
    model = CrossRecReranker.from_recommender(teacher)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        idx = torch.from_numpy(rng.choice(len(rows["labels"]), 32))
        loss = model({k: v[idx] for k, v in rows.items()}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.parametrize("layout", ["bert", "sasrec"])
def test_a_fresh_reranker_scores_exactly_like_its_bert4rec(layout):
    teacher = recommender(layout=layout)
    model = CrossRecReranker.from_recommender(teacher).eval()
    hists = [np.array([3, 4, 5]), np.array([7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17])]
    cands = np.array([[9, 3, 20, -1], [2, 30, 6, 14]])
    got = cross_reranker(model)(hists, cands)
    want = candidate_scores(teacher, hists, cands).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the copy is independent of the teacher and keeps its own weight tying
    assert model.head.decoder.weight is model.bert.embeddings.word.weight
    assert model.bert.embeddings.word.weight is not teacher.bert.embeddings.word.weight
