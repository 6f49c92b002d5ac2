"""Cross-encoder jobs of `seqbert train` on a BEIR dataset (SciFact by default):

`rerank`: fine-tune a cross-encoder on the train queries with BM25 hard negatives.

    seqbert train recipes/scifact_finetune.yaml --out runs/scifact_finetune --data-dir DATA

  BEIR train split -> BM25 top-`negatives_depth` per train query minus its judged documents = the
  hard-negative pool -> rows (query, one positive, pool) -> groups of 1 positive + G-1 negatives drawn
  afresh each epoch -> listwise softmax (or pointwise BCE) through the seqbert training loop ->
  `OUT/hf/` (config.json, model.safetensors, tokenizer.json), loadable by `load_cross_encoder` and by
  `transformers.BertForSequenceClassification`. `freeze_layers` keeps the embeddings and the bottom N blocks
  fixed (less backward cost on a CPU; guards the MS MARCO skill against a small train set's over-fitting).

`text_pipeline`: retrieve -> fuse -> rerank, each stage evaluated by `seqbert.pipeline.run_two_stage`.

    seqbert train recipes/scifact_pipeline.yaml --out runs/scifact --data-dir DATA

  bm25       `seqbert.retrieval.bm25.Bm25Index` over "title text"
  dense      mean-pooled, L2-normalised embeddings (`seqbert.retrieval.embed.encode`, all-MiniLM-L6-v2 by
             default) in an exact Faiss inner-product index
  hybrid     `seqbert.retrieval.fusion.rrf` of bm25 and dense (Cormack et al. 2009)
  NAME@SRCd  a cross-encoder (NAME: rerank_msmarco = `reranker_dir`, rerank_seqbert = `finetuned_dir`)
             rescoring the top d = `rerank_depth` of first stage SRC; the rest of the list follows unchanged,
             so recall@100 equals the first stage's when d < 100
  ...+rrf    (fuse_rerank) that reranking fused by RRF with its own first stage: no weight is tuned
  Every stage reports ndcg@10, recall@100 (and hr, mrr), queries/s, and p50/p95 latency for its own work and
  for the pipeline up to it (`latency_queries` queries sent one at a time). BEIR's rule applies: a retrieved
  document whose id equals the query's id is dropped. Corpus embeddings are cached in `cache_dir`.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqbert.jobs.text_io import data_path, write_metrics
from seqbert.model.hf import save_hf_model
from seqbert.pipeline import PipelineConfig, order_by_scores, run_two_stage
from seqbert.retrieval.beir import BeirData, drop_self_hits, judgements, load_beir
from seqbert.retrieval.bm25 import Bm25Index
from seqbert.retrieval.embed import encode, load_encoder
from seqbert.retrieval.fusion import rrf, rrf_scores
from seqbert.retrieval.index import IndexConfig, build_index, search
from seqbert.tasks.rerank import CrossEncoder, group_collate, load_cross_encoder, rerank
from seqbert.tasks.text import minilm_dir
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


def _load(cfg: BeirDataConfig, data_dir: str | None) -> tuple[BeirData, list[str]]:
    data = load_beir(data_path(data_dir, cfg.dataset), cfg.split)
    return data, list(data.queries)[: cfg.max_queries]


# -------------------------------------------------------------------------------------------- rerank


@dataclass(frozen=True, kw_only=True)
class RerankJob:
    train: TrainConfig
    init_dir: str  # a HF reranker (e.g. ms-marco-MiniLM-L-12-v2) or encoder directory (head starts fresh)
    data: BeirDataConfig = field(default_factory=lambda: BeirDataConfig(split="train"))
    negatives_depth: int = 30  # BM25 ranks searched for hard negatives
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


def hard_negative_rows(data: BeirData, qids: list[str], depth: int, stem: bool) -> dict[str, torch.Tensor]:
    """One row per judged (query, positive) pair: query (N,), positive (N,) corpus row, and the query's BM25
    top-`depth` minus its judged documents (N, depth), -1 padded."""
    found = Bm25Index(data.doc_texts, stem).search([data.queries[q] for q in qids], depth)  # (Q, depth)
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    query, positive, negatives = [], [], []
    for qi, q in enumerate(qids):
        relevant = {row_of[d] for d, g in data.qrels[q].items() if g > 0}
        pool = [int(d) for d in found[qi] if int(d) not in relevant]
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
    rows = hard_negative_rows(data, qids, cfg.negatives_depth, cfg.bm25_stem)
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
    return write_metrics(out, {
        "init_dir": cfg.init_dir,
        "fresh_parameters": fresh,
        "train_rows": len(rows["query"]),
        "train_queries": len(query_texts),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "hf_dir": str(hf_dir),
    })  # fmt: skip


# ------------------------------------------------------------------------------------- text_pipeline


@dataclass(frozen=True, kw_only=True)
class TextPipelineJob:
    data: BeirDataConfig = field(default_factory=BeirDataConfig)
    encoder_dir: str | None = None  # None: the bundled all-MiniLM-L6-v2
    reranker_dir: str | None = None  # an imported HF cross-encoder; None: skip
    finetuned_dir: str | None = None  # a `rerank` job's OUT/hf; None: skip
    depth: int = 100  # first-stage list length (recall@100 needs 100)
    rrf_k: int = 60
    rerank_sources: tuple[str, ...] = ("hybrid",)  # first stages to rerank, of FIRST_STAGES
    rerank_depth: int = 100
    fuse_rerank: bool = True  # also report each reranking fused with its first stage by RRF ("+rrf")
    rerank_max_len: int = 256  # SciFact abstracts average ~300 word pieces: 256 keeps most of each
    rerank_batch_size: int = 16
    embed_max_len: int = 256  # all-MiniLM-L6-v2's max_seq_length
    embed_batch_size: int = 32
    bm25_stem: bool = True
    cache_dir: str | None = None  # corpus embeddings are cached here, keyed by the encoder's weights
    batch_size: int = 32  # queries per call in the throughput pass
    latency_queries: int = 50  # queries timed one at a time (0: no latency)
    threads: int | None = None

    def __post_init__(self) -> None:
        bad = [x for x in self.rerank_sources if x not in FIRST_STAGES]
        if bad or not self.rerank_sources:
            raise ValueError(f"rerank_sources must name some of {FIRST_STAGES}, got {self.rerank_sources!r}")
        _positive(self, "depth", "rrf_k", "rerank_depth", "rerank_max_len", "rerank_batch_size",
                  "embed_max_len", "embed_batch_size", "batch_size")  # fmt: skip
        if self.rerank_depth > self.depth:
            raise ValueError(f"rerank_depth ({self.rerank_depth}) exceeds depth ({self.depth})")
        if self.latency_queries < 0:
            raise ValueError(f"latency_queries must be >= 0, got {self.latency_queries}")


def fingerprint(directory: str | Path) -> str:
    """A short tag of a model directory's weights (path, size, mtime) to key cached outputs."""
    for w in (Path(directory) / "model.safetensors", Path(directory) / "pytorch_model.bin"):
        if w.exists():
            stat = w.stat()
            return hashlib.sha1(f"{w.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    raise FileNotFoundError(f"{directory}: expected model.safetensors or pytorch_model.bin")


def corpus_embeddings(
    cfg: TextPipelineJob, encoder_dir: str, model, tokenizer, texts: list[str]
) -> np.ndarray:
    """(N, H) document embeddings, read from / written to `cache_dir` when one is set."""
    path = None
    if cfg.cache_dir is not None:
        path = Path(cfg.cache_dir) / f"corpus_{fingerprint(encoder_dir)}_{len(texts)}_{cfg.embed_max_len}.npy"
        if path.exists():
            return np.load(path)
    xb = encode(model, tokenizer, texts, "mean", True, cfg.embed_batch_size, cfg.embed_max_len).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, xb)
    return xb


