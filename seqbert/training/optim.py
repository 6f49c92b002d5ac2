"""AdamW with decoupled weight decay on matrices only, and the learning rate as a pure function of the step.

Weight decay follows nanoGPT: every tensor with `dim >= 2` (linear weights, embeddings) decays; 1-D tensors
(biases, LayerNorm gains and shifts) do not, because shrinking a bias or a norm gain towards 0 is not a
regulariser, it only fights the normalisation (Loshchilov & Hutter 2019; BERT's `exclude_from_weight_decay`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("linear", "cosine", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: `dim >= 2` tensors with `weight_decay`, the rest with 0. Tied weights appear once."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() already drops tied duplicates
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def configure_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay)`; the LR is overwritten each step from `lr_at`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for the optimizer step with 0-based index `step`.

    Warm-up:  lr = base_lr * (step + 1) / warmup_steps               for step < warmup_steps
    Then, with progress p = (step - warmup_steps) / (max_steps - warmup_steps) in [0, 1) and
    floor = min_lr_ratio * base_lr:
      linear:   lr = floor + (base_lr - floor) * (1 - p)
      cosine:   lr = floor + (base_lr - floor) * (1 + cos(pi * p)) / 2
      constant: lr = base_lr
    (step + 1) in the warm-up makes the first step's LR non-zero, so no step is wasted.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant" or max_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
    floor = min_lr_ratio * base_lr
    if schedule == "linear":
        return floor + (base_lr - floor) * (1.0 - progress)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
