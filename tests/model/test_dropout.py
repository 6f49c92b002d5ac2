"""The 16-bit CPU dropout mask: rate per lane, scaling, gradient, seeding; its attention path vs the formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqbert.model import Bert, BertConfig
from seqbert.model.bert import dropout_attention
from seqbert.model.dropout import Dropout, drop_probability, fast_dropout, keep_scale


@pytest.mark.parametrize("p", [0.1, 0.2, 0.6])
def test_every_lane_drops_at_rate_p_and_kept_values_keep_the_mean(p):
    torch.manual_seed(0)
    n = 400_003  # not a multiple of 4: the last int64 word is only partly used
    keep = keep_scale((n,), p)
    q = drop_probability(p)
    assert abs(q - p) <= 0.5 / 65536
    dropped = keep == 0
    # each of the four int16 lanes of a 64-bit word must be uniform (plain random_() leaves the top bit 0)
    se = math.sqrt(q * (1 - q) / (n / 4))
    for lane in range(4):
        assert abs(dropped[lane::4].float().mean().item() - q) < 5 * se
    assert torch.allclose(keep[~dropped], torch.tensor(1 / (1 - q)))
    assert abs(keep.double().mean().item() - 1.0) < 5 * math.sqrt(q / (1 - q) / n)


def test_neighbouring_elements_are_independent():
    torch.manual_seed(1)
    dropped = (keep_scale((1_000_000,), 0.5) == 0).float()
    # P(both dropped) for adjacent elements (same word and across words) is p^2 when independent
    both = (dropped[:-1] * dropped[1:]).mean().item()
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 1_000_000)


def test_gradient_is_the_mask_and_a_seed_reproduces_it():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    y = fast_dropout(x, 0.3)
    y.sum().backward()
    torch.manual_seed(3)
    keep = keep_scale(x.shape, 0.3)
    torch.testing.assert_close(y, x.detach() * keep)
    torch.testing.assert_close(x.grad, keep)


def test_eval_mode_and_reference_mode_are_torch_dropout():
    x = torch.randn(8, 5)
    layer = Dropout(0.5).eval()
    assert torch.equal(layer(x), x)
    reference = Dropout(0.5, fast=False).train()
    torch.manual_seed(4)
    expected = F.dropout(x, 0.5, True)
    torch.manual_seed(4)
    assert torch.equal(reference(x), expected)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_dropout_attention_is_the_attention_formula_with_that_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 4, generator=g) for _ in range(3))
    allowed = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]).bool()[:, None, None]
    torch.manual_seed(5)
    fast = dropout_attention(q, k, v, allowed, 0.25)
    torch.manual_seed(5)
    keep = keep_scale((3, 2, 6, 6), 0.25)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(fast, (scores.softmax(-1) * keep) @ v)


def test_fast_and_reference_dropout_train_to_the_same_loss_level():
    """Same model, same data, the two dropout implementations: a statistical (not bitwise) match."""

    def final_loss(fast: bool) -> float:
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=20, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=8,
            type_vocab_size=0, dropout=0.2, attention_dropout=0.2, fast_dropout=fast,
        )  # fmt: skip
        model, head = Bert(config), torch.nn.Linear(16, 20)
        opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
        ids = torch.randint(1, 20, (128, 8), generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(100):
            logits = head(model(ids[:, :-1] * 0 + ids[:, :1]))  # predict each row's first id everywhere
            loss = F.cross_entropy(logits.reshape(-1, 20), ids[:, :1].expand(-1, 7).reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return sum(losses[-20:]) / 20

    fast, reference = final_loss(True), final_loss(False)
    assert fast < 1.0 and reference < 1.0  # both learn the task (chance is ln 20 = 3.0)
    assert abs(fast - reference) < 0.25
