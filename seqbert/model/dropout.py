"""Dropout whose mask comes from 16-bit random integers: the CPU fast path.

On this CPU `torch.bernoulli_` (what `F.dropout` draws its mask with) costs ~7 ns per element, and in a
small recommender (hidden 64, length 200) the attention-probability dropout alone was 31 % of a training
step. `torch.Tensor.random_` over the full int64 range fills 64 random bits per element ~8x faster;
viewed as four int16 lanes, each lane is a uniform 16-bit integer, and "lane < threshold" is a Bernoulli
draw with probability round(p * 65536) / 65536 (within 1e-5 of p). Kept values are scaled by
1 / (1 - that probability), so the expectation is exactly preserved, as in `F.dropout`. The whole mask,
comparison and scaling included, costs ~2.8x less than `bernoulli_` (10.24 M elements, 2 threads).

Off the CPU (CUDA's fused dropout is already fast) and in eval mode these fall back to `F.dropout`.
Tests check the drop rate per lane, the scaling, the gradient and reproducibility under a seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def drop_probability(p: float) -> float:
    """The probability the 16-bit mask actually drops with: p rounded to a multiple of 1 / 65536."""
    return round(p * _LEVELS) / _LEVELS


def keep_scale(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device | None = None
) -> torch.Tensor:
    """Float32 tensor of `shape`: 0 where an element is dropped, each independently with probability
    q = `drop_probability(p)`, else 1 / (1 - q). Multiplying by it is dropout; drawn from torch's default
    generator, so `torch.manual_seed` reproduces it."""
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    # the full signed range: every one of the 64 bits is random (plain random_() leaves the top bit 0)
    words.random_(-(2**63), None)
    lanes = words.view(torch.int16)[:numel].view(shape)  # uniform in [-32768, 32767]
    threshold = -(_LEVELS // 2) + round(p * _LEVELS)
    return torch.where(lanes < threshold, 0.0, 1.0 / (1.0 - drop_probability(p)))


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the fast mask on CPU."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    # one multiply forward and one backward (masked_fill would copy twice each way)
    return x * keep_scale(x.shape, p, x.device)


class Dropout(nn.Module):
    """`nn.Dropout` drawing its mask with `keep_scale` on CPU (`fast=False`: exactly `F.dropout`)."""

    def __init__(self, p: float, fast: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = p
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return F.dropout(x, self.p, self.training)
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, fast={self.fast}"
