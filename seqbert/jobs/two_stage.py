"""The `two_stage` job: retrieve K candidates -> rerank them with BERT4Rec, beside BERT4Rec's exact full
ranking, on the leave-one-out test users of a trained run (seen items excluded everywhere).

    seqbert train recipes/two_stage_ml1m.yaml --out runs/two-stage-ml1m

`data.model_dir` is a `seqbert train` BERT4Rec run (the reranker, the reference, and its prepared data);
`data.sasrec_dir` a SASRec+ run on the same items, for the "sasrec" retriever. Retrievers:
  recent         no transformer at all: the query is a recency-weighted mean of the L2-normalised BERT4Rec
                 item embeddings of the user's last `recent_items` items, w_j = recent_decay^age; a Flat
                 inner-product index over the normalised item embeddings (item-to-item similarity)
  sasrec         SASRec+'s own scores s_i = t(h).e_i + b_i as inner-product search over [e_i, b_i] with
                 queries [t(h), 1] (`seqbert.retrieval.items`), in a `factory` index (HNSW by default)
  bert4rec_ann   BERT4Rec's own scores the same way: the reranker then only repairs the ANN's misses
Reranker: BERT4Rec scoring just the K candidates (`candidate_scores`). Reference: BERT4Rec full ranking.
Writes OUT/metrics.json (the headline at depth `headline_depth` for the retriever with the best reranked
NDCG@10 there, a row per retriever x depth, and every pipeline's full report) and OUT/report.txt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbert.config import config_to_dict
from seqbert.jobs import Job
from seqbert.pipeline import PipelineConfig, format_report, run_two_stage
from seqbert.recommender import load_recommender, run_dataset
from seqbert.retrieval.index import IndexConfig
from seqbert.retrieval.items import (
    full_ranking,
    model_reranker,
    model_retriever,
    recent_items_retriever,
    test_queries,
)
from seqbert.training.checkpoint import atomic_file

RETRIEVERS = ("recent", "sasrec", "bert4rec_ann")


@dataclass(frozen=True)
class TwoStageData:
    """The runs this job reads (`out/run.json` binds to them)."""

    model_dir: str  # BERT4Rec run directory: reranker, reference, prepared data
    sasrec_dir: str | None = None  # SASRec+ run directory, for the "sasrec" retriever

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise ValueError("data.model_dir must name a BERT4Rec run directory")


@dataclass(frozen=True)
class TwoStageJob:
    data: TwoStageData
    retrievers: tuple[str, ...] = RETRIEVERS
    depths: tuple[int, ...] = (100, 200, 500)
    headline_depth: int = 200
    recent_items: int = 20
    recent_decay: float = 0.8
    factory: str = "HNSW32"  # index for the model-vector retrievers
    ef_search: int = 128
    reference_depth: int = 100
    batch_size: int = 256
    latency_queries: int = 200
    max_users: int | None = None  # evaluate a seeded subset (tests); None: every test user
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [r for r in self.retrievers if r not in RETRIEVERS]
        if bad or not self.retrievers:
            raise ValueError(f"retrievers must be among {RETRIEVERS}, got {self.retrievers!r}")
        if "sasrec" in self.retrievers and not self.data.sasrec_dir:
            raise ValueError("retrievers includes 'sasrec' but data.sasrec_dir is not set")
        if not self.depths or min(self.depths) < 10:
            raise ValueError(f"depths must be >= 10 (NDCG@10 needs 10), got {self.depths!r}")
        if self.headline_depth not in self.depths:
            raise ValueError(f"headline_depth {self.headline_depth} is not one of depths {self.depths}")
        if self.recent_items < 1 or not 0 < self.recent_decay <= 1:
            raise ValueError("recent_items must be >= 1 and recent_decay in (0, 1]")
        if self.reference_depth < 10 or self.batch_size < 1 or self.latency_queries < 0:
            raise ValueError("reference_depth must be >= 10, batch_size >= 1 and latency_queries >= 0")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be >= 1 or null, got {self.max_users}")


def run(cfg: TwoStageJob, out: Path, data_dir: str | None = None) -> dict:
    """Every retriever x depth through `run_two_stage`; `data_dir` is unused (the runs hold their data)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    ds = run_dataset(cfg.data.model_dir)
    if ds is None:
        raise FileNotFoundError(
            f"data.model_dir {cfg.data.model_dir}: no prepared data (a `seqbert train` run?)"
        )
    model, vocab, _ = load_recommender(cfg.data.model_dir)
    queries, rel_ids = test_queries(ds, cfg.max_users)
    sasrec = None
    if "sasrec" in cfg.retrievers:
        sasrec, sasrec_vocab, _ = load_recommender(cfg.data.sasrec_dir)
        if sasrec_vocab != vocab:
            raise ValueError(
                f"data.sasrec_dir {cfg.data.sasrec_dir}: its item vocabulary differs from data.model_dir's"
            )

    rerank = model_reranker(model)
    reference = full_ranking(model, cfg.reference_depth)
    pcfg = PipelineConfig(
        batch_size=cfg.batch_size, latency_queries=cfg.latency_queries, progress=cfg.progress
    )
    pipelines, text = {}, []
    for name in cfg.retrievers:
        for depth in cfg.depths:
            if name == "recent":
                retrieve = recent_items_retriever(model, depth, cfg.recent_items, cfg.recent_decay)
            else:
                index = IndexConfig(factory=cfg.factory, ef_search=cfg.ef_search)
                retrieve = model_retriever(sasrec if name == "sasrec" else model, depth, index)
            report = run_two_stage(queries, rel_ids, retrieve, rerank, reference, config=pcfg)
            pipelines[f"{name}@{depth}"] = report
            text.append(format_report(report, f"== {name} retriever, depth {depth}"))
            print(text[-1], flush=True)

    head = {k: v for k, v in pipelines.items() if k.endswith(f"@{cfg.headline_depth}")}
    best = max(head, key=lambda k: head[k]["stages"]["rerank"]["ndcg@10"])
    summary = {
        "ndcg@10": head[best]["stages"]["rerank"]["ndcg@10"],
        "full_ndcg@10": head[best]["stages"]["full"]["ndcg@10"],
        "cost_ratio": head[best]["cost_ratio"],
        "latency_ratio_p50": head[best].get("latency_ratio_p50"),
        "relative_gap": head[best]["ndcg@10_relative_gap"],
        "pipeline": best,
        "retrieval_recall": head[best]["stages"]["retrieve"][f"recall@{cfg.headline_depth}"],
        "by_pipeline": {
            k: {
                "ndcg@10": v["stages"]["rerank"]["ndcg@10"],
                "retrieve_ndcg@10": v["stages"]["retrieve"]["ndcg@10"],
                f"recall@{v['depth']}": v["stages"]["retrieve"][f"recall@{v['depth']}"],
                "cost_ratio": v["cost_ratio"],
                "relative_gap": v["ndcg@10_relative_gap"],
                "overlap@10": v["overlap@10"],
            }
            for k, v in pipelines.items()
        },
        "users": len(queries),
        "seconds": round(time.time() - t_start, 1),
        "threads": torch.get_num_threads(),
        "config": config_to_dict(cfg),
        "pipelines": pipelines,
    }
    with atomic_file(out / "report.txt") as tmp:
        tmp.write_text("\n\n".join(text) + "\n")
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"headline ({best}): ndcg@10 {summary['ndcg@10']:.4f} vs full {summary['full_ndcg@10']:.4f} "
          f"({summary['relative_gap']:+.2%}), cost ratio {summary['cost_ratio']:.3f}")  # fmt: skip
    return summary


JOBS = {
    "two_stage": Job(TwoStageJob, run, "retrieve K candidates -> rerank with BERT4Rec, beside full ranking")
}