def first_stages(cfg: TextPipelineJob, data: BeirData) -> dict:
    """name -> retrieve(query ids (B,)) -> corpus rows (B, depth), best first, -1 padded."""
    text = data.queries
    bm25 = Bm25Index(data.doc_texts, cfg.bm25_stem)
    encoder_dir = cfg.encoder_dir or str(minilm_dir())
    model, tokenizer = load_encoder(encoder_dir)
    xb = corpus_embeddings(cfg, encoder_dir, model, tokenizer, data.doc_texts)
    index = build_index(
        xb, IndexConfig("Flat", "ip")
    )  # exact: a BEIR corpus of 5k x 384 needs no approximation

    def bm25_raw(qids) -> np.ndarray:
        return bm25.search([text[q] for q in qids], cfg.depth)  # (B, depth)

    def dense_raw(qids) -> np.ndarray:
        xq = encode(
            model, tokenizer, [text[q] for q in qids], "mean", True, cfg.embed_batch_size, cfg.embed_max_len
        )
        return search(index, xq, cfg.depth)[1]  # (B, depth)

    def hybrid_raw(qids) -> np.ndarray:
        return rrf([bm25_raw(qids), dense_raw(qids)], cfg.rrf_k, cfg.depth)

    raw = {"bm25": bm25_raw, "dense": dense_raw, "hybrid": hybrid_raw}
    return {name: (lambda qids, f=f: drop_self_hits(f(qids), list(qids), data)) for name, f in raw.items()}


