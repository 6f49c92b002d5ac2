"""Train a tiny SASRec-style recommender with a sampled softmax loss on a fake clock, for the DDP test.

Usage: `run(run_dir)` in-process, or python train_tiny_rec.py RUN_DIR (under torchrun for DDP).
Writes RUN_DIR/final-rank<r>/ (save_model) and RUN_DIR/result-rank<r>.json.

The collate adds `negatives` (K,), one set shared by the batch, with K = the global batch size, so a shard()
that guessed per-example tensors from their first dimension would split it. Every window is full (no
padding), so every row has the same number of labels and the ranks' mean losses average to the global
batch's. The LR schedule runs on the time clock, and the clock is fake: it advances by STEP_SECONDS per
global batch collated (every rank collates the whole global batch), so one process and two ranks see the
same training seconds and must take the same steps with the same learning rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch

from seqbert.data.vocab import FIRST_ITEM_ID, PAD_ID
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import RecConfig, SeqRecommender, make_collate
from seqbert.training import TensorBatchSource, TrainConfig, TrainResult, save_model, train

VOCAB, LENGTH, ROWS, BATCH, STEP_SECONDS = 41, 6, 64, 8, 0.5


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(run_dir: Path, max_seconds: float = 6.0) -> TrainResult:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = RecConfig(objective="next_item", max_len=LENGTH, loss="sampled_softmax", num_negatives=BATCH)
    bert = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24, max_len=LENGTH,
        type_vocab_size=0, dropout=0.0, attention_dropout=0.0, pad_id=PAD_ID, causal=True,
    )  # fmt: skip
    model = SeqRecommender(bert, task)
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(FIRST_ITEM_ID, VOCAB, (ROWS, LENGTH + 1), generator=g)  # (N, L + 1), no padding
    collate, clock = make_collate(task, VOCAB), FakeClock()

    def timed_collate(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        clock.now += STEP_SECONDS
        return collate(raw, generator)

    source = TensorBatchSource({"items": windows}, BATCH, seed=2, collate=timed_collate)
    config = TrainConfig(
        max_steps=1000, lr=3e-3, schedule="cosine", schedule_clock="time", max_seconds=max_seconds,
        warmup_fraction=0.25, device="cpu", precision="fp32", deterministic=True, log_every=1,
        checkpoint_every=5, keep_last=2, progress=False,
    )  # fmt: skip
    result = train(model, source, config, run_dir, clock=clock)
    rank = int(os.environ.get("RANK", "0"))
    save_model(run_dir / f"final-rank{rank}", model)
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
    (run_dir / f"result-rank{rank}.json").write_text(json.dumps(summary))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    run(parser.parse_args().run_dir)


if __name__ == "__main__":
    main()
