"""Chunked full-catalogue cross-entropy == F.cross_entropy of the masked (M, V) logits: loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from seqbert.data.vocab import FIRST_ITEM_ID
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import RecConfig, SeqRecommender, make_collate, training_windows
from seqbert.tasks.chunked_ce import chunk_rows, chunked_catalogue_ce

V, H, M = 37, 6, 23  # odd sizes: the last chunk is partial


def reference(t, weight, bias, targets, num_special):
    logits = F.linear(t, weight, bias)  # (M, V), as MLMHead.decoder
    logits = logits.masked_fill(torch.arange(len(bias)) < num_special, float("-inf"))
    return F.cross_entropy(logits, targets)


def inputs(seed=0, m=M, num_special=FIRST_ITEM_ID):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(m, H, generator=g).requires_grad_()
    weight = torch.randn(V, H, generator=g).requires_grad_()
    bias = (0.1 * torch.randn(V, generator=g)).requires_grad_()
    targets = torch.randint(num_special, V, (m,), generator=g)
    return t, weight, bias, targets


def loss_and_grads(fn, t, weight, bias, targets, **kw):
    t, weight, bias = (x.detach().clone().requires_grad_() for x in (t, weight, bias))
    loss = fn(t, weight, bias, targets, **kw)
    (3.0 * loss).backward()  # an upstream gradient that is not 1
    return loss, t.grad, weight.grad, bias.grad


def test_chunk_rows_follows_the_byte_budget():
    assert chunk_rows(V, 5 * 4 * V) == 5
    assert chunk_rows(V, 5 * 4 * V + 4 * V - 1) == 5
    assert chunk_rows(10**9, 1) == 1
    with pytest.raises(ValueError, match="budget_bytes"):
        chunk_rows(V, 0)


@pytest.mark.parametrize("num_special", [0, FIRST_ITEM_ID, 5])
@pytest.mark.parametrize("rows_per_chunk", [1, 5, M, 100])
def test_loss_and_gradients_equal_the_full_logits_reference_fp32(num_special, rows_per_chunk):
    t, weight, bias, targets = inputs(num_special=num_special)
    want = loss_and_grads(reference, t, weight, bias, targets, num_special=num_special)
    got = loss_and_grads(
        chunked_catalogue_ce,
        t,
        weight,
        bias,
        targets,
        num_special=num_special,
        budget_bytes=rows_per_chunk * 4 * V,
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # specials get no gradient, as behind the -inf mask
    assert (got[2][:num_special] == 0).all() and (got[3][:num_special] == 0).all()


def test_bf16_autocast_matches_the_autocast_reference():
    t, weight, bias, targets = inputs(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = loss_and_grads(reference, t, weight, bias, targets, num_special=FIRST_ITEM_ID)
        got = loss_and_grads(
            chunked_catalogue_ce, t, weight, bias, targets, num_special=FIRST_ITEM_ID, budget_bytes=5 * 4 * V
        )
    exact = loss_and_grads(reference, t, weight, bias, targets, num_special=FIRST_ITEM_ID)
    for a, b, c in zip(got, want, exact):
        assert a.dtype == b.dtype == c.dtype  # grads in the parameters' dtype (fp32), like autocast's own
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
        # and the chunked bf16 result is no farther from the fp32 value than torch's own bf16 path (+ slack)
        assert (a - c).abs().max() <= 2 * (b - c).abs().max() + 1e-3
    assert (got[0] - exact[0]).abs() > 0  # it really computed in bf16


def test_no_temporary_has_more_than_a_chunk_of_rows(shape_log):
    t, weight, bias, targets = inputs()
    with shape_log() as log:
        chunked_catalogue_ce(t, weight, bias, targets, FIRST_ITEM_ID, budget_bytes=5 * 4 * V).backward()
    items = V - FIRST_ITEM_ID
    wide = [
        s for s in log.shapes if len(s) == 2 and s[1] >= items and s != (H, items)
    ]  # (rows, V); E^T aside
    assert wide and max(s[0] for s in wide) == 5
    with shape_log() as log:  # the check bites: the reference builds (M, V)
        reference(t, weight, bias, targets, FIRST_ITEM_ID).backward()
    assert (M, V) in log.shapes


def test_fp64_is_computed_in_fp64():
    t, weight, bias, targets = (x.double() if x.is_floating_point() else x for x in inputs())
    want = loss_and_grads(reference, t, weight, bias, targets, num_special=FIRST_ITEM_ID)
    got = loss_and_grads(
        chunked_catalogue_ce, t, weight, bias, targets, num_special=FIRST_ITEM_ID, budget_bytes=5 * 4 * V
    )
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bad_targets_and_shapes_raise():
    t, weight, bias, targets = inputs()
    with pytest.raises(ValueError, match="target id 1 is not an item id"):
        chunked_catalogue_ce(t, weight, bias, torch.full((M,), 1), FIRST_ITEM_ID)
    with pytest.raises(ValueError, match="target id 37"):
        chunked_catalogue_ce(t, weight, bias, torch.full((M,), V), FIRST_ITEM_ID)
    with pytest.raises(ValueError, match="expected t"):
        chunked_catalogue_ce(t[:, :2], weight, bias, targets, FIRST_ITEM_ID)


def small_model(objective, max_len=9, vocab_size=2 + 23):
    rec = RecConfig(objective=objective, max_len=max_len, mask_prob=0.3, loss="ce")
    bert = BertConfig(
        vocab_size=vocab_size, hidden_size=12, num_layers=1, num_heads=3, intermediate_size=17, max_len=max_len,
        type_vocab_size=0, causal=objective == "next_item",
    )  # fmt: skip
    return SeqRecommender(bert, rec), rec


def plain_forward_loss(model, batch):
    """SeqRecommender.forward's loss before chunking: cross-entropy of the masked (M, V) catalogue logits."""
    mask = batch["attention_mask"]
    hidden = model.bert(batch["input_ids"], mask)  # (B, L, H)
    where = batch["labels"] != -100
    return F.cross_entropy(model.catalogue_logits(hidden[where]), batch["labels"][where])


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
def test_training_a_small_recommender_gives_the_same_losses_both_ways(objective, monkeypatch):
    import seqbert.tasks.bert4rec as bert4rec

    # 7 rows per chunk, so the model's M (~40-100 labelled positions) spans several chunks
    monkeypatch.setattr(
        bert4rec, "chunked_catalogue_ce", lambda *a: chunked_catalogue_ce(*a, budget_bytes=7 * 4 * 25)
    )
    torch.manual_seed(0)
    model, rec = small_model(objective)
    V_ = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randperm(V_ - FIRST_ITEM_ID, generator=g)[:9].numpy() + FIRST_ITEM_ID for _ in range(12)]
    windows = training_windows(seqs, rec)
    batch = make_collate(rec, V_)({"items": windows}, torch.Generator().manual_seed(1))
    twin, _ = small_model(objective)
    twin.load_state_dict(model.state_dict())
    model.eval(), twin.eval()  # no dropout: the two paths see the same numbers
    opts = [torch.optim.Adam(m.parameters(), lr=0.02) for m in (model, twin)]
    for _ in range(5):
        chunked, plain = model(batch).loss, plain_forward_loss(twin, batch)
        assert model(batch).logits is None
        torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-5)
        for loss, opt in zip((chunked, plain), opts):
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert twin.head.decoder.weight is twin.bert.embeddings.word.weight  # still tied
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
