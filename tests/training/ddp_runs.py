"""Both DDP test runs in one `torchrun` launch (starting two processes costs more than the runs themselves).

Usage: torchrun --nproc_per_node 2 ddp_runs.py OUT -> OUT/mlm (train_tiny) and OUT/rec (train_tiny_rec).
The process group is created here, so each `train` call joins it instead of creating and destroying one.
"""

import sys
from pathlib import Path

import torch.distributed as dist
import train_tiny
import train_tiny_rec

MLM_ARGS = dict(max_steps=12, checkpoint_every=5, batch_size=8, dropout=0.0)

if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    try:
        train_tiny.run(out / "mlm", **MLM_ARGS)
        train_tiny_rec.run(out / "rec")
    finally:
        dist.destroy_process_group()
