"""Recipe: fine-tune a cross-encoder on SciFact's train queries with BM25 hard negatives.

config -> BEIR SciFact train split -> BM25 top-`negatives_depth` per train query minus its judged
documents = the hard-negative pool -> rows (query, one positive, pool) -> groups of 1 positive + G-1
negatives drawn afresh each epoch -> listwise softmax (or pointwise BCE) through the seqbert training loop
-> `run_dir/hf/` (config.json, model.safetensors, tokenizer.json), loadable by `load_cross_encoder` and by
`transformers.BertForSequenceClassification`.

Start: `init_dir` = the imported ms-marco-MiniLM-L-12-v2 reranker by default (an encoder-only checkpoint
such as all-MiniLM-L6-v2 works too: its 1-logit head starts fresh). `freeze_layers` keeps the embeddings
and the bottom N blocks fixed, which cuts CPU backward cost and guards the MS MARCO ranking skill against
809 queries' worth of over-fitting.

    python recipes/scifact_finetune.py --config recipes/scifact_finetune.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import bm25s
import torch

from seqbert.config import config_to_dict, load_config
from seqbert.data.sources import resolve_data_dir
from seqbert.model.hf import save_hf_model
from seqbert.retrieval.beir import load_beir
from seqbert.tasks.rerank import CrossEncoder, group_collate, load_cross_encoder
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train


@dataclass(frozen=True, kw_only=True)
class FinetuneRerankConfig:
    run_dir: str = "runs/scifact_finetune"
    init_dir: str  # HF reranker or encoder directory
    data_dir: str | None = None  # holds `dataset/`; None: $SEQBERT_DATA_DIR
    dataset: str = "scifact"
    split: str = "train"
    negatives_depth: int = 30  # BM25 ranks searched for hard negatives
    group_size: int = 4  # 1 positive + 3 negatives per query row
    loss: str = "listwise"
    max_len: int = 256
    batch_size: int = 8  # query rows per step (x group_size pairs)
    freeze_layers: int = 0  # embeddings + the bottom N blocks get no gradient
    bm25_stem: bool = True
    seed: int = 0
    threads: int | None = None
    train: TrainConfig

    def __post_init__(self) -> None:
        if self.group_size < 2 or self.negatives_depth < self.group_size:
            raise ValueError(
                f"need 2 <= group_size ({self.group_size}) <= negatives_depth ({self.negatives_depth})"
            )
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")


def hard_negative_rows(cfg: FinetuneRerankConfig, data) -> dict[str, torch.Tensor]:
    """One row per judged (query, positive) pair, with the query's BM25 non-relevant pool (P,), -1 padded."""
    stemmer = None
    if cfg.bm25_stem:
        try:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
        except ImportError:
            print("PyStemmer not installed: BM25 without stemming")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(data.doc_texts, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)  # fmt: skip
    qids = list(data.queries)
    tokens = bm25s.tokenize(
        [data.queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False
    )
    docs, _ = retriever.retrieve(tokens, k=cfg.negatives_depth, show_progress=False, n_threads=0)  # (Q, P)
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    query, positive, negatives = [], [], []
    for qi, q in enumerate(qids):
        relevant = {row_of[d] for d, g in data.qrels[q].items() if g > 0}
        pool = [int(d) for d in docs[qi] if int(d) not in relevant]
        pool += [-1] * (cfg.negatives_depth - len(pool))
        for d in sorted(relevant):
            query.append(qi)
            positive.append(d)
            negatives.append(pool)
    return {
        "query": torch.tensor(query),
        "positive": torch.tensor(positive),
        "negatives": torch.tensor(negatives),
    }


def main(cfg: FinetuneRerankConfig) -> dict:
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))

    # ---- data: train queries, BM25 hard negatives
    data = load_beir(resolve_data_dir(cfg.data_dir) / cfg.dataset, cfg.split)
    rows = hard_negative_rows(cfg, data)
    query_texts = list(data.queries.values())

    # ---- model
    torch.manual_seed(cfg.seed)
    classifier, tokenizer, fresh = load_cross_encoder(cfg.init_dir)
    frozen = [classifier.bert.embeddings, *classifier.bert.layers[: cfg.freeze_layers]]
    for module in frozen if cfg.freeze_layers else []:
        module.requires_grad_(False)
    model = CrossEncoder(classifier, cfg.loss)

    # ---- train
    collate = group_collate(tokenizer, query_texts, data.doc_texts, cfg.group_size, cfg.max_len)
    source = TensorBatchSource(rows, cfg.batch_size, cfg.seed, collate=collate)
    result = train(model, source, cfg.train, run_dir)

    # ---- save
    hf_dir = save_hf_model(classifier, run_dir / "hf")
    shutil.copy(Path(cfg.init_dir) / "tokenizer.json", hf_dir / "tokenizer.json")
    results = {
        "init_dir": cfg.init_dir,
        "fresh_parameters": fresh,
        "train_rows": len(rows["query"]),
        "train_queries": len(query_texts),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "hf_dir": str(hf_dir),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="a YAML file, e.g. recipes/scifact_finetune.yaml")
    parser.add_argument(
        "--data-dir", default=None, help="directory holding scifact/ (else $SEQBERT_DATA_DIR)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.max_steps=10")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    print(json.dumps(main(load_config(FinetuneRerankConfig, args.config, overrides)), indent=2))
