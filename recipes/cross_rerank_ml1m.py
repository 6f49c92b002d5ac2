"""MovieLens-1M: train the cross-attention reranker (`seqbert.tasks.item_rerank`) on hard negatives from
BERT4Rec, then evaluate BERT4Rec top-K -> cross reranker against BERT4Rec's full ranking.

    python recipes/cross_rerank_ml1m.py --config recipes/cross_rerank_ml1m.yaml --out runs/cross-rerank-ml1m

Needs a trained BERT4Rec run (`model_dir`, with its prepared split in `data/`). Training rows come from the
training sequences only (cut points inside them), so validation and test items are never seen; negatives
are drawn once from BERT4Rec's top `pool` for each row's history. The evaluation reranks the `depth`
candidates that BERT4Rec retrieves (Flat index: exactly its own top-K) for every test user. Writes
OUT/results.json, OUT/model/ (safetensors + JSON), OUT/train/metrics.jsonl, and merges "ml1m_cross_rerank"
into benchmarks/results/retrieval.json unless --no-merge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqbert.config import config_to_dict, load_config
from seqbert.data.interactions import load_prepared
from seqbert.pipeline import PipelineConfig, format_report, run_two_stage
from seqbert.retrieval.index import IndexConfig
from seqbert.retrieval.items import full_ranking, model_reranker, model_retriever, test_queries
from seqbert.tasks.bert4rec import load_recommender, score_histories
from seqbert.tasks.item_rerank import CrossRecReranker, cross_reranker, hard_negative_examples
from seqbert.training.checkpoint import merge_json, save_model
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results" / "retrieval.json"


@dataclass(frozen=True)
class CrossRerankConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=3000, lr=3e-4, warmup_steps=100))
    model_dir: str = "runs/bert4rec-ml1m"
    cuts_per_user: int = 8  # training rows per user (random cut points in the training sequence)
    num_negatives: int = 15
    pool: int = 100  # negatives are sampled from BERT4Rec's top `pool` (hard, not the very top only)
    batch_size: int = 32
    depth: int = 50  # candidates reranked at evaluation
    eval_batch_size: int = 128
    latency_queries: int = 100
    max_users: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cuts_per_user", "num_negatives", "batch_size", "depth", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"CrossRerankConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pool < self.num_negatives:
            raise ValueError(f"pool ({self.pool}) must be >= num_negatives ({self.num_negatives})")


def main(cfg: CrossRerankConfig, out: Path) -> dict:
    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    teacher, vocab = load_recommender(cfg.model_dir)
    ds = load_prepared(Path(cfg.model_dir) / "data")
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
    reports = {
        "cross": run_two_stage(queries, rel, retrieve, cross_reranker(model), full_ranking(teacher, 100), config=pcfg),
        "bert4rec": run_two_stage(queries, rel, retrieve, model_reranker(teacher), full_ranking(teacher, 100), config=pcfg),
    }  # fmt: skip
    for name, rep in reports.items():
        print(format_report(rep, f"== BERT4Rec top-{cfg.depth} -> {name} reranker"))
    cross = reports["cross"]
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
    }
    full = {"summary": summary, "config": config_to_dict(cfg), "pipelines": reports}
    (out / "results.json").write_text(json.dumps(full, indent=2) + "\n")
    return full


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default="runs/cross-rerank-ml1m")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--no-merge", action="store_true", help="do not write benchmarks/results/retrieval.json")
    args = ap.parse_args(argv)
    full = main(load_config(CrossRerankConfig, args.config, args.set), Path(args.out))
    if not args.no_merge:  # the summary, under its key, with the command that reproduces it
        command = shlex.join(
            ["python", "recipes/cross_rerank_ml1m.py", *(sys.argv[1:] if argv is None else argv)]
        )
        merge_json(RESULTS_JSON, "ml1m_cross_rerank", {**full["summary"], "command": command})
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
