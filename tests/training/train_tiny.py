"""Train a tiny masked-LM BERT for the subprocess tests (kill-and-resume, DDP under torchrun).

Usage: `run(run_dir, ...)` in-process, or python train_tiny.py RUN_DIR [--max-steps N] [--checkpoint-every N] [--batch-size B] [--dropout P]
       [--step-sleep S]. Writes RUN_DIR/final-rank<r>/ (save_model) and RUN_DIR/result-rank<r>.json.
Everything is seeded, so two runs with the same arguments end with identical weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from seqbert.model.bert import BertConfig
from seqbert.model.heads import IGNORE_INDEX, BertForPreTraining
from seqbert.training import TensorBatchSource, TrainConfig, TrainResult, save_model, train

VOCAB, LENGTH, ROWS, MASK_ID, MASKED = 37, 9, 96, 3, 2


def make_collate(step_sleep: float):
    def collate(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Dynamic masking of exactly MASKED positions per row, drawn from the batch generator. A fixed count
        makes the MLM loss (a mean over masked tokens) a per-example mean, so that with equal shards the
        ranks' mean losses average to the global batch's mean loss."""
        if step_sleep:
            time.sleep(step_sleep)  # pace the run so that the test can kill it between checkpoints
        input_ids = raw["input_ids"].clone()  # (B, L)
        scores = torch.rand(input_ids.shape, generator=generator)  # (B, L)
        masked = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, L)
        masked.scatter_(1, scores.topk(MASKED, dim=1).indices, True)
        labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # (B, L)
        input_ids[masked] = MASK_ID
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    return collate


def run(
    run_dir: Path,
    max_steps: int = 24,
    checkpoint_every: int = 4,
    batch_size: int = 8,
    dropout: float = 0.1,
    step_sleep: float = 0.0,
) -> TrainResult:
    """Build, train and save the tiny model; the tests call this in-process or through `main`."""
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever the machine
    torch.manual_seed(0)
    bert = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=24,
        max_len=LENGTH,
        type_vocab_size=0,
        dropout=dropout,
        attention_dropout=dropout,
    )
    model = BertForPreTraining(bert, nsp=False)
    tokens = torch.randint(5, VOCAB, (ROWS, LENGTH), generator=torch.Generator().manual_seed(1))  # (N, L)
    source = TensorBatchSource({"input_ids": tokens}, batch_size, seed=2, collate=make_collate(step_sleep))
    config = TrainConfig(
        max_steps=max_steps,
        lr=3e-3,
        warmup_steps=3,
        schedule="cosine",
        device="cpu",
        precision="fp32",
        deterministic=True,
        log_every=1,
        checkpoint_every=checkpoint_every,
        keep_last=2,
        progress=False,
    )
    result = train(model, source, config, run_dir)
    rank = int(os.environ.get("RANK", "0"))
    save_model(run_dir / f"final-rank{rank}", model)
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
    (run_dir / f"result-rank{rank}.json").write_text(json.dumps(summary))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args()
    run(args.run_dir, args.max_steps, args.checkpoint_every, args.batch_size, args.dropout, args.step_sleep)


if __name__ == "__main__":
    main()
