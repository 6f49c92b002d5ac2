"""The `item_rerank` job: train the cross-attention reranker (`seqbert.tasks.item_rerank`) on hard negatives
from a trained BERT4Rec, then evaluate BERT4Rec top-K -> cross reranker against BERT4Rec's full ranking.

    seqbert train recipes/cross_rerank_ml1m.yaml --out runs/cross-rerank-ml1m

`data.model_dir` is a `seqbert train` BERT4Rec run (the teacher, with its prepared data). Training rows come
from the training sequences only (cut points inside them), so validation and test items are never seen;
negatives are drawn once from the teacher's top `pool` for each row's history. The evaluation reranks the
`depth` candidates that the teacher retrieves (Flat index: exactly its own top-K) for every test user, with
the cross reranker and, as the control, with the teacher itself. Writes OUT/metrics.json, OUT/report.txt,
OUT/model/ (safetensors + JSON) and OUT/train/ (the loop's checkpoints and metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqbert.config import config_to_dict
from seqbert.jobs import Job
from seqbert.pipeline import PipelineConfig, format_report, run_two_stage
from seqbert.recommender import load_recommender, run_dataset
from seqbert.retrieval.index import IndexConfig
from seqbert.retrieval.items import full_ranking, model_reranker, model_retriever, test_queries
from seqbert.tasks.bert4rec import score_histories
from seqbert.tasks.item_rerank import CrossRecReranker, cross_reranker, hard_negative_examples
from seqbert.training.checkpoint import atomic_file, save_model
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

REFERENCE_DEPTH = 100  # the teacher's full ranking is cut here; metrics stop at 20


@dataclass(frozen=True)
class ItemRerankData:
    """The run this job reads (`out/run.json` binds to it)."""

    model_dir: str  # BERT4Rec run directory: the teacher and its prepared data

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise ValueError("data.model_dir must name a BERT4Rec run directory")


@dataclass(frozen=True)
class ItemRerankJob:
    data: ItemRerankData
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=3000, lr=3e-4, warmup_steps=100))
    cuts_per_user: int = 8  # training rows per user (random cut points in the training sequence)
    num_negatives: int = 15
    pool: int = 100  # negatives are sampled from the teacher's top `pool` (hard, not the very top only)
    batch_size: int = 32
    depth: int = 50  # candidates reranked at evaluation
    eval_batch_size: int = 128
    latency_queries: int = 100
    max_users: int | None = None  # evaluate a seeded subset (tests); None: every test user
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cuts_per_user", "num_negatives", "batch_size", "depth", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pool <= self.num_negatives:
            raise ValueError(f"pool ({self.pool}) must exceed num_negatives ({self.num_negatives})")
        if self.latency_queries < 0:
            raise ValueError(f"latency_queries must be >= 0, got {self.latency_queries}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be >= 1 or null, got {self.max_users}")


def run(cfg: ItemRerankJob, out: Path, data_dir: str | None = None) -> dict:
    """Train the reranker from the teacher, then evaluate both rerankers on the teacher's candidates;
    `data_dir` is unused (the teacher's run holds its data)."""
    t_start = time.time()
    ds = run_dataset(cfg.data.model_dir)
    if ds is None:
        raise FileNotFoundError(
            f"data.model_dir {cfg.data.model_dir}: no prepared data (a `seqbert train` run?)"
        )
    teacher, _, _ = load_recommender(cfg.data.model_dir)
    if teacher.config.causal:
        raise ValueError(
            f"data.model_dir {cfg.data.model_dir}: the teacher must be BERT4Rec (cloze), not causal"
        )
    rows = hard_negative_examples(
        ds.train_sequences, lambda h: score_histories(teacher, h), teacher.rec_config.max_len,
        cfg.cuts_per_user, cfg.num_negatives, cfg.pool, seed=cfg.seed,
    )  # fmt: skip
    print(f"{len(rows['labels'])} training rows, {cfg.num_negatives} hard negatives each")
    torch.manual_seed(cfg.seed)
    model = CrossRecReranker.from_recommender(teacher)
    source = TensorBatchSource(rows, cfg.batch_size, seed=cfg.seed)
    result = train(model, source, cfg.train, out / "train")
    model.eval()
    save_model(
        out / "model", model, {"bert": dataclasses.asdict(model.bert.config), "max_len": model.max_len}
    )

    queries, rel = test_queries(ds, cfg.max_users)
    pcfg = PipelineConfig(batch_size=cfg.eval_batch_size, latency_queries=cfg.latency_queries, progress=False)
    retrieve = model_retriever(teacher, cfg.depth, IndexConfig(factory="Flat"))
    reference = full_ranking(teacher, REFERENCE_DEPTH)
    pipelines = {
        "cross": run_two_stage(queries, rel, retrieve, cross_reranker(model), reference, config=pcfg),
        "bert4rec": run_two_stage(queries, rel, retrieve, model_reranker(teacher), reference, config=pcfg),
    }
    text = [
        format_report(rep, f"== teacher top-{cfg.depth} -> {name} reranker")
        for name, rep in pipelines.items()
    ]
    print("\n\n".join(text))
    cross = pipelines["cross"]
    summary = {
        "ndcg@10": cross["stages"]["rerank"]["ndcg@10"],
        "hr@10": cross["stages"]["rerank"]["hr@10"],
        "bert4rec_full_ndcg@10": cross["stages"]["full"]["ndcg@10"],
        "relative_gap": cross["ndcg@10_relative_gap"],
        "cost_ratio": cross["cost_ratio"],
        "depth": cfg.depth,
        "recall@depth": cross["stages"]["retrieve"][f"recall@{cfg.depth}"],
        "train_steps": result.step,
        "train_seconds": round(result.seconds, 1),
        "train_rows": int(len(rows["labels"])),
        "users": len(queries),
        "seconds": round(time.time() - t_start, 1),
        "config": config_to_dict(cfg),
        "pipelines": pipelines,
    }
    with atomic_file(out / "report.txt") as tmp:
        tmp.write_text("\n\n".join(text) + "\n")
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


JOBS = {
    "item_rerank": Job(
        ItemRerankJob, run, "cross-attention reranker trained on a BERT4Rec run's hard negatives"
    )
}
