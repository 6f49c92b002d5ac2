import pytest
import torch

from seqbert.data.masking import mask_tokens, special_token_mask
from seqbert.model.bert import BertConfig
from seqbert.model.heads import IGNORE_INDEX, BertForPreTraining

PAD, CLS, SEP, MASK = 0, 2, 3, 4
V = 99


def _batch(B=13, L=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, L), generator=g)
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    ids[:, 0] = CLS
    for b, n in enumerate(lengths.tolist()):
        ids[b, n - 1] = SEP
        ids[b, n:] = PAD
    return ids


def _mask(ids, seed=1, **kw):
    args = dict(prob=0.15, vocab_size=V, mask_id=MASK)
    args.update(kw)
    return mask_tokens(
        ids, special_token_mask(ids, [PAD, CLS, SEP, MASK]), torch.Generator().manual_seed(seed), **args
    )


def test_never_masks_specials_or_padding_and_labels_only_selected():
    ids = _batch(B=64, L=31)
    masked, labels = _mask(ids, prob=0.5)
    special = special_token_mask(ids, [PAD, CLS, SEP, MASK])
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # unselected positions are untouched


def test_rates_follow_15_percent_and_80_10_10():
    ids = torch.randint(5, V, (400, 250))
    special = torch.zeros_like(ids, dtype=torch.bool)
    masked, labels = mask_tokens(ids, special, torch.Generator().manual_seed(0), 0.15, V, MASK)
    selected = labels != IGNORE_INDEX
    n = selected.sum().item()
    assert n / ids.numel() == pytest.approx(0.15, abs=0.005)
    to_mask = (masked == MASK) & selected
    kept = (masked == ids) & selected
    assert to_mask.sum().item() / n == pytest.approx(0.8, abs=0.01)
    # random replacements can hit the original token by chance (1/V of them)
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / (V - 0), abs=0.01)


def test_pure_function_of_the_generator():
    ids = _batch()
    a = _mask(ids, seed=5)
    b = _mask(ids, seed=5)
    c = _mask(ids, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    before = ids.clone()
    _mask(ids)
    assert torch.equal(ids, before)  # input not modified


def test_mask_only_replacement_with_at_least_one_and_never_all():
    ids = _batch(B=200, L=9, seed=3)
    special = special_token_mask(ids, [PAD, CLS, SEP])
    for seed in range(5):
        masked, labels = mask_tokens(
            ids,
            special,
            torch.Generator().manual_seed(seed),
            0.6,
            V,
            MASK,
            replace_probs=(1.0, 0.0, 0.0),
            min_masked=1,
            keep_one_unmasked=True,
        )
        selected = labels != IGNORE_INDEX
        n_sel, n_ok = selected.sum(1), (~special).sum(1)
        assert (n_sel >= 1).all()
        assert (n_sel[n_ok >= 2] < n_ok[n_ok >= 2]).all()
        assert (masked[selected] == MASK).all()


def test_min_masked_takes_the_smallest_draws():
    # prob 0: only the forced positions are selected; with min_masked=2 each row gets exactly 2
    ids = torch.randint(5, V, (50, 10))
    special = torch.zeros_like(ids, dtype=torch.bool)
    _, labels = mask_tokens(ids, special, torch.Generator().manual_seed(0), 0.0, V, MASK, min_masked=2)
    assert ((labels != IGNORE_INDEX).sum(1) == 2).all()


def test_bad_arguments_name_the_argument():
    ids = _batch()
    with pytest.raises(ValueError, match="replace_probs"):
        _mask(ids, replace_probs=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="special_mask"):
        mask_tokens(ids, torch.zeros(3, 3, dtype=torch.bool), torch.Generator(), 0.15, V, MASK)
    with pytest.raises(ValueError, match="prob"):
        _mask(ids, prob=1.5)


def _model():
    config = BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=37,
        max_len=16,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return BertForPreTraining(config, nsp=False)


def test_padding_and_unmasked_positions_contribute_nothing_to_loss_or_gradients():
    torch.manual_seed(0)
    model = _model()
    ids = _batch(B=13, L=7, seed=4)
    masked, labels = _mask(ids, prob=0.4, min_masked=1)
    attention_mask = (ids != PAD).long()
    # 1) on the MLM head: perturbing hidden rows off the masked positions leaves the loss bit-identical and
    #    their gradient exactly zero
    hidden = torch.randn(13, 7, 32, requires_grad=True)
    where = labels != IGNORE_INDEX

    def head_loss(h):
        return torch.nn.functional.cross_entropy(model.mlm(h[where]), labels[where])

    loss = head_loss(hidden)
    loss.backward()
    assert (hidden.grad[~where] == 0).all() and (hidden.grad[where] != 0).any()
    perturbed = hidden.detach() + 100.0 * (~where).unsqueeze(-1) * torch.randn(13, 7, 32)
    assert head_loss(perturbed).item() == loss.item()
    # 2) end to end: changing the token ids under padding changes neither the loss nor any gradient
    batch = {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
    out = model(batch)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    noisy = masked.masked_fill(attention_mask == 0, 0) + (attention_mask == 0) * torch.randint(
        5, V, masked.shape
    )
    out2 = model({**batch, "input_ids": noisy})
    grads2 = torch.autograd.grad(out2.loss, list(model.parameters()))
    assert out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-6)
    for g1, g2 in zip(grads, grads2):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    # 3) the gathered loss equals the all-positions reference (mean over labelled positions only)
    ref = model(batch, all_positions=True)
    torch.testing.assert_close(out.loss, ref.loss)
