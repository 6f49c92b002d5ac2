"""Shared test helpers for tasks: a recorder of every tensor shape an op returns."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.fixture
def shape_log() -> type[ShapeLog]:
    """`with shape_log() as log: ...` then `log.shapes`: proves no op built a tensor of a given size."""
    return ShapeLog
