"""The text jobs of `seqbert train`: fine-tuning for sequence / sentence-pair classification (`classify`)
and token classification (`token_classify`); `JOBS` also carries `pretrain` (jobs/text_pretrain.py),
`rerank` (jobs/text_rerank.py) and `text_pipeline` (jobs/text_pipeline.py).

    seqbert train recipes/finetune_sst2.yaml --out runs/sst2 --data-dir DATA
    seqbert train recipes/finetune_conll2003.yaml --out runs/conll --data-dir DATA --set train.max_steps=50

config -> data files (relative paths are under the data directory) -> `TextModel.from_pretrained` (a new
head on all-MiniLM-L6-v2 by default, or on a seqbert pretraining run, or random weights) -> `fit` ->
evaluation -> `OUT/model/` (loadable with `TextModel.from_pretrained(OUT)` and `seqbert text predict OUT`)
and `OUT/metrics.json`. Checkpoints and the loss curve are under `OUT/train/`; a rerun resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqbert.data.glue import CONLL_TAGS, read_conll, read_mrpc, read_sst2
from seqbert.jobs import Job, text_pipeline, text_pretrain, text_rerank
from seqbert.jobs.text_io import data_path, write_metrics
from seqbert.tasks.text import MODEL_DIR
from seqbert.text_model import TextModel
from seqbert.training.loop import TrainConfig

# dataset -> (reader, default train file, default eval file, class names)
DATASETS = {
    "sst2": (read_sst2, "sst2/train.tsv", "sst2/dev.tsv", ("negative", "positive")),
    "mrpc": (read_mrpc, "mrpc/train.tsv", "mrpc/dev.tsv", ("not_paraphrase", "paraphrase")),
}
INITS = ("scratch", "seqbert", "hf")


@dataclass(frozen=True)
class EncoderInit:
    """Where the encoder comes from: "hf" (a Hugging Face BERT directory; None = the bundled
    all-MiniLM-L6-v2), "seqbert" (a seqbert pretraining run or model directory) or "scratch" (the
    architecture and tokenizer of `init_dir`, random weights)."""

    init: str = "hf"
    init_dir: str | None = None
    dropout: float | None = None  # None: the checkpoint's own

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def load(self, labels: tuple[str, ...], kind: str, max_len: int) -> TextModel:
        return TextModel.from_pretrained(
            self.init_dir, labels, kind, max_len, init=self.init, dropout=self.dropout
        )


def _check_sizes(**sizes: int | None) -> None:
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


# ------------------------------------------------------------------------------------------ classify


@dataclass(frozen=True)
class ClassifyData:
    dataset: str = "sst2"  # one of DATASETS: fixes the reader and the class names
    train_file: str | None = None  # None: the dataset's train.tsv
    eval_file: str | None = None  # None: the dataset's dev.tsv
    max_train_examples: int | None = None  # a seeded random subset of this size
    max_eval_examples: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        _check_sizes(max_train_examples=self.max_train_examples, max_eval_examples=self.max_eval_examples)


@dataclass(frozen=True, kw_only=True)
class ClassifyJob:
    train: TrainConfig
    data: ClassifyData = field(default_factory=ClassifyData)
    model: EncoderInit = field(default_factory=EncoderInit)
    max_len: int = 64
    batch_size: int = 32
    eval_batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        _check_sizes(max_len=self.max_len, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size)


def run_classify(cfg: ClassifyJob, out: Path, data_dir: str | None = None) -> dict:
    """Sentence (SST-2) or sentence-pair (MRPC) classification: dev accuracy and F1 of the positive class."""
    t0 = time.perf_counter()
    read, train_file, eval_file, labels = DATASETS[cfg.data.dataset]
    d = cfg.data
    train_data = read(data_path(data_dir, d.train_file or train_file)).sample(d.max_train_examples, cfg.seed)
    eval_data = read(data_path(data_dir, d.eval_file or eval_file)).sample(d.max_eval_examples, cfg.seed)
    kind = "pair" if train_data.pairs is not None else "sequence"

    torch.manual_seed(cfg.seed)
    clf = cfg.model.load(labels, kind, cfg.max_len)
    result = clf.fit(train_data, cfg.train, out / "train", eval_data=eval_data, batch_size=cfg.batch_size,
                     eval_batch_size=cfg.eval_batch_size, seed=cfg.seed)  # fmt: skip
    clf.save_pretrained(out / MODEL_DIR)
    return write_metrics(out, {
        "dataset": d.dataset,
        "init": cfg.model.init,
        "train_examples": len(train_data.labels),
        "eval_examples": len(eval_data.labels),
        "fresh_parameters": len(clf.fresh),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        **{f"eval_{k}": v for k, v in result.last_eval.items()},
        "best_metric": result.best_metric,
        "best_step": result.best_step,
    })  # fmt: skip


# ------------------------------------------------------------------------------------ token_classify


@dataclass(frozen=True)
class TaggingDataConfig:
    """CoNLL files (word per line, the IOB2 tag last, blank lines between sentences)."""

    train_file: str = "conll2003/train.txt"
    dev_file: str | None = "conll2003/valid.txt"  # evaluated every train.eval_every steps (None: skip)
    test_file: str = "conll2003/test.txt"  # evaluated once at the end: the reported figure
    max_train_sentences: int | None = None  # a seeded random subset

    def __post_init__(self) -> None:
        _check_sizes(max_train_sentences=self.max_train_sentences)


@dataclass(frozen=True, kw_only=True)
class TokenClassifyJob:
    train: TrainConfig
    data: TaggingDataConfig = field(default_factory=TaggingDataConfig)
    model: EncoderInit = field(default_factory=EncoderInit)
    max_len: int = 128
    batch_size: int = 32
    eval_batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        _check_sizes(max_len=self.max_len, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size)


def run_token_classify(cfg: TokenClassifyJob, out: Path, data_dir: str | None = None) -> dict:
    """CoNLL-2003 NER: each word's first sub-token carries its tag (Devlin et al. 2019, §5.3); entity-level
    precision / recall / F1 as conlleval computes them, on whole words."""
    t0 = time.perf_counter()
    d = cfg.data
    train_path = data_path(data_dir, d.train_file)
    train_data = read_conll(train_path).sample(d.max_train_sentences, cfg.seed)
    unknown = sorted({t for s in train_data.tags for t in s} - set(CONLL_TAGS))
    if unknown:
        raise ValueError(f"{train_path}: tags {unknown} are not CoNLL-2003 tags {CONLL_TAGS}")
    test_data = read_conll(data_path(data_dir, d.test_file))
    dev_data = read_conll(data_path(data_dir, d.dev_file)) if d.dev_file is not None else None

    torch.manual_seed(cfg.seed)
    tagger = cfg.model.load(CONLL_TAGS, "token", cfg.max_len)
    result = tagger.fit(train_data, cfg.train, out / "train", eval_data=dev_data, batch_size=cfg.batch_size,
                        eval_batch_size=cfg.eval_batch_size, seed=cfg.seed)  # fmt: skip
    test = tagger.evaluate(test_data, cfg.eval_batch_size)
    tagger.save_pretrained(out / MODEL_DIR)
    return write_metrics(out, {
        "init": cfg.model.init,
        "train_sentences": len(train_data.words),
        "test_sentences": len(test_data.words),
        "fresh_parameters": len(tagger.fresh),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        **{f"dev_{k}": v for k, v in result.last_eval.items() if k in ("precision", "recall", "f1")},
        **{f"test_{k}": v for k, v in test.items()},
    })  # fmt: skip


JOBS = {
    "pretrain": Job(text_pretrain.PretrainJob, text_pretrain.run, "text BERT pretraining (MLM + NSP)"),
    "classify": Job(ClassifyJob, run_classify, "sequence or sentence-pair classification (SST-2, MRPC)"),
    "token_classify": Job(TokenClassifyJob, run_token_classify, "token classification (CoNLL-2003 NER)"),
    "rerank": Job(text_rerank.RerankJob, text_rerank.run_rerank, "cross-encoder fine-tuning, BM25 negatives"),
    "text_pipeline": Job(
        text_pipeline.TextPipelineJob,
        text_pipeline.run_pipeline,
        "BEIR retrieve -> fuse -> rerank, evaluated",
    ),
}