def cross_encoder_reranker(cfg: TextPipelineJob, model, tokenizer, data: BeirData, fuse: bool):
    """rerank(query ids (B,), candidates (B, K)) -> scores (B, K): cross-encoder logits for the top
    `rerank_depth`, -inf below (they keep the first stage's order); with `fuse`, the RRF scores of the first
    stage and that reranking instead."""

    def score(qids, candidates: np.ndarray) -> np.ndarray:
        scores = np.full(candidates.shape, -np.inf)
        for r, q in enumerate(qids):
            top = candidates[r, : cfg.rerank_depth]
            top = top[top >= 0]
            passages = [data.doc_texts[i] for i in top]
            scores[r, : len(top)] = rerank(model, tokenizer, data.queries[q], passages,
                                           cfg.rerank_batch_size, cfg.rerank_max_len)  # fmt: skip
        if fuse:
            return rrf_scores(candidates, order_by_scores(candidates, scores), cfg.rrf_k)
        return scores

    return score


def _stage(report: dict, name: str) -> dict:
    s = dict(report["stages"][name])
    if "latency" in s:
        s.setdefault("pipeline_latency", s["latency"])
    return s


def run_pipeline(cfg: TextPipelineJob, out: Path, data_dir: str | None = None) -> dict:
    with torch_threads(cfg.threads):
        return _run_pipeline(cfg, out, data_dir)


def _run_pipeline(cfg: TextPipelineJob, out: Path, data_dir: str | None) -> dict:
    t0 = time.perf_counter()
    data, qids = _load(cfg.data, data_dir)
    rel_ids, rel_grades = judgements(data, qids)
    pipe = PipelineConfig(ks=(10, 100), batch_size=cfg.batch_size, latency_queries=cfg.latency_queries,
                          progress=False)  # fmt: skip

    def evaluate(retrieve, rerank_fn=None) -> dict:
        return run_two_stage(qids, rel_ids, retrieve, rerank_fn, rel_grades=rel_grades, config=pipe)

    retrievers = first_stages(cfg, data)
    stages = {name: _stage(evaluate(retrieve), "retrieve") for name, retrieve in retrievers.items()}
    rerankers = (("rerank_msmarco", cfg.reranker_dir), ("rerank_seqbert", cfg.finetuned_dir))
    for name, model_dir in [(n, d) for n, d in rerankers if d is not None]:
        model, tokenizer, fresh = load_cross_encoder(model_dir)
        if fresh:
            raise ValueError(f"{model_dir}: not a trained reranker, fresh parameters {fresh}")
        for fuse in (False, True) if cfg.fuse_rerank else (False,):
            reranker = cross_encoder_reranker(cfg, model, tokenizer, data, fuse)
            for source in cfg.rerank_sources:
                stage = f"{name}@{source}{cfg.rerank_depth}" + ("+rrf" if fuse else "")
                stages[stage] = _stage(evaluate(retrievers[source], reranker), "rerank")
                print(f"{stage:32s} ndcg@10 {stages[stage]['ndcg@10']:.4f}")

    report = {"dataset": cfg.data.dataset, "split": cfg.data.split, "queries": len(qids), "stages": stages}
    report["best_pipeline"] = max(stages, key=lambda n: stages[n]["ndcg@10"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    for name, m in stages.items():
        lat = m.get("latency", {})
        print(f"{name:32s} ndcg@10 {m['ndcg@10']:.4f}  recall@100 {m['recall@100']:.4f}  "
              f"own p50/p95 {lat.get('p50_ms', float('nan')):.1f}/{lat.get('p95_ms', float('nan')):.1f} ms")  # fmt: skip
    return write_metrics(out, report)
