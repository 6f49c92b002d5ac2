"""seqbert.training: the task-agnostic engine (loss -> optimizer step -> checkpoints).

`train(model, source, TrainConfig(...), run_dir, evaluate)` in loop.py; AdamW + LR schedules (by step or by the spent share of a time budget) in optim.py;
device and precision in precision.py; safetensors checkpoints and final models in checkpoint.py; the
`BatchSource` protocol and `TensorBatchSource` in data.py.
"""

from seqbert.training.checkpoint import CheckpointError, load_model_state, save_model
from seqbert.training.data import BatchSource, TensorBatchSource, seeded_generator
from seqbert.training.loop import NonFiniteLossError, TrainConfig, TrainResult, train
from seqbert.training.optim import configure_optimizer, lr_at, lr_at_progress
from seqbert.training.precision import autocast, resolve_device, resolve_precision

__all__ = [
    "BatchSource",
    "CheckpointError",
    "NonFiniteLossError",
    "TensorBatchSource",
    "TrainConfig",
    "TrainResult",
    "autocast",
    "configure_optimizer",
    "load_model_state",
    "lr_at",
    "lr_at_progress",
    "resolve_device",
    "resolve_precision",
    "save_model",
    "seeded_generator",
    "train",
]
