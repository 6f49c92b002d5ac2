"""AdamW with decoupled weight decay on matrices only, and the learning rate as a pure function of progress
(the step, or the elapsed fraction of a time budget).

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
    """AdamW over `param_groups(model, weight_decay)`; the LR is overwritten each step from `lr_at`.

    On CPU it is torch's fused AdamW: one vectorised pass per tensor instead of a chain of elementwise ops,
    the same update to float rounding (tests/training/test_optim.py). It matters for big embedding tables: one
    step over a (1 M, 64) table took 0.52 s unfused and 0.085 s fused (1 thread), most of the fixed cost of
    a 1 M-item training step (benchmarks/RESULTS.md, large catalogues).
    """
    groups = param_groups(model, weight_decay)
    on_cpu = all(p.device.type == "cpu" for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=on_cpu or None)


def lr_at_progress(
    progress: float,
    base_lr: float,
    warmup_fraction: float = 0.0,
    schedule: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate at `progress` p in [0, 1] of a budget (steps or seconds); p > 1 reads as 1.

    Warm-up:  lr = base_lr * p / warmup_fraction                      for p < warmup_fraction
    Then, with q = (p - warmup_fraction) / (1 - warmup_fraction) in [0, 1] and floor = min_lr_ratio * base_lr:
      linear:   lr = floor + (base_lr - floor) * (1 - q)
      cosine:   lr = floor + (base_lr - floor) * (1 + cos(pi * q)) / 2
      constant: lr = base_lr
    So lr(0) = 0 with a warm-up (base_lr without), the peak at p = warmup_fraction and the floor at p = 1.
    The time-clocked loop (`TrainConfig.schedule_clock="time"`) calls this with p = elapsed / max_seconds.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not progress >= 0:
        raise ValueError(f"progress must be >= 0, got {progress}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    progress = min(1.0, progress)
    if progress < warmup_fraction:
        return base_lr * progress / warmup_fraction
    return _decayed((progress - warmup_fraction) / (1 - warmup_fraction), base_lr, schedule, min_lr_ratio)


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for the optimizer step with 0-based index `step` (the step-clocked schedule).

    Warm-up:  lr = base_lr * (step + 1) / warmup_steps               for step < warmup_steps
    Then the decay of `lr_at_progress` with q = (step - warmup_steps) / (max_steps - warmup_steps).
    (step + 1) in the warm-up makes the first step's LR non-zero, so no step is wasted.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if max_steps <= warmup_steps:
        return base_lr
    return _decayed((step - warmup_steps) / (max_steps - warmup_steps), base_lr, schedule, min_lr_ratio)


def _decayed(q: float, base_lr: float, schedule: str, min_lr_ratio: float) -> float:
    """The decay after warm-up at its own progress q (clipped to [0, 1])."""
    if schedule == "constant":
        return base_lr
    q = min(1.0, q)
    floor = min_lr_ratio * base_lr
    if schedule == "linear":
        return floor + (base_lr - floor) * (1.0 - q)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * q))
