import math

import pytest
import torch
from torch import nn

from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForPreTraining
from seqbert.training.optim import configure_optimizer, lr_at, lr_at_progress


def test_warmup_is_linear_and_starts_above_zero():
    assert lr_at(0, 1.0, warmup_steps=4, max_steps=20) == pytest.approx(0.25)
    assert lr_at(1, 1.0, warmup_steps=4, max_steps=20) == pytest.approx(0.5)
    assert lr_at(3, 1.0, warmup_steps=4, max_steps=20) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("linear", 4, 1.0),  # end of warm-up: the peak
        ("linear", 12, 0.5),  # half-way through the decay (8 of 16 steps)
        ("linear", 16, 0.25),
        ("cosine", 4, 1.0),
        ("cosine", 12, 0.5),  # cos(pi/2) = 0
        ("cosine", 8, 0.5 * (1 + math.cos(math.pi / 4))),
        ("constant", 12, 1.0),
        ("constant", 19, 1.0),
    ],
)
def test_decay_values(schedule, step, expected):
    assert lr_at(step, 1.0, warmup_steps=4, max_steps=20, schedule=schedule) == pytest.approx(expected)


def test_decay_floor_and_end():
    # min_lr_ratio 0.1: the decay goes from 2.0 to 0.2, reaching it at max_steps
    assert lr_at(10, 2.0, 0, 10, "linear", min_lr_ratio=0.1) == pytest.approx(0.2)
    assert lr_at(5, 2.0, 0, 10, "cosine", min_lr_ratio=0.1) == pytest.approx(0.2 + 1.8 * 0.5)
    assert lr_at(0, 2.0, 0, 10, "linear") == pytest.approx(2.0)


def test_schedule_rejects_unknown_names_and_negative_steps():
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1.0, 0, 10, "exponential")
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, 1.0, 0, 10)


def test_weight_decay_only_on_matrices_and_tied_weight_once():
    config = BertConfig(
        vocab_size=99, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=12, max_len=7
    )
    model = BertForPreTraining(config, nsp=True)
    optimizer = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert all(model.get_parameter(n).dim() >= 2 for n in decayed)
    assert "bert.embeddings.word.weight" in decayed
    assert any(n.endswith("norm.weight") for n in not_decayed)  # LayerNorm gains
    assert any(n.endswith(".bias") for n in not_decayed)
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed)
    # every trainable parameter exactly once; the tied decoder weight is the embedding, not a second copy
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_decay_does_not_touch_biases():
    layer = nn.Linear(3, 2)
    nn.init.ones_(layer.bias)
    optimizer = configure_optimizer(layer, lr=0.1, weight_decay=0.5)
    layer.weight.grad = torch.zeros_like(layer.weight)
    layer.bias.grad = torch.zeros_like(layer.bias)
    weight = layer.weight.detach().clone()
    optimizer.step()
    assert torch.equal(layer.bias, torch.ones(2))  # zero gradient and no decay: unchanged
    assert torch.allclose(layer.weight, weight * (1 - 0.1 * 0.5))  # decoupled decay: w <- w (1 - lr wd)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_progress_schedule_at_0_50_and_100_percent(schedule):
    # warm-up over the first 10 %, then decay from 2.0 to the floor 0.2 at 100 %
    assert lr_at_progress(0.0, 2.0, 0.1, schedule, 0.1) == 0.0
    assert lr_at_progress(0.05, 2.0, 0.1, schedule, 0.1) == pytest.approx(1.0)
    assert lr_at_progress(0.1, 2.0, 0.1, schedule, 0.1) == pytest.approx(2.0)
    assert lr_at_progress(0.55, 2.0, 0.1, schedule, 0.1) == pytest.approx(1.1)  # half-way through the decay
    assert lr_at_progress(1.0, 2.0, 0.1, schedule, 0.1) == pytest.approx(0.2)
    assert lr_at_progress(1.7, 2.0, 0.1, schedule, 0.1) == pytest.approx(0.2)  # past the budget: the floor
    assert lr_at_progress(0.0, 2.0, 0.0, schedule) == 2.0  # no warm-up: the peak at once


def test_progress_schedule_matches_the_step_schedule_after_warmup():
    for step in range(4, 21):
        by_step = lr_at(step, 1.0, warmup_steps=4, max_steps=20, schedule="cosine", min_lr_ratio=0.1)
        by_progress = lr_at_progress(step / 20, 1.0, 4 / 20, "cosine", 0.1)
        assert by_progress == pytest.approx(by_step), step


def test_progress_schedule_rejects_bad_inputs():
    with pytest.raises(ValueError, match="progress"):
        lr_at_progress(-0.1, 1.0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        lr_at_progress(0.5, 1.0, warmup_fraction=1.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_at_progress(0.5, 1.0, schedule="step")


def test_cpu_optimizer_is_fused_and_equals_the_reference_adamw():
    """The fused CPU AdamW makes the same updates as torch's reference (for-loop) AdamW, per group."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=12, max_len=7
    )
    fast, slow = BertForPreTraining(config, nsp=True), BertForPreTraining(config, nsp=True)
    slow.load_state_dict(fast.state_dict())
    optimizer = configure_optimizer(fast, lr=1e-2, weight_decay=0.1)
    groups = [{**g, "params": [slow.get_parameter(n) for n, p in fast.named_parameters() if any(p is q for q in g["params"])]}
              for g in optimizer.param_groups]  # fmt: skip
    reference = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups], lr=1e-2, foreach=False
    )
    assert optimizer.defaults["fused"] and not reference.defaults["fused"]
    start = [p.detach().clone() for p in fast.parameters()]
    for _ in range(5):
        for p, q in zip(fast.parameters(), slow.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert all(not torch.equal(p, p0) for p, p0 in zip(fast.parameters(), start))  # every tensor moved
