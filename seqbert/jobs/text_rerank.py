"""Cross-encoder jobs of `seqbert train` on a BEIR dataset (SciFact by default):

`rerank`: fine-tune a cross-encoder on the train queries with hard negatives.

    seqbert train recipes/scifact_finetune.yaml --out runs/scifact_finetune --data-dir DATA

  BEIR train split minus `holdout` (a hash-chosen set of queries kept for tuning the fusion weight of the
  cross-encoder against the first stage: weights tuned on queries whose labels the cross-encoder was trained
  on would trust it too much) -> top-`negatives_depth` per query of a first stage (BM25, or the lists of
  `negatives_from`, a `text_pipeline` run's exported candidates: the first stage the cross-encoder will
  rerank) minus its judged documents = the hard-negative pool -> rows (query, one positive, pool) ->
  groups of 1 positive + G-1 negatives drawn afresh each epoch -> listwise softmax (or pointwise BCE)
  through the seqbert training loop ->
  `OUT/hf/` (config.json, model.safetensors, tokenizer.json), loadable by `load_cross_encoder` and by
  `transformers.BertForSequenceClassification`. `freeze_layers` keeps the embeddings and the bottom N blocks
  fixed (less backward cost on a CPU; guards the MS MARCO skill against a small train set's over-fitting).
  `OUT/hf/trained_queries.json` lists the queries trained on; `text_pipeline` refuses to tune or report on
  any of them.

`text_pipeline` (retrieve -> fuse -> rerank, evaluated) lives in `seqbert.jobs.text_pipeline`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqbert.jobs.text_io import data_path, read_candidates, write_metrics, write_trained_queries
from seqbert.model.hf import save_hf_model
from seqbert.retrieval.beir import BeirData, holdout_split, load_beir
from seqbert.retrieval.bm25 import Bm25Index
from seqbert.tasks.rerank import CrossEncoder, group_collate, load_cross_encoder
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

FIRST_STAGES = ("bm25", "dense", "hybrid")


@dataclass(frozen=True)
class BeirDataConfig:
    dataset: str = "scifact"  # a BEIR directory (corpus.jsonl, queries.jsonl, qrels/) under the data dir
    split: str = "test"
    max_queries: int | None = None  # the first N judged queries (smoke runs)

    def __post_init__(self) -> None:
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")


def _positive(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)!r}")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to n inside the block (None: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class HoldoutConfig:
    """`queries` judged queries of a split held out of fine-tuning (`seqbert.retrieval.beir.holdout_split`
    with `seed`): the `rerank` job trains on the rest, `text_pipeline` tunes `rerank_fusion` on them."""

    queries: int
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "queries")


def _load(cfg: BeirDataConfig, data_dir: str | None) -> tuple[BeirData, list[str]]:
    data = load_beir(data_path(data_dir, cfg.dataset), cfg.split)
    return data, list(data.queries)[: cfg.max_queries]


# -------------------------------------------------------------------------------------------- rerank


@dataclass(frozen=True, kw_only=True)
class RerankJob:
    train: TrainConfig
    init_dir: str  # a HF reranker (e.g. ms-marco-MiniLM-L-12-v2) or encoder directory (head starts fresh)
    data: BeirDataConfig = field(default_factory=lambda: BeirDataConfig(split="train"))
    holdout: HoldoutConfig | None = None  # queries of the split left out (for text_pipeline's tuning)
    negatives_from: str | None = None  # a candidates file (text_io); None: BM25 lists
    negatives_depth: int = 30  # first-stage ranks searched for hard negatives
    group_size: int = 4  # 1 positive + 3 negatives per query row
    loss: str = "listwise"  # or "pointwise"
    max_len: int = 256
    batch_size: int = 8  # query rows per step (x group_size pairs)
    freeze_layers: int = 0  # embeddings + the bottom N blocks get no gradient
    bm25_stem: bool = True
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def __post_init__(self) -> None:
        if self.group_size < 2 or self.negatives_depth < self.group_size:
            raise ValueError(
                f"need 2 <= group_size ({self.group_size}) <= negatives_depth ({self.negatives_depth})"
            )
        if self.loss not in ("listwise", "pointwise"):
            raise ValueError(f"loss must be 'listwise' or 'pointwise', got {self.loss!r}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        _positive(self, "max_len", "batch_size")


def candidate_rows(cfg: RerankJob, data: BeirData, qids: list[str]) -> np.ndarray:
    """Each query's first-stage top `negatives_depth` corpus rows (Q, depth), -1 padded: BM25's, or the
    lists of the `negatives_from` candidates file."""
    depth = cfg.negatives_depth
    if cfg.negatives_from is None:
        return Bm25Index(data.doc_texts, cfg.bm25_stem).search([data.queries[q] for q in qids], depth)
    path = Path(cfg.negatives_from)
    lists = read_candidates(path, cfg.data.dataset, cfg.data.split)["lists"]
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    out = np.full((len(qids), depth), -1, dtype=np.int64)
    for r, q in enumerate(qids):
        if q not in lists:
            raise ValueError(f"{path}: no candidate list for query {q!r}")
        unknown = [d for d in lists[q][:depth] if d not in row_of]
        if unknown:
            raise ValueError(f"{path}: query {q!r} lists documents not in the corpus: {unknown[:3]}")
        top = [row_of[d] for d in lists[q][:depth]]
        out[r, : len(top)] = top
    return out


def hard_negative_rows(data: BeirData, qids: list[str], found: np.ndarray) -> dict[str, torch.Tensor]:
    """One row per judged (query, positive) pair: query (N,), positive (N,) corpus row, and the query's
    first-stage rows `found` (Q, depth) minus its judged documents (N, depth), -1 padded."""
    depth = found.shape[1]
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    query, positive, negatives = [], [], []
    for qi, q in enumerate(qids):
        relevant = {row_of[d] for d, g in data.qrels[q].items() if g > 0}
        pool = [int(d) for d in found[qi] if d >= 0 and int(d) not in relevant]
        pool += [-1] * (depth - len(pool))
        for d in sorted(relevant):
            query.append(qi)
            positive.append(d)
            negatives.append(pool)
    if not query:
        raise ValueError("no judged (query, relevant document) pair to train on")
    return {
        "query": torch.tensor(query),
        "positive": torch.tensor(positive),
        "negatives": torch.tensor(negatives),
    }


def run_rerank(cfg: RerankJob, out: Path, data_dir: str | None = None) -> dict:
    with torch_threads(cfg.threads):
        return _run_rerank(cfg, out, data_dir)


def _run_rerank(cfg: RerankJob, out: Path, data_dir: str | None) -> dict:
    t0 = time.perf_counter()
    data, qids = _load(cfg.data, data_dir)
    if cfg.holdout is not None:
        qids, held = holdout_split(qids, cfg.holdout.queries, cfg.holdout.seed)
        print(f"fine-tuning on {len(qids)} queries, {len(held)} held out (seed {cfg.holdout.seed})")
    rows = hard_negative_rows(data, qids, candidate_rows(cfg, data, qids))
    query_texts = [data.queries[q] for q in qids]

    torch.manual_seed(cfg.seed)
    classifier, tokenizer, fresh = load_cross_encoder(cfg.init_dir)
    if cfg.freeze_layers > classifier.config.num_layers:
        raise ValueError(
            f"freeze_layers={cfg.freeze_layers} exceeds the model's {classifier.config.num_layers}"
        )
    for module in (
        [classifier.bert.embeddings, *classifier.bert.layers[: cfg.freeze_layers]]
        if cfg.freeze_layers
        else []
    ):
        module.requires_grad_(False)
    model = CrossEncoder(classifier, cfg.loss)

    collate = group_collate(tokenizer, query_texts, data.doc_texts, cfg.group_size, cfg.max_len)
    source = TensorBatchSource(rows, cfg.batch_size, cfg.seed, collate=collate)
    result = train(model, source, cfg.train, out / "train")

    hf_dir = save_hf_model(classifier, out / "hf")
    original = Path(cfg.init_dir) / "tokenizer.json"  # byte for byte, for transformers' AutoTokenizer
    if original.exists():
        shutil.copy(original, hf_dir / "tokenizer.json")
    else:
        tokenizer.save(str(hf_dir / "tokenizer.json"))
    write_trained_queries(hf_dir, cfg.data.dataset, cfg.data.split, qids)
    return write_metrics(out, {
        "init_dir": cfg.init_dir,
        "fresh_parameters": fresh,
        "train_rows": len(rows["query"]),
        "train_queries": len(query_texts),
        "held_out_queries": 0 if cfg.holdout is None else cfg.holdout.queries,
        "negatives": "bm25" if cfg.negatives_from is None else cfg.negatives_from,
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "hf_dir": str(hf_dir),
    })  # fmt: skip
