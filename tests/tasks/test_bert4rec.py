"""BERT4Rec / SASRec+: windows, cloze collator, losses, inference, no leakage, MostPop."""

import numpy as np
import pytest
import torch

from seqbert.data.interactions import leave_one_out
from seqbert.data.synthetic import markov_sequences
from seqbert.data.vocab import FIRST_ITEM_ID, MASK_ID, PAD_ID, ItemVocab
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.model.bert import BertConfig
from seqbert.model.heads import IGNORE_INDEX
from seqbert.tasks.bert4rec import (
    MostPop,
    RecConfig,
    SeqRecommender,
    candidate_scores,
    make_collate,
    make_inputs,
    query_states,
    score_histories,
    training_windows,
)

V = 2 + 23  # specials + 23 items (odd on purpose)


def small_model(objective="cloze", loss="ce", max_len=9, item_head="transform"):
    rec = RecConfig(
        objective=objective, max_len=max_len, mask_prob=0.3, loss=loss, num_negatives=7, item_head=item_head
    )
    bert = BertConfig(
        vocab_size=V, hidden_size=12, num_layers=1, num_heads=3, intermediate_size=17, max_len=max_len,
        type_vocab_size=0, causal=objective == "next_item",
    )  # fmt: skip
    return SeqRecommender(bert, rec), rec


def seqs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.arange(FIRST_ITEM_ID, V))[:n] for n in lengths]


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
@pytest.mark.parametrize("stride", [0, 3])
def test_windows_keep_every_interaction(objective, stride):
    rec = RecConfig(objective=objective, max_len=5, window_stride=stride)
    data = seqs([1, 4, 5, 6, 13, 23])
    windows = training_windows(data, rec).numpy()
    width = 5 + (objective == "next_item")
    assert windows.shape[1] == width
    for s in data:
        if objective == "next_item" and len(s) < 2:
            continue
        covered = set()
        for w in windows:
            items = w[w != PAD_ID]
            # windows are contiguous pieces of one sequence
            for start in range(len(s) - len(items) + 1):
                if len(items) and np.array_equal(s[start : start + len(items)], items):
                    pairs = (
                        {(a, b) for a, b in zip(items[:-1], items[1:])}
                        if objective == "next_item"
                        else set(items)
                    )
                    covered |= pairs
        wanted = {(a, b) for a, b in zip(s[:-1], s[1:])} if objective == "next_item" else set(s)
        assert wanted <= covered, "an interaction was discarded by windowing"
    # left padding: real items are right-aligned
    for w in windows:
        real = w != PAD_ID
        assert real[-1] and np.all(np.diff(real.astype(int)) >= 0)


def test_cloze_collate_masks_at_least_one_never_all_never_padding():
    rec = RecConfig(max_len=9, mask_prob=0.5, last_item_prob=0.2)
    windows = training_windows(seqs([1, 2, 3, 9, 9, 9, 5, 2] * 8), rec)
    collate = make_collate(rec, V)
    batch = collate({"items": windows}, torch.Generator().manual_seed(0))
    again = collate({"items": windows}, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch), (
        "collate must be a pure function of the generator"
    )
    labelled = batch["labels"] != IGNORE_INDEX
    real = windows != PAD_ID
    assert not (labelled & ~real).any(), "padding was masked"
    assert (labelled.sum(1) >= 1).all()
    n_real = real.sum(1)
    assert ((labelled.sum(1) < n_real) | (n_real == 1)).all(), "a sequence was masked entirely"
    # [MASK]-only replacement: every labelled input is [MASK], every other input unchanged
    assert (batch["input_ids"][labelled] == MASK_ID).all()
    assert torch.equal(batch["input_ids"][~labelled], windows[~labelled])
    assert torch.equal(batch["labels"][labelled], windows[labelled])
    # "last item only" rows exist at this rate and mask exactly the last position
    last_only = (labelled.sum(1) == 1) & labelled[:, -1]
    assert last_only.any()


