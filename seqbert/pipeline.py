"""Two-stage retrieval: a cheap retriever proposes K candidates, an expensive reranker reorders them, and
every stage is evaluated on the same queries against the same judgements, beside exact full ranking.

    retrieve(queries)              -> candidate ids (B, K), best first, padded with -1     stage 1
    rerank(queries, candidates)    -> scores (B, K) for those candidates (padding ignored)  stage 2
    reference(queries)             -> ranked ids (B, D): the exact full ranking, optional

Reported per stage (`run_two_stage`):
- accuracy of the stage's ranked list cut at max(ks): ndcg@k, hr@k, recall@k, mrr@max(ks)
  (`seqbert.evaluation.metrics.evaluate_ranked`); for the retriever also recall@K, the share of relevant
  ids inside the candidate list, i.e. the ceiling of what any reranker can reach;
- throughput: queries/s when the whole query set goes through in batches of `batch_size`;
- latency per query: p50/p95 ms over `latency_queries` queries sent one at a time (what a server without
  batching sees), for the stage's own work and for the pipeline up to it.
With a reference: `cost_ratio` = pipeline seconds / full-ranking seconds (batched, same queries, same
process), `latency_ratio_p50`, the relative NDCG@10 gap, and `overlap@10`, the share of the reference's
top 10 found in the pipeline's top 10. Shape legend: Q queries, B batch, K candidate depth, R judged ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from seqbert.evaluation.metrics import evaluate_ranked, mean_metrics

Retriever = Callable[[Sequence[Any]], np.ndarray]  # queries (B,) -> candidate ids (B, K), -1 padded
Reranker = Callable[[Sequence[Any], np.ndarray], np.ndarray]  # queries, ids (B, K) -> scores (B, K)


@dataclass(frozen=True)
class PipelineConfig:
    ks: tuple[int, ...] = (1, 5, 10, 20)
    batch_size: int = 256  # queries per call in the throughput pass
    latency_queries: int = 200  # queries timed one at a time (a seeded sample); 0 skips latency
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"PipelineConfig.ks must be positive integers, got {self.ks!r}")
        if self.batch_size < 1:
            raise ValueError(f"PipelineConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.latency_queries < 0:
            raise ValueError(f"PipelineConfig.latency_queries must be >= 0, got {self.latency_queries}")


def order_by_scores(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Reorder each row of candidates (B, K) by descending score (stable: ties keep the retriever's
    order); padding (-1) goes last whatever its score. NaN scores rank like -inf."""
    if candidates.shape != scores.shape:
        raise ValueError(f"reranker returned scores {scores.shape} for candidates {candidates.shape}")
    s = np.where((candidates < 0) | np.isnan(scores), -np.inf, scores.astype(np.float64))  # (B, K)
    key = np.where(candidates < 0, 1, 0)  # padding after every real candidate, even a -inf one
    order = np.lexsort((-s, key), axis=1)  # (B, K): primary key `key`, then -score; lexsort is stable
    return np.take_along_axis(candidates, order, axis=1)


def _check_ids(name: str, ids: np.ndarray, rows: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] != rows or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must return integer ids of shape ({rows}, K), got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _batched(fn: Callable, queries: Sequence[Any], extra: np.ndarray | None, cfg: PipelineConfig, desc: str):
    """Run fn over the queries in batches -> (concatenated output, seconds spent inside fn)."""
    out, seconds = [], 0.0
    starts = range(0, len(queries), cfg.batch_size)
    for s in tqdm(starts, desc=desc, disable=not cfg.progress, leave=False):
        q = queries[s : s + cfg.batch_size]
        t0 = time.perf_counter()
        r = fn(q) if extra is None else fn(q, extra[s : s + cfg.batch_size])
        seconds += time.perf_counter() - t0
        out.append(np.asarray(r))
    return np.concatenate(out), seconds


def _accuracy(ranked: np.ndarray, rel_ids: np.ndarray, rel_grades: np.ndarray | None, ks) -> dict[str, float]:
    top = max(ks)
    m = mean_metrics(evaluate_ranked(ranked[:, :top], rel_ids, rel_grades, ks=ks))
    out = {k: v for k, v in m.items() if k.split("@")[0] in ("ndcg", "hr", "recall")}
    out[f"mrr@{top}"] = m["mrr"]
    return out


