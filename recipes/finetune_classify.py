"""Recipe: fine-tune BERT for sentence (SST-2) or sentence-pair (MRPC) classification.

config -> GLUE TSV files -> encoder initialised from scratch / a seqbert pretraining run / Hugging Face
weights (all-MiniLM-L6-v2 by default) -> BertForSequenceClassification -> train -> dev accuracy (and F1 of
the positive class) -> save `run_dir/{tokenizer.json, model/, results.json}` for `seqbert text predict`.

    python recipes/finetune_classify.py --config recipes/finetune_sst2.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbert.config import config_to_dict, load_config
from seqbert.data.glue import read_mrpc, read_sst2
from seqbert.data.sources import resolve_data_dir
from seqbert.data.text import encode_texts
from seqbert.tasks.text import (
    TextTask,
    build_classifier,
    classification_collate,
    evaluate_classification,
    init_classifier,
    load_backbone,
    save_text_model,
)
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

# dataset -> (reader, default train file, default eval file, class names)
DATASETS = {
    "sst2": (read_sst2, "sst2/train.tsv", "sst2/dev.tsv", ("negative", "positive")),
    "mrpc": (read_mrpc, "mrpc/train.tsv", "mrpc/dev.tsv", ("not_paraphrase", "paraphrase")),
}


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    run_dir: str
    dataset: str  # "sst2" or "mrpc"
    data_dir: str | None = None  # None: $SEQBERT_DATA_DIR
    train_file: str | None = None  # relative to data_dir; None: the dataset's train.tsv
    eval_file: str | None = None  # None: the dataset's dev.tsv
    max_train_examples: int | None = None  # subsample: a seeded random subset of this size
    max_eval_examples: int | None = None
    max_len: int = 64
    batch_size: int = 32
    eval_batch_size: int = 128
    init: str = "hf"  # "scratch" | "seqbert" | "hf"
    init_dir: str | None = None  # seqbert run or HF directory; None with "hf"/"scratch": all-MiniLM-L6-v2
    dropout: float | None = None  # None: the checkpoint's own
    seed: int = 0
    train: TrainConfig

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.init not in ("scratch", "seqbert", "hf"):
            raise ValueError(f"init must be 'scratch', 'seqbert' or 'hf', got {self.init!r}")


def _subset(data, n: int | None, seed: int):
    """A seeded random subset of n examples (None or n >= len: all), in the file's order."""
    if n is None or n >= len(data.labels):
        return data
    keep = sorted(
        torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    )
    pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
    return type(data)(pick(data.texts), pick(data.pairs), pick(data.labels))


def main(cfg: FinetuneConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    t0 = time.perf_counter()

    # ---- data
    read, train_file, eval_file, labels = DATASETS[cfg.dataset]
    root = resolve_data_dir(cfg.data_dir)
    train_data = _subset(read(root / (cfg.train_file or train_file)), cfg.max_train_examples, cfg.seed)
    eval_data = _subset(read(root / (cfg.eval_file or eval_file)), cfg.max_eval_examples, cfg.seed)
    task = TextTask("pair" if train_data.pairs is not None else "sequence", labels, cfg.max_len)

    # ---- model
    config, tokenizer, weights = load_backbone(cfg.init, cfg.init_dir, cfg.dropout)
    if cfg.max_len > config.max_len:
        raise ValueError(f"max_len={cfg.max_len} exceeds the encoder's max_len={config.max_len}")
    torch.manual_seed(cfg.seed)
    model = build_classifier(task.kind, config, len(labels))
    fresh = init_classifier(model, weights, cfg.init_dir)

    # ---- train
    def encode(data) -> dict[str, torch.Tensor]:
        tensors = encode_texts(tokenizer, data.texts, data.pairs, cfg.max_len)
        return {**tensors, "labels": torch.tensor(data.labels, dtype=torch.long)}

    train_tensors, eval_tensors = encode(train_data), encode(eval_data)
    source = TensorBatchSource(train_tensors, cfg.batch_size, cfg.seed, collate=classification_collate)
    evaluate = evaluate_classification(eval_tensors, cfg.eval_batch_size)
    result = train(model, source, cfg.train, run_dir, evaluate)

    # ---- save
    save_text_model(run_dir, model, tokenizer, task)
    results = {
        "dataset": cfg.dataset,
        "init": cfg.init,
        "train_examples": len(train_data.labels),
        "eval_examples": len(eval_data.labels),
        "fresh_parameters": len(fresh),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        **{f"eval_{k}": v for k, v in result.last_eval.items()},
        "best_metric": result.best_metric,
        "best_step": result.best_step,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a YAML file, e.g. recipes/finetune_sst2.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.max_steps=10")
    args = parser.parse_args()
    print(json.dumps(main(load_config(FinetuneConfig, args.config, args.overrides)), indent=2))
