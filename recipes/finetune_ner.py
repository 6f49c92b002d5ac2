"""Recipe: fine-tune BERT for token classification (CoNLL-2003 named-entity recognition).

config -> CoNLL files (word per line, IOB2 tags) -> sub-word rows where each word's first sub-token carries
its tag and the others are ignored (Devlin et al. 2019, §5.3) -> encoder from scratch / a seqbert
pretraining run / Hugging Face weights -> BertForTokenClassification -> train -> entity-level P/R/F1 as
conlleval computes them, on whole words -> save `run_dir/{tokenizer.json, model/, results.json}`.

    python recipes/finetune_ner.py --config recipes/finetune_conll2003.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbert.config import config_to_dict, load_config
from seqbert.data.glue import CONLL_TAGS, TaggingData, read_conll
from seqbert.data.sources import resolve_data_dir
from seqbert.data.text import encode_words
from seqbert.tasks.text import (
    TextTask,
    build_classifier,
    classification_collate,
    evaluate_tagging,
    init_classifier,
    load_backbone,
    save_text_model,
)
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train


@dataclass(frozen=True, kw_only=True)
class NerConfig:
    run_dir: str
    data_dir: str | None = None  # None: $SEQBERT_DATA_DIR
    train_file: str = "conll2003/train.txt"  # relative to data_dir
    dev_file: str | None = "conll2003/valid.txt"  # evaluated every train.eval_every steps (None: skip)
    test_file: str = "conll2003/test.txt"  # evaluated once at the end: the reported figure
    max_train_sentences: int | None = None  # subsample: a seeded random subset
    max_len: int = 128
    batch_size: int = 32
    eval_batch_size: int = 128
    init: str = "hf"  # "scratch" | "seqbert" | "hf"
    init_dir: str | None = None  # seqbert run or HF directory; None with "hf"/"scratch": all-MiniLM-L6-v2
    dropout: float | None = None
    seed: int = 0
    train: TrainConfig

    def __post_init__(self) -> None:
        if self.init not in ("scratch", "seqbert", "hf"):
            raise ValueError(f"init must be 'scratch', 'seqbert' or 'hf', got {self.init!r}")


def _subset(data: TaggingData, n: int | None, seed: int) -> TaggingData:
    if n is None or n >= len(data.words):
        return data
    keep = sorted(torch.randperm(len(data.words), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return TaggingData([data.words[i] for i in keep], [data.tags[i] for i in keep])


def main(cfg: NerConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    t0 = time.perf_counter()

    # ---- data
    root = resolve_data_dir(cfg.data_dir)
    train_data = _subset(read_conll(root / cfg.train_file), cfg.max_train_sentences, cfg.seed)
    test_data = read_conll(root / cfg.test_file)
    tag_id = {t: i for i, t in enumerate(CONLL_TAGS)}
    unknown = {t for s in train_data.tags for t in s} - set(tag_id)
    if unknown:
        raise ValueError(
            f"{root / cfg.train_file}: tags {sorted(unknown)} are not CoNLL-2003 tags {CONLL_TAGS}"
        )
    task = TextTask("token", CONLL_TAGS, cfg.max_len)

    # ---- model
    config, tokenizer, weights = load_backbone(cfg.init, cfg.init_dir, cfg.dropout)
    torch.manual_seed(cfg.seed)
    model = build_classifier("token", config, len(CONLL_TAGS))
    fresh = init_classifier(model, weights, cfg.init_dir)

    # ---- train: rows keep input tensors and labels; word_index stays with the evaluation tensors
    def encode(data: TaggingData, with_tags: bool) -> dict[str, torch.Tensor]:
        tags = [[tag_id[t] for t in s] for s in data.tags] if with_tags else None
        return encode_words(tokenizer, data.words, tags, cfg.max_len)

    train_tensors = encode(train_data, True)
    train_tensors.pop("word_index")
    source = TensorBatchSource(train_tensors, cfg.batch_size, cfg.seed, collate=classification_collate)
    evaluate = None
    if cfg.dev_file is not None:
        dev_data = read_conll(root / cfg.dev_file)
        evaluate = evaluate_tagging(encode(dev_data, False), dev_data.tags, CONLL_TAGS, cfg.eval_batch_size)
    result = train(model, source, cfg.train, run_dir, evaluate)

    # ---- test, save
    model.eval()
    with torch.no_grad():
        test = evaluate_tagging(encode(test_data, False), test_data.tags, CONLL_TAGS, cfg.eval_batch_size)(
            model
        )
    save_text_model(run_dir, model, tokenizer, task)
    results = {
        "init": cfg.init,
        "train_sentences": len(train_data.words),
        "test_sentences": len(test_data.words),
        "fresh_parameters": len(fresh),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        **{f"dev_{k}": v for k, v in result.last_eval.items() if k in ("precision", "recall", "f1")},
        **{f"test_{k}": v for k, v in test.items()},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a YAML file, e.g. recipes/finetune_conll2003.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.max_steps=10")
    args = parser.parse_args()
    print(json.dumps(main(load_config(NerConfig, args.config, args.overrides)), indent=2))