def _latency(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def run_two_stage(
    queries: Sequence[Any],
    rel_ids: np.ndarray,
    retrieve: Retriever,
    rerank: Reranker | None = None,
    reference: Retriever | None = None,
    rel_grades: np.ndarray | None = None,
    config: PipelineConfig = PipelineConfig(),
) -> dict:
    """Evaluate retrieve -> rerank (and the full-ranking reference) on `queries` with judgements rel_ids
    (Q, R) padded with -1 (a single held-out item per user is (Q, 1)) -> a JSON-ready report with stages
    "retrieve", "rerank" (when a reranker is given) and "full" (when a reference is given).
    """
    cfg = config
    Q = len(queries)
    rel_ids = np.asarray(rel_ids)
    if rel_ids.ndim != 2 or len(rel_ids) != Q:
        raise ValueError(f"rel_ids must have shape ({Q}, R), got {rel_ids.shape}")
    if Q == 0:
        raise ValueError("run_two_stage needs at least one query")
    report: dict = {"queries": Q, "stages": {}}

    cands, t_retrieve = _batched(retrieve, queries, None, cfg, "retrieve")
    cands = _check_ids("retrieve", cands, Q)
    K = cands.shape[1]
    report["depth"] = K
    retrieved = _accuracy(cands, rel_ids, rel_grades, cfg.ks)
    retrieved[f"recall@{K}"] = mean_metrics(evaluate_ranked(cands, rel_ids, rel_grades, ks=(K,)))[
        f"recall@{K}"
    ]
    report["stages"]["retrieve"] = {**retrieved, "queries_per_s": Q / t_retrieve, "seconds": t_retrieve}
    final, t_pipeline = cands, t_retrieve

    if rerank is not None:
        scores, t_rerank = _batched(rerank, queries, cands, cfg, "rerank")
        final = order_by_scores(cands, scores)
        t_pipeline = t_retrieve + t_rerank
        report["stages"]["rerank"] = {
            **_accuracy(final, rel_ids, rel_grades, cfg.ks),
            "queries_per_s": Q / t_rerank,
            "seconds": t_rerank,
            "pipeline_queries_per_s": Q / t_pipeline,
        }

    ref = None
    if reference is not None:
        ref, t_ref = _batched(reference, queries, None, cfg, "full ranking")
        ref = _check_ids("reference", ref, Q)
        report["stages"]["full"] = {
            **_accuracy(ref, rel_ids, rel_grades, cfg.ks),
            "queries_per_s": Q / t_ref,
            "seconds": t_ref,
        }
        last = report["stages"]["rerank" if rerank is not None else "retrieve"]
        full_ndcg = report["stages"]["full"]["ndcg@10"] if 10 in cfg.ks else None
        report["cost_ratio"] = t_pipeline / t_ref
        if full_ndcg:
            report["ndcg@10_relative_gap"] = last["ndcg@10"] / full_ndcg - 1.0
        n = min(10, ref.shape[1], final.shape[1])
        hits = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((b >= 0).sum())) for a, b in
                zip(final[:, :n], ref[:, :n])]  # fmt: skip
        report["overlap@10"] = float(np.mean(hits))

    if cfg.latency_queries:
        rng = np.random.default_rng(cfg.seed)
        sample = np.sort(rng.choice(Q, min(cfg.latency_queries, Q), replace=False))
        own = {"retrieve": [], "rerank": [], "full": []}
        for i in tqdm(sample, desc="latency", disable=not cfg.progress, leave=False):
            q = queries[int(i) : int(i) + 1]
            t0 = time.perf_counter()
            c = retrieve(q)
            t1 = time.perf_counter()
            own["retrieve"].append(t1 - t0)
            if rerank is not None:
                rerank(q, np.asarray(c))
                own["rerank"].append(time.perf_counter() - t1)
            if reference is not None:
                t2 = time.perf_counter()
                reference(q)
                own["full"].append(time.perf_counter() - t2)
        report["stages"]["retrieve"]["latency"] = _latency(own["retrieve"])
        if rerank is not None:
            total = [a + b for a, b in zip(own["retrieve"], own["rerank"])]
            report["stages"]["rerank"]["latency"] = _latency(own["rerank"])
            report["stages"]["rerank"]["pipeline_latency"] = _latency(total)
        else:
            total = own["retrieve"]
        if reference is not None:
            report["stages"]["full"]["latency"] = _latency(own["full"])
            report["latency_ratio_p50"] = float(np.percentile(total, 50) / np.percentile(own["full"], 50))
        report["latency_queries"] = len(sample)
    return report


