"""MovieLens-1M two-stage recommendation: Faiss retrieval of K candidates -> BERT4Rec reranking, beside
BERT4Rec's exact full ranking, on the leave-one-out test users (seen items excluded everywhere).

    python recipes/two_stage_ml1m.py --config recipes/two_stage_ml1m.yaml [--set key=value ...]

Needs a trained BERT4Rec run (`recipes/bert4rec.py ... --out runs/bert4rec-ml1m`; its `data/` holds the
prepared split) and, for the "sasrec" retriever, a SASRec+ run on the same data. Retrievers:
  recent         no transformer at all: the query is a recency-weighted mean of the L2-normalised BERT4Rec
                 item embeddings of the user's last `recent_items` items, w_j = recent_decay^age; a Flat
                 inner-product index over the normalised item embeddings (item-to-item similarity)
  sasrec         SASRec+'s own scores s_i = t(h).e_i + b_i as inner-product search over [e_i, b_i] with
                 queries [t(h), 1] (`seqbert.retrieval.items`), in a `factory` index (HNSW by default)
  bert4rec_ann   BERT4Rec's own scores the same way: the reranker then only repairs the ANN's misses
Reranker: BERT4Rec scoring just the K candidates (`candidate_scores`). Reference: BERT4Rec full ranking.
Writes OUT/results.json and OUT/report.txt, and merges "ml1m_two_stage" into
benchmarks/results/retrieval.json (`--no-merge` to skip): the headline is depth `headline_depth`, the
retriever with the best reranked NDCG@10 there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seqbert.config import config_to_dict, load_config
from seqbert.data.interactions import load_prepared
from seqbert.pipeline import PipelineConfig, format_report, run_two_stage
from seqbert.retrieval.index import IndexConfig
from seqbert.retrieval.items import (
    full_ranking,
    model_reranker,
    model_retriever,
    recent_items_retriever,
    test_queries,
)
from seqbert.tasks.bert4rec import load_recommender
from seqbert.training.checkpoint import merge_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results" / "retrieval.json"
RETRIEVERS = ("recent", "sasrec", "bert4rec_ann")


@dataclass(frozen=True)
class TwoStageConfig:
    model_dir: str = "runs/bert4rec-ml1m"  # BERT4Rec run: reranker, reference, prepared data
    sasrec_dir: str | None = "runs/sasrec-ml1m"  # SASRec+ run for the "sasrec" retriever
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
            raise ValueError(f"TwoStageConfig.retrievers must be among {RETRIEVERS}, got {self.retrievers!r}")
        if "sasrec" in self.retrievers and not self.sasrec_dir:
            raise ValueError("TwoStageConfig.retrievers includes 'sasrec' but sasrec_dir is not set")
        if not self.depths or min(self.depths) < 10:
            raise ValueError(f"TwoStageConfig.depths must be >= 10 (NDCG@10 needs 10), got {self.depths!r}")
        if self.headline_depth not in self.depths:
            raise ValueError(f"headline_depth {self.headline_depth} is not one of depths {self.depths}")
        if self.recent_items < 1 or not 0 < self.recent_decay <= 1:
            raise ValueError("recent_items must be >= 1 and recent_decay in (0, 1]")


def main(cfg: TwoStageConfig, out: Path) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    model, vocab = load_recommender(cfg.model_dir)
    ds = load_prepared(Path(cfg.model_dir) / "data")
    queries, rel_ids = test_queries(ds, cfg.max_users)
    sasrec = None
    if "sasrec" in cfg.retrievers:
        sasrec, sasrec_vocab = load_recommender(cfg.sasrec_dir)
        if sasrec_vocab != vocab:
            raise ValueError(f"{cfg.sasrec_dir}: its item vocabulary differs from {cfg.model_dir}'s")

    rerank = model_reranker(model)
    reference = full_ranking(model, cfg.reference_depth)

    pcfg = PipelineConfig(
        batch_size=cfg.batch_size, latency_queries=cfg.latency_queries, progress=cfg.progress
    )
    results, text = {}, []
    for name in cfg.retrievers:
        for depth in cfg.depths:
            if name == "recent":
                retrieve = recent_items_retriever(model, depth, cfg.recent_items, cfg.recent_decay)
            else:
                index = IndexConfig(factory=cfg.factory, ef_search=cfg.ef_search)
                retrieve = model_retriever(sasrec if name == "sasrec" else model, depth, index)
            report = run_two_stage(queries, rel_ids, retrieve, rerank, reference, config=pcfg)
            results[f"{name}@{depth}"] = report
            text.append(format_report(report, f"== {name} retriever, depth {depth}"))
            print(text[-1], flush=True)

    out.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in results.items() if k.endswith(f"@{cfg.headline_depth}")}
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
            for k, v in results.items()
        },
        "users": len(queries),
        "seconds": round(time.time() - t_start, 1),
        "threads": torch.get_num_threads(),
    }
    full = {"summary": summary, "config": config_to_dict(cfg), "pipelines": results}
    (out / "results.json").write_text(json.dumps(full, indent=2) + "\n")
    (out / "report.txt").write_text("\n\n".join(text) + "\n")
    print(f"headline ({best}): ndcg@10 {summary['ndcg@10']:.4f} vs full {summary['full_ndcg@10']:.4f} "
          f"({summary['relative_gap']:+.2%}), cost ratio {summary['cost_ratio']:.3f}")  # fmt: skip
    return full


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default="runs/two_stage_ml1m")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--no-merge", action="store_true", help="do not write benchmarks/results/retrieval.json")
    args = ap.parse_args(argv)
    cfg = load_config(TwoStageConfig, args.config, args.set)
    full = main(cfg, Path(args.out))
    if not args.no_merge:  # the summary, under its key, with the command that reproduces it
        command = shlex.join(
            ["python", "recipes/two_stage_ml1m.py", *(sys.argv[1:] if argv is None else argv)]
        )
        merge_json(RESULTS_JSON, "ml1m_two_stage", {**full["summary"], "command": command})
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