def test_next_item_collate_targets_are_the_next_items():
    rec = RecConfig(objective="next_item", max_len=6)
    windows = training_windows(seqs([2, 7]), rec)
    batch = make_collate(rec, V)({"items": windows}, torch.Generator().manual_seed(0))
    x, y = batch["input_ids"], batch["labels"]
    for row in range(len(windows)):
        for t in range(x.shape[1] - 1):
            if x[row, t + 1] != PAD_ID and x[row, t] != PAD_ID:
                assert y[row, t] == x[row, t + 1]
        assert (y[row][x[row] == PAD_ID] == IGNORE_INDEX).all()


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "gbce"])
def test_losses_are_finite_and_training_reduces_them(objective, loss):
    torch.manual_seed(0)
    model, rec = small_model(objective, loss)
    windows = training_windows(seqs([9] * 16), rec)
    collate = make_collate(rec, V)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = collate({"items": windows}, torch.Generator().manual_seed(1))
    first = model(batch).loss.item()
    for _ in range(30):
        out = model(batch)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert model(batch).loss.item() < first * 0.8


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "gbce"])
def test_dot_item_head_scores_the_hidden_state_against_the_item_table_and_trains_no_bias(loss):
    torch.manual_seed(0)
    model, rec = small_model("next_item", loss, item_head="dot")
    assert model.head.transform is None and model.head.norm is None
    windows = training_windows(seqs([9] * 8), rec)
    batch = make_collate(rec, V)({"items": windows}, torch.Generator().manual_seed(1))
    bias = model.head.decoder.bias.detach().clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    for _ in range(3):
        model(batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(model.head.decoder.bias, bias)  # never trained
    model.eval()
    histories = seqs([3, 6])
    inputs = make_inputs(histories, rec)
    with torch.no_grad():
        h = model.query_hidden(inputs)  # (B, H)
        expected = h @ model.bert.embeddings.word.weight.T + bias  # (B, V)
        scores = score_histories(model, histories)
        torch.testing.assert_close(query_states(model, histories), h)
    torch.testing.assert_close(scores[:, FIRST_ITEM_ID:], expected[:, FIRST_ITEM_ID:])
    assert torch.isneginf(scores[:, :FIRST_ITEM_ID]).all()
    if loss == "ce":  # the chunked CE equals the plain one over these scores
        model.train(False)
        h_all = model.bert(batch["input_ids"], batch["attention_mask"])  # (B, L, H)
        where = batch["labels"] != IGNORE_INDEX
        logits = model.catalogue_logits(h_all[where])  # (M, V)
        torch.testing.assert_close(
            model(batch).loss, torch.nn.functional.cross_entropy(logits, batch["labels"][where])
        )


def test_specials_are_never_scored():
    model, rec = small_model()
    scores = score_histories(model.eval(), seqs([3, 5]))
    assert scores.shape == (2, V)
    assert torch.isneginf(scores[:, :FIRST_ITEM_ID]).all() and torch.isfinite(scores[:, FIRST_ITEM_ID:]).all()


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
def test_dropping_shared_padding_changes_no_score(objective):
    model, rec = small_model(objective, max_len=12)
    model.eval()
    inputs = make_inputs(seqs([2, 5, 3]), rec)  # the longest uses 5-6 of 12 columns
    assert (inputs["attention_mask"][:, :5] == 0).all()
    untrimmed = model.catalogue_logits(model.bert(inputs["input_ids"], inputs["attention_mask"])[:, -1])
    torch.testing.assert_close(model.score(inputs), untrimmed, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="position offset"):
        model.bert(inputs["input_ids"], inputs["attention_mask"], position_offset=1)


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
def test_training_loss_and_gradients_are_unchanged_by_trimming_shared_padding(objective):
    model, rec = small_model(objective, max_len=12)
    model.eval()  # no dropout: the two paths must agree to rounding
    windows = training_windows(seqs([2, 5, 3, 4]), rec)  # every row uses at most 6 of 12-13 columns
    batch = make_collate(rec, V)({"items": windows}, torch.Generator().manual_seed(0))
    model(batch).loss.backward()
    trimmed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # the untrimmed reference: the encoder over every column, the loss at the labelled positions
    hidden = model.bert(batch["input_ids"], batch["attention_mask"])  # (B, L, H)
    where = batch["labels"] != IGNORE_INDEX
    loss = torch.nn.functional.cross_entropy(model.catalogue_logits(hidden[where]), batch["labels"][where])
    loss.backward()
    torch.testing.assert_close(model(batch).loss, loss, rtol=0, atol=1e-6)
    for a, p in zip(trimmed, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)
    bad = dict(batch, labels=batch["labels"].clone())
    bad["labels"][0, 0] = FIRST_ITEM_ID  # a label on a padding column would be dropped by the trim
    with pytest.raises(ValueError, match="padding columns"):
        model(bad)


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
def test_candidate_scores_equal_full_scores_gathered(objective):
    model, rec = small_model(objective)
    model.eval()
    hist = seqs([3, 8, 12])
    full = score_histories(model, hist)  # (3, V)
    cands = np.array(
        [[5, 2, 9, -1], [FIRST_ITEM_ID, V - 1, 7, 7], [0, 1, 4, 3]]
    )  # padding, specials, repeats
    got = candidate_scores(model, hist, cands)  # (3, 4)
    safe = torch.from_numpy(cands).clamp(min=0)
    want = full.gather(1, safe).masked_fill(torch.from_numpy(cands < 0), float("-inf"))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.isneginf(got[2, :2]).all() and torch.isneginf(got[0, 3])
    # t(h) @ E^T + b is the full score: what the Faiss query vectors rely on
    t = query_states(model, hist)
    torch.testing.assert_close(
        (t @ model.head.decoder.weight.T + model.head.decoder.bias)[:, FIRST_ITEM_ID:],
        full[:, FIRST_ITEM_ID:],
        rtol=0,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        candidate_scores(model, hist, np.full((3, 2), V))


def test_make_inputs_appends_mask_after_the_history_and_truncates():
    rec = RecConfig(max_len=5)
    h = np.array([10, 11, 12, 13, 14, 15])
    ids = make_inputs([h, h[:2]], rec)["input_ids"]
    assert ids[0].tolist() == [12, 13, 14, 15, MASK_ID]
    assert ids[1].tolist() == [PAD_ID, PAD_ID, 10, 11, MASK_ID]
    causal = make_inputs([h], RecConfig(objective="next_item", max_len=5))["input_ids"]
    assert causal[0].tolist() == [11, 12, 13, 14, 15]


def test_no_leakage_target_never_in_the_model_input_at_evaluation():
    """Every user's items are distinct, so a leaked target would be visible in the recorded inputs."""
    data = seqs([6, 9, 12, 4, 20] * 4, seed=3)
    vocab = ItemVocab([str(i) for i in range(V - FIRST_ITEM_ID)])
    from seqbert.data.interactions import UserSequences

    ds = leave_one_out(UserSequences([str(u) for u in range(len(data))], data, None, vocab))
    model, rec = small_model(max_len=9)
    model.eval()
    seen_inputs = []

    def spy(histories):
        inputs = make_inputs(histories, rec)
        seen_inputs.append(inputs["input_ids"])
        return model.score(inputs)

    for histories, targets in ((ds.valid_inputs(), ds.valid_targets), (ds.test_inputs(), ds.test_targets)):
        seen_inputs.clear()
        evaluate_ranking(spy, histories, targets, num_items=V, batch_size=7, exclude_ids=(PAD_ID, MASK_ID))
        ids = torch.cat(seen_inputs)
        assert len(ids) == len(targets)
        for row, target in zip(ids, targets):
            assert int(target) not in row.tolist()
            assert row[-1] == MASK_ID
    # and the test input is exactly the validation history plus the validation item
    for s, v, t, full in zip(ds.test_inputs(), ds.valid_targets, ds.test_targets, data):
        assert np.array_equal(np.append(s, t), full) and s[-1] == v


def test_recommend_new_user_unknown_items_and_exclusion(tmp_path):
    from seqbert.recommender import Recommender, load_recommender, save_recommender

    model, rec = small_model()
    vocab = ItemVocab([f"m{i}" for i in range(V - FIRST_ITEM_ID)])
    api = Recommender.from_parts(model.eval(), vocab)

    def items(history, **kw):
        return api.recommend(histories=[history], **kw)["item"].to_list()

    recs = api.recommend(histories=[["m1", "m2"]], k=5)
    assert recs.height == 5 and not {"m1", "m2"} & set(recs["item"])
    assert recs["score"].is_sorted(descending=True)
    with pytest.raises(KeyError, match="unknown item ids"):
        items(["m1", "nope"], k=5)
    assert items(["m1", "nope"], k=5, skip_unknown=True) == items(["m1"], k=5)
    assert len(items([], k=3)) == 3  # a brand-new user with no history (cloze)
    assert "m1" in items(["m1"], k=V, exclude_seen=False)
    # saved and reloaded: same recommendations
    save_recommender(tmp_path / "model", model, vocab)
    loaded, vocab2, names = load_recommender(tmp_path)
    assert names is None and vocab2 == vocab
    again = Recommender.from_parts(loaded, vocab2).recommend(histories=[["m3", "m4"]], k=4)
    assert again.equals(api.recommend(histories=[["m3", "m4"]], k=4))


def test_mostpop_ranks_by_training_counts():
    pop = MostPop([np.array([2, 3, 3]), np.array([3, 4])], vocab_size=6)
    scores = pop.score_histories([np.array([2])])[0]
    assert scores.argsort(descending=True)[:3].tolist() == [3, 2, 4]
    assert torch.isneginf(scores[:FIRST_ITEM_ID]).all()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="objective"):
        RecConfig(objective="nope")
    with pytest.raises(ValueError, match="mask_prob"):
        RecConfig(mask_prob=1.0)
    with pytest.raises(ValueError, match="type_vocab_size"):
        SeqRecommender(BertConfig(vocab_size=V, hidden_size=12, num_heads=3), RecConfig())
    with pytest.raises(ValueError, match="causal"):
        SeqRecommender(
            BertConfig(vocab_size=V, hidden_size=12, num_heads=3, type_vocab_size=0, causal=True), RecConfig()
        )


def test_synthetic_markov_sequences_follow_the_planted_chain():
    s = markov_sequences(num_users=50, num_items=30, p_follow=1.0, seed=1)
    succ = {}
    for seq in s.items:
        for a, b in zip(seq[:-1], seq[1:]):
            assert succ.setdefault(a, b) == b