def format_report(report: dict, title: str = "") -> str:
    """A plain-text table of a `run_two_stage` report (one row per stage)."""
    lines = [title] if title else []
    K = report["depth"]
    lines.append(
        f"{'stage':10s} {'ndcg@10':>8s} {'hr@10':>7s} {f'recall@{K}':>11s} {'q/s':>9s} {'p50 ms':>8s}"
    )
    for name, s in report["stages"].items():
        rec = s.get(f"recall@{K}")
        lat = s.get("pipeline_latency", s.get("latency", {})).get("p50_ms", float("nan"))
        lines.append(
            f"{name:10s} {s.get('ndcg@10', float('nan')):8.4f} {s.get('hr@10', float('nan')):7.4f} "
            f"{'' if rec is None else f'{rec:.4f}':>11s} {s['queries_per_s']:9.1f} {lat:8.2f}"
        )
    if "cost_ratio" in report:
        lines.append(
            f"cost ratio (pipeline / full, batched) {report['cost_ratio']:.3f}; "
            f"ndcg@10 gap {report.get('ndcg@10_relative_gap', float('nan')):+.2%}; "
            f"overlap@10 with full {report['overlap@10']:.3f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- CLI


def add_pipeline_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="retrieve -> rerank -> evaluate on a BERT4Rec/SASRec run's test users, beside full ranking",
    )
    p.add_argument("run_dir", help="the reranking model's run directory (`seqbert train ... --out`)")
    p.add_argument("--retriever", choices=("recent", "model"), default="recent",
                   help="recent: item-to-item from the last items' embeddings (no transformer); "
                        "model: a model's own scores as inner-product search")  # fmt: skip
    p.add_argument("--retriever-run", default=None, help="run directory of the retrieving model (model only)")
    p.add_argument("--depth", type=int, default=200, help="candidates retrieved per user")
    p.add_argument("--factory", default="HNSW32", help="faiss index factory string (model retriever)")
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--max-users", type=int, default=None, help="a seeded subset of the test users")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.set_defaults(func=run_pipeline_cli)


def run_pipeline_cli(args) -> int:
    import json
    from pathlib import Path

    from seqbert.recommender import load_recommender, run_dataset
    from seqbert.retrieval.index import IndexConfig
    from seqbert.retrieval.items import (
        full_ranking,
        model_reranker,
        model_retriever,
        recent_items_retriever,
        test_queries,
    )

    if args.depth < 1:
        raise ValueError(f"--depth must be >= 1, got {args.depth}")
    model, vocab, _ = load_recommender(args.run_dir)
    ds = run_dataset(args.run_dir)
    if ds is None:
        raise FileNotFoundError(
            f"{args.run_dir}: no prepared data next to the model (a `seqbert train` run?)"
        )
    queries, rel_ids = test_queries(ds, args.max_users)
    if args.retriever == "recent":
        retrieve = recent_items_retriever(model, args.depth)
    else:
        source = model
        if args.retriever_run:
            source, other, _ = load_recommender(args.retriever_run)
            if other != vocab:
                raise ValueError(f"{args.retriever_run}: its item vocabulary differs from {args.run_dir}'s")
        retrieve = model_retriever(
            source, args.depth, IndexConfig(factory=args.factory, ef_search=args.ef_search)
        )
    cfg = PipelineConfig(batch_size=args.batch_size, latency_queries=args.latency_queries)
    report = run_two_stage(
        queries, rel_ids, retrieve, model_reranker(model), full_ranking(model, 100),
        config=cfg,
    )  # fmt: skip
    print(format_report(report, f"{args.retriever} retriever, depth {args.depth}, {len(queries)} users"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
