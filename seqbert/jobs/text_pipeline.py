"""`text_pipeline`: BEIR retrieve -> fuse -> rerank, every stage evaluated on one split and compared, per
query, with the best untuned first stage.

    seqbert train recipes/scifact_pipeline.yaml --out runs/scifact --data-dir DATA

Stages (their names in metrics.json):
  bm25           `seqbert.retrieval.bm25.Bm25Index` over "title text"
  ENCODER        one per `encoders` entry (`DenseEncoderConfig`: `dense` = all-MiniLM-L6-v2, mean pooling;
                 `bge` = bge-small-en-v1.5, [CLS] pooling + its query instruction) in an exact Faiss
                 inner-product index; corpus encodings are cached in `cache_dir`, keyed by weights + settings
  NAME_prf       (`prf`) pseudo-relevance feedback from the top k of NAME or of `fused` (`prf.feedback`;
                 `seqbert.retrieval.prf`): an encoder's query vector by Rocchio, q' = normalise(q + beta *
                 mean of the top k vectors); bm25's query by RM3 terms; searched again; (k, beta) tuned on
                 `prf.split` (train); with own feedback a `fusion` / `rrf_sources` source like any other
  hybrid         RRF (Cormack et al. 2009) of `rrf_sources`: nothing tuned
  fused          (`fusion`) a convex combination of per-query normalised scores of `fusion.sources` over the
                 union of their top-`depth` lists, every candidate scored exactly by every source; the
                 weights and the normalisation are tuned on `fusion.split` (train), never on the reported
                 split (`seqbert.retrieval.fusion.tune_weights`)
  fused_prf      (`prf.fuse`) `fused` with every source that has a NAME_prf stage replaced by it, its own
                 weights tuned the same way; `prf_comparisons` tests each X_prf against X per query
  NAME@SRCd      a cross-encoder (NAME: rerank_msmarco = `reranker_dir`, rerank_seqbert = `finetuned_dir`)
                 rescoring the top d = `rerank_depth` of first stage SRC; the rest keeps SRC's order, so
                 recall@100 is SRC's
  ...+rrf        (`fuse_rerank`) that reranking fused with SRC by RRF: nothing tuned
  ...+tuned      (`rerank_fusion`) w * n(cross-encoder) + (1 - w) * n(SRC score) over the top d, n a per-query
                 normalisation; w and n tuned on `rerank_fusion.max_queries` queries of its split (train)
Every stage reports ndcg@10, recall@100 (and hr, mrr) through `seqbert.pipeline.run_two_stage`; first stages
also p50/p95 latency (`latency_queries` sent one at a time). Cross-encoder scores are cached on disk (a
rerun or the tuning pass rescoring a pair costs nothing), so their stages report the measured cost per
scored pair instead of a latency. BEIR's rule applies: a retrieved document whose id equals the query's id
is dropped.

Statistics (`comparisons` in metrics.json): the per-query NDCG@10 of every stage against the `baseline`, the
best untuned first stage (bm25, an encoder, or hybrid) on the reported split itself, which favours the
baseline: paired t-test, a bootstrap interval of the mean difference, Holm's correction across the stages
(`seqbert.evaluation.stats.compare_runs`). `comparisons_vs_best_first_stage`: every reranking stage against
the best first stage of all (`best_first_stage`, the train-tuned `fused` included), Holm across the
reranking stages; `best_two_stage_vs_best_first_stage` is the headline test. `prf_comparisons`: every
pseudo-relevance-feedback stage X_prf against X, Holm across them. `per_query.json` keeps the vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqbert.evaluation.metrics import evaluate_ranked
from seqbert.evaluation.stats import compare_runs, holm
from seqbert.jobs.text_io import read_trained_queries, write_candidates, write_metrics
from seqbert.jobs.text_rerank import BeirDataConfig, HoldoutConfig, _load, _positive, torch_threads
from seqbert.pipeline import PipelineConfig, order_by_scores, run_two_stage
from seqbert.retrieval.beir import BeirData, holdout_split, judgements
from seqbert.retrieval.bm25 import Bm25Index
from seqbert.retrieval.embed import DenseEncoderConfig, encode_with, load_encoder
from seqbert.retrieval.fusion import (
    NORMS,
    rrf_scores,
    rrf_with_scores,
    simplex_grid,
    tune_weights,
    weighted_scores,
)
from seqbert.retrieval.index import IndexConfig, build_index, search
from seqbert.retrieval.prf import rm3_weights, rocchio, tune_feedback
from seqbert.tasks.rerank import load_cross_encoder, rerank
from seqbert.tasks.text import minilm_dir

RESERVED = ("bm25", "hybrid", "fused", "fused_prf")  # stage names an encoder may not take


def _check_methods(where: str, methods: tuple[str, ...]) -> None:
    bad = [m for m in methods if m not in NORMS]
    if bad or not methods:
        raise ValueError(f"{where}.methods must name some of {NORMS}, got {methods!r}")


def _check_step(where: str, step: float) -> None:
    simplex_grid(1, step)  # raises on a step that does not divide 1
    if step < 0.01:
        raise ValueError(f"{where}.step must be >= 0.01 (the grid grows as 1/step^(sources-1)), got {step}")


@dataclass(frozen=True)
class ScoreFusionConfig:
    """The `fused` first stage: weighted score fusion of `sources`, tuned on `split`."""

    sources: tuple[str, ...] = ("bm25", "dense")  # bm25 and/or encoder names
    split: str = "train"  # the judged queries that pick the weights (never the reported split)
    max_queries: int | None = None  # the first N judged queries of `split`; None: all
    methods: tuple[str, ...] = NORMS  # normalisations tried
    step: float = 0.05  # weight grid resolution on the simplex

    def __post_init__(self) -> None:
        if len(self.sources) < 2 or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"fusion.sources must name >= 2 distinct first stages, got {self.sources!r}")
        if self.max_queries is not None and self.max_queries < 2:
            raise ValueError(f"fusion.max_queries must be >= 2, got {self.max_queries}")
        _check_methods("fusion", self.methods)
        _check_step("fusion", self.step)


PRF_FEEDBACK = ("own", "fused")


@dataclass(frozen=True)
class PrfConfig:
    """`NAME_prf` first stages: pseudo-relevance feedback from the top k (self-hits dropped) of NAME itself
    (`feedback: own`) or of the `fused` stage (`feedback: fused`: a better first pass, so fewer
    non-relevant documents fed back), then a second search of NAME's index (`seqbert.retrieval.prf`):

        encoder NAME  q' = normalise(q + beta * mean_{j <= k} d_j)       (Rocchio on the query vector)
        bm25          w(t) = c(t, q) / |q| + beta * p(t | R)              (RM3, `terms` expansion terms)

    (k, beta) per source: the argmax of NDCG@10 of NAME_prf alone over `betas` x `ks` on the judged
    queries of `split` (train), never the reported split. beta = 0 (plain NAME) leads the default grid, so
    PRF that does not help on train is switched off. A NAME_prf stage may be a `fusion` / `rrf` source;
    `fuse` adds the stage `fused_prf`: `fusion` over the PRF'd sources, weights tuned on `fusion.split`."""

    sources: tuple[str, ...] = ("bge",)  # encoder names and/or bm25
    split: str = "train"
    max_queries: int | None = None  # the first N judged queries of `split`; None: all
    ks: tuple[int, ...] = (1, 2, 3, 5, 10)  # feedback depths tried
    betas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # feedback weights tried, 0 first
    terms: int = 10  # RM3 expansion terms (bm25 only; Anserini's default fbTerms)
    feedback: str = "own"  # whose top k: "own" (NAME's) or "fused" (the `fused` stage's, weighted uniformly)
    fuse: bool = True  # the `fused_prf` stage (needs `fusion`)

    def __post_init__(self) -> None:
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(
                f"prf.sources must name >= 1 distinct first stages (bm25, encoders), got {self.sources!r}"
            )
        if self.max_queries is not None and self.max_queries < 2:
            raise ValueError(f"prf.max_queries must be >= 2, got {self.max_queries}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"prf.ks must be positive feedback depths, got {self.ks!r}")
        if not self.betas or not all(np.isfinite(b) and b >= 0 for b in self.betas):
            raise ValueError(f"prf.betas must be finite weights >= 0, got {self.betas!r}")
        if self.terms < 1:
            raise ValueError(f"prf.terms must be >= 1, got {self.terms}")
        if self.feedback not in PRF_FEEDBACK:
            raise ValueError(f"prf.feedback must be one of {PRF_FEEDBACK}, got {self.feedback!r}")

    def stage_names(self) -> tuple[str, ...]:
        return tuple(f"{s}_prf" for s in self.sources)

    def fused_sources(self, fusion: ScoreFusionConfig) -> tuple[str, ...]:
        """`fused_prf`'s sources: `fusion.sources` with each NAME in `sources` replaced by NAME_prf."""
        return tuple(f"{s}_prf" if s in self.sources else s for s in fusion.sources)


@dataclass(frozen=True)
class RerankFusionConfig:
    """The `+tuned` stages: the cross-encoder's score fused with its first stage's, weight tuned on `split`
    (with `holdout`: on the queries a `rerank` job with the same holdout left out of its fine-tuning)."""

    split: str = "train"
    holdout: HoldoutConfig | None = None  # tune on these held-out queries of `split`; None: on all of it
    max_queries: int | None = 100  # the first N tuning queries (cost: N x rerank_depth pairs); None: all
    methods: tuple[str, ...] = NORMS
    step: float = 0.05

    def __post_init__(self) -> None:
        if self.max_queries is not None and self.max_queries < 2:
            raise ValueError(f"rerank_fusion.max_queries must be >= 2, got {self.max_queries}")
        if (
            self.holdout is not None
            and self.max_queries is not None
            and self.max_queries > self.holdout.queries
        ):
            raise ValueError(
                f"rerank_fusion.max_queries ({self.max_queries}) exceeds holdout.queries "
                f"({self.holdout.queries}); set it to null to tune on the whole holdout"
            )
        _check_methods("rerank_fusion", self.methods)
        _check_step("rerank_fusion", self.step)


@dataclass(frozen=True)
class CandidateExportConfig:
    """Write first stage `source`'s top-`depth` lists over every judged query of `split` to
    OUT/candidates_{source}_{split}.json (`seqbert.jobs.text_io`): a `rerank` job's `negatives_from`."""

    source: str = "fused"
    split: str = "train"


@dataclass(frozen=True, kw_only=True)
class TextPipelineJob:
    data: BeirDataConfig = field(default_factory=BeirDataConfig)
    encoders: tuple[DenseEncoderConfig, ...] = (DenseEncoderConfig(),)  # all-MiniLM-L6-v2 as `dense`
    reranker_dir: str | None = None  # an imported HF cross-encoder; None: skip
    finetuned_dir: str | None = None  # a `rerank` job's OUT/hf; None: skip
    depth: int = 100  # first-stage list length (recall@100 needs 100)
    rrf_k: int = 60
    rrf_sources: tuple[str, ...] = ("bm25", "dense")  # the `hybrid` stage
    prf: PrfConfig | None = None  # the `NAME_prf` stages; None: skip
    fusion: ScoreFusionConfig | None = None  # the `fused` stage; None: skip
    rerank_sources: tuple[str, ...] = ("hybrid",)  # first stages to rerank
    rerank_depth: int = 100
    fuse_rerank: bool = True  # also report each reranking fused with its first stage by RRF ("+rrf")
    rerank_fusion: RerankFusionConfig | None = None  # "+tuned" stages; None: skip
    export_candidates: CandidateExportConfig | None = None  # hard-negative lists for a `rerank` job
    rerank_max_len: int = 256  # SciFact abstracts average ~300 word pieces: 256 keeps most of each
    rerank_batch_size: int = 16
    bm25_stem: bool = True
    cache_dir: str | None = None  # corpus embeddings and cross-encoder scores are cached here
    batch_size: int = 32  # queries per call in the throughput pass
    latency_queries: int = 50  # first-stage queries timed one at a time (0: no latency)
    n_resamples: int = 1000  # bootstrap resamples of the per-query differences
    threads: int | None = None

    def __post_init__(self) -> None:
        names = [e.name for e in self.encoders]
        if len(set(names)) != len(names) or set(names) & set(RESERVED):
            raise ValueError(f"encoder names must be distinct and none of {RESERVED}, got {names}")
        prf = self.prf.stage_names() if self.prf else ()
        if self.prf is not None:
            bad = [s for s in self.prf.sources if s not in ("bm25", *names)]
            if bad or set(prf) & set(names):
                raise ValueError(f"prf.sources must be bm25 or encoders {names} whose NAME_prf is no encoder's "
                                 f"name, got {self.prf.sources!r}")  # fmt: skip
            if max(self.prf.ks) >= self.depth:
                raise ValueError(f"prf.ks must stay below depth ({self.depth}), got {self.prf.ks!r}")
            if self.prf.feedback == "fused" and (self.fusion is None or set(self.fusion.sources) & set(prf)):
                raise ValueError("prf.feedback: fused needs a `fusion` stage that reads no NAME_prf stage "
                                 "(they would feed back into each other)")  # fmt: skip
            if self.prf.fuse and (
                self.fusion is None or self.prf.fused_sources(self.fusion) == self.fusion.sources
            ):
                raise ValueError("prf.fuse needs a `fusion` stage with a source named in prf.sources "
                                 "(or set prf.fuse: false)")  # fmt: skip
        scored = ("bm25", *names, *prf)
        for where, wanted in (("rrf_sources", self.rrf_sources),
                              ("fusion.sources", self.fusion.sources if self.fusion else ())):  # fmt: skip
            bad = [x for x in wanted if x not in scored]
            if bad:
                raise ValueError(f"{where}: {bad} are not first stages; expected some of {scored}")
        if not self.rrf_sources:
            raise ValueError("rrf_sources must name at least one first stage")
        stages = self.first_stage_names()
        bad = [x for x in self.rerank_sources if x not in stages]
        if bad or not self.rerank_sources:
            raise ValueError(f"rerank_sources must name some of {stages}, got {self.rerank_sources!r}")
        for split in {s.split for s in (self.prf, self.fusion, self.rerank_fusion) if s is not None}:
            if split == self.data.split:
                raise ValueError(f"weights tuned on split {split!r} would be reported on that same split")
        _positive(self, "depth", "rrf_k", "rerank_depth", "rerank_max_len", "rerank_batch_size",
                  "batch_size", "n_resamples")  # fmt: skip
        if self.rerank_depth > self.depth:
            raise ValueError(f"rerank_depth ({self.rerank_depth}) exceeds depth ({self.depth})")
        if self.export_candidates is not None and self.export_candidates.source not in stages:
            raise ValueError(f"export_candidates.source must be one of {stages}, "
                             f"got {self.export_candidates.source!r}")  # fmt: skip
        if self.latency_queries < 0:
            raise ValueError(f"latency_queries must be >= 0, got {self.latency_queries}")

    def first_stage_names(self) -> tuple[str, ...]:
        fused = ("fused",) if self.fusion is not None else ()
        fused += ("fused_prf",) if self.prf is not None and self.prf.fuse else ()
        prf = self.prf.stage_names() if self.prf is not None else ()
        return ("bm25", *(e.name for e in self.encoders), *prf, "hybrid", *fused)


# ------------------------------------------------------------------------------------------ caches


def fingerprint(directory: str | Path) -> str:
    """A short tag of a model directory's weights (sha1 of the weight file's bytes, ~0.3 s for 130 MB) to
    key cached outputs. The bytes, not the path or mtime: a cache stays valid when the weights directory is
    moved, copied or reached through a symlink (a path-keyed cache was silently lost that way once, and a
    bge corpus re-encoding costs ~20 CPU-minutes)."""
    for w in (Path(directory) / "model.safetensors", Path(directory) / "pytorch_model.bin"):
        if w.exists():
            digest = hashlib.sha1()
            with w.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
            return digest.hexdigest()[:16]
    raise FileNotFoundError(f"{directory}: expected model.safetensors or pytorch_model.bin")


def _tag(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def corpus_embeddings(
    enc: DenseEncoderConfig, model_dir: str, model, tokenizer, texts: list[str], cache_dir: str | None
) -> np.ndarray:
    """(N, H) document embeddings, read from / written to `cache_dir` (keyed by the weights, the
    encoder's pooling / normalisation / length / prefix and the corpus) when one is set."""
    path = None
    if cache_dir is not None:
        key = _tag(fingerprint(model_dir), enc.cache_tag(), len(texts), texts[0], texts[-1])
        path = Path(cache_dir) / f"corpus_{enc.name}_{key}.npy"
        if path.exists():
            return np.load(path)
    xb = encode_with(enc, model, tokenizer, texts, queries=False).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, xb)
        os.replace(tmp, path)  # atomic: a killed run never leaves half a cache
    return xb


class CrossEncoderScores:
    """Cross-encoder logits of (query, corpus row) pairs, memoised in a JSON file under `cache_dir`.

    The key is the query text's hash and the row, so train-split tuning and test-split scoring share it;
    `pairs` and `seconds` count only pairs actually run through the model (its cost per pair).
    """

    def __init__(self, model_dir: str, cfg: TextPipelineJob, doc_texts: list[str]) -> None:
        self.model, self.tokenizer, fresh = load_cross_encoder(model_dir)
        if fresh:
            raise ValueError(f"{model_dir}: not a trained reranker, fresh parameters {fresh}")
        self.max_len, self.batch_size, self.doc_texts = cfg.rerank_max_len, cfg.rerank_batch_size, doc_texts
        self.path = None
        self.cache: dict[str, float] = {}
        if cfg.cache_dir is not None:
            key = _tag(fingerprint(model_dir), self.max_len, len(doc_texts), doc_texts[0], doc_texts[-1])
            self.path = Path(cfg.cache_dir) / f"cross_encoder_{key}.json"
            if self.path.exists():
                self.cache = json.loads(self.path.read_text())
        self.pairs, self.seconds, self._unsaved = 0, 0.0, 0

    def __call__(self, query: str, rows: np.ndarray) -> np.ndarray:
        """Scores (K,) of corpus rows (K,) (no padding) for one query."""
        qkey = hashlib.sha1(query.encode()).hexdigest()[:16]
        keys = [f"{qkey}:{int(r)}" for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            t0 = time.perf_counter()
            got = rerank(self.model, self.tokenizer, query, [self.doc_texts[rows[i]] for i in todo],
                         self.batch_size, self.max_len)  # fmt: skip
            self.seconds += time.perf_counter() - t0
            self.pairs += len(todo)
            for i, s in zip(todo, got):
                self.cache[keys[i]] = float(s)
            self._unsaved += len(todo)
            if self._unsaved >= 200:
                self.save()
        return np.array([self.cache[k] for k in keys])

    def save(self) -> None:
        if self.path is not None and self._unsaved:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            os.replace(tmp, self.path)
        self._unsaved = 0

    def ms_per_pair(self) -> float | None:
        return 1000 * self.seconds / self.pairs if self.pairs else None


# ------------------------------------------------------------------------------------ first stages

Scored = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]  # query ids (B,) -> rows, scores (B, depth)


def _best_first(rows: np.ndarray, scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score, padding (-1) last, keep `depth` columns."""
    s = np.where(rows < 0, -np.inf, scores)
    order = np.lexsort((-s, rows < 0), axis=1)[:, :depth]  # (B, depth), stable
    return np.take_along_axis(rows, order, 1), np.take_along_axis(s, order, 1)


def _union(lists: list[np.ndarray]) -> np.ndarray:
    """Per query the distinct ids of several (B, K_r) lists in first-seen order -> (B, C), -1 padded."""
    rows = [list(dict.fromkeys(int(d) for r in lists for d in r[q] if d >= 0)) for q in range(len(lists[0]))]
    out = np.full((len(rows), max(map(len, rows), default=0) or 1), -1, dtype=np.int64)
    for q, r in enumerate(rows):
        out[q, : len(r)] = r
    return out


class FirstStages:
    """Every first stage over one corpus for queries of any split: `scored[name](qids)` -> (rows, scores)
    (B, depth) best first, -1 / -inf padded, self-hits removed. `memo[name][qid]` keeps each query's
    {row: score} of the last call, the first-stage score that `+tuned` fuses with. `prf[name]` = (k, beta)
    of stage `name`_prf, set by `tune_prf`; `fusions[stage]` = the sources of a score-fusion stage and
    `fusion_weights[stage]` = (weights, normalisation), set by `tune_fusion`."""

    def __init__(self, cfg: TextPipelineJob, corpus: BeirData, texts: dict[str, str]) -> None:
        self.cfg, self.texts = cfg, texts
        self.self_row = {q: i for i, q in enumerate(corpus.doc_ids)}  # BEIR's self-hit rule, any split
        self.bm25 = Bm25Index(corpus.doc_texts, cfg.bm25_stem)
        self.encoders = {}
        for enc in cfg.encoders:
            model_dir = enc.model_dir or str(minilm_dir())
            model, tokenizer = load_encoder(model_dir)
            xb = corpus_embeddings(enc, model_dir, model, tokenizer, corpus.doc_texts, cfg.cache_dir)
            self.encoders[enc.name] = (enc, model, tokenizer, xb, build_index(xb, IndexConfig("Flat", "ip")))
        self.fusions: dict[str, tuple[str, ...]] = {}
        if cfg.fusion is not None:
            self.fusions["fused"] = cfg.fusion.sources
            if cfg.prf is not None and cfg.prf.fuse:
                self.fusions["fused_prf"] = cfg.prf.fused_sources(cfg.fusion)
        self.fusion_weights: dict[str, tuple[tuple[float, ...], str]] = {}
        self.prf: dict[str, tuple[int, float]] = {}
        self._feedback_lists: tuple = (None, None)  # (key, fused rows) of `_fused_feedback`
        self.memo: dict[str, dict[str, dict[int, float]]] = {}
        self.scored: dict[str, Scored] = {"bm25": self._memo("bm25", self._bm25)}
        for name in (*self.encoders, *(cfg.prf.stage_names() if cfg.prf else ())):
            fn = self._bm25_prf if name == "bm25_prf" else lambda qids, n=name: self._dense(n, qids)
            self.scored[name] = self._memo(name, fn)
        self.scored["hybrid"] = self._memo("hybrid", self._hybrid)
        for name in self.fusions:
            self.scored[name] = self._memo(name, lambda qids, n=name: self._fused(n, qids))

    def _memo(self, name: str, fn: Scored) -> Scored:
        store = self.memo.setdefault(name, {})

        def call(qids):
            rows, scores = self.drop_self(qids, *fn(list(qids)))
            for q, r, s in zip(qids, rows, scores):
                store[q] = {int(d): float(x) for d, x in zip(r, s) if d >= 0}
            return rows, scores

        return call

    def drop_self(self, qids, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mine = np.array([self.self_row.get(q, -2) for q in qids])[:, None]  # (B, 1)
        hit = rows == mine
        if not hit.any():
            return rows, scores
        return _best_first(np.where(hit, -1, rows), np.where(hit, -np.inf, scores), rows.shape[1])

    def _queries(self, qids) -> list[str]:
        return [self.texts[q] for q in qids]

    def _bm25(self, qids):
        rows = self.bm25.search(self._queries(qids), self.cfg.depth)  # (B, depth)
        return rows, self.bm25.scores(self._queries(qids), rows)

    def _fused_feedback(self, qids, k: int) -> np.ndarray | None:
        """The `fused` stage's top k rows (B, k) when `prf.feedback` is "fused", else None. Kept for the
        last query batch and weights: every PRF'd source of one batch reads the same lists."""
        if self.cfg.prf is None or self.cfg.prf.feedback != "fused":
            return None
        key = (tuple(qids), self.fusion_weights.get("fused"))
        if self._feedback_lists[0] != key:
            self._feedback_lists = (key, self.scored["fused"](qids)[0])  # self-hits already dropped
        return self._feedback_lists[1][:, :k]

    def bm25_feedback(self, qids, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The feedback rows (B, k) of bm25_prf and their weights for RM3: BM25's own top k and scores, or
        (`prf.feedback: fused`) the fused top k weighted uniformly; self-hits dropped (-1 padded)."""
        fused = self._fused_feedback(qids, k)
        if fused is not None:
            return fused, np.ones(fused.shape)
        queries = self._queries(qids)
        rows = self.bm25.search(queries, k + 1)  # one spare for a self-hit
        rows, scores = self.drop_self(qids, rows, self.bm25.scores(queries, rows))
        return rows[:, :k], scores[:, :k]

    def rm3(self, qids, rows: np.ndarray, scores: np.ndarray, beta: float) -> list[dict[str, float]]:
        """RM3-weighted queries {term: w} from feedback rows / scores (B, k) (-1 padding left out)."""
        assert self.cfg.prf is not None
        terms = self.bm25.terms(self._queries(qids))
        return [rm3_weights(t, self.bm25.doc_terms(r[r >= 0].tolist()), s[r >= 0], self.cfg.prf.terms, beta)
                for t, r, s in zip(terms, rows, scores)]  # fmt: skip

    def bm25_weights(self, qids) -> list[dict[str, float]]:
        if "bm25" not in self.prf:
            raise RuntimeError("bm25_prf: its feedback depth and weight are not tuned yet (call tune_prf)")
        k, beta = self.prf["bm25"]
        return self.rm3(qids, *self.bm25_feedback(qids, k), beta)

    def _bm25_prf(self, qids):
        return self.bm25.weighted_search(self.bm25_weights(qids), self.cfg.depth)  # (B, depth) each

    def encode(self, name: str, qids) -> np.ndarray:
        enc, model, tokenizer, _, _ = self.encoders[name]
        return encode_with(enc, model, tokenizer, self._queries(qids), queries=True).numpy()  # (B, H)

    def feedback(self, name: str, qids, xq: np.ndarray, k: int) -> np.ndarray:
        """Encoder `name`'s top k rows (B, k) for query vectors xq (B, H), or (`prf.feedback: fused`) the
        fused top k; self-hits dropped (BEIR's rule holds for the feedback too: a query's own abstract is
        not a document it may retrieve)."""
        fused = self._fused_feedback(qids, k)
        if fused is not None:
            return fused
        scores, rows = search(self.encoders[name][4], xq, k + 1)  # one spare for a self-hit
        return self.drop_self(qids, rows, scores.astype(np.float64))[0][:, :k]

    def vectors(self, stage: str, qids) -> tuple[np.ndarray, str]:
        """(query vectors (B, H), encoder name) of a dense stage: an encoder, or `NAME_prf` (Rocchio)."""
        if stage in self.encoders:
            return self.encode(stage, qids), stage
        name = stage.removesuffix("_prf")
        if name not in self.prf:
            raise RuntimeError(f"{stage}: its feedback depth and weight are not tuned yet (call tune_prf)")
        k, beta = self.prf[name]
        xq = self.encode(name, qids)  # (B, H)
        return rocchio(xq, self.encoders[name][3], self.feedback(name, qids, xq, k), beta), name

    def _dense(self, stage: str, qids):
        xq, name = self.vectors(stage, qids)
        scores, rows = search(self.encoders[name][4], xq, self.cfg.depth)
        return rows, scores.astype(np.float64)  # (B, depth) each

    def _hybrid(self, qids):
        lists = [self.scored[s](qids)[0] for s in self.cfg.rrf_sources]
        return rrf_with_scores(lists, self.cfg.rrf_k, self.cfg.depth)

    def fusion_inputs(self, qids, stage: str = "fused") -> tuple[np.ndarray, list[np.ndarray]]:
        """The union (B, C) of fusion `stage`'s sources' top-`depth` lists and each source's exact score of
        every candidate, [(B, C)] in `fusions[stage]` order (-inf on padding)."""
        sources, queries = self.fusions[stage], self._queries(qids)
        sparse = ("bm25", "bm25_prf")
        xq = {s: self.vectors(s, qids) for s in sources if s not in sparse}  # ((B, H), encoder), encoded once
        # bm25_prf's whole-corpus scores (B, N), computed once for its top list and for the union's scores
        prf_full = self.bm25.weighted_matrix(self.bm25_weights(qids)) if "bm25_prf" in sources else None
        lists = [self.bm25.search(queries, self.cfg.depth) if s == "bm25" else
                 self.bm25.top_rows(prf_full, self.cfg.depth)[0] if s == "bm25_prf" else
                 search(self.encoders[xq[s][1]][4], xq[s][0], self.cfg.depth)[1] for s in sources]  # fmt: skip
        union = _union(lists)  # (B, C)
        pad = union < 0
        out = []
        for s in sources:
            if s in sparse:
                out.append(self.bm25.scores(queries, union) if s == "bm25" else
                           self.bm25.at_rows(prf_full, union))  # fmt: skip
                continue
            xb = self.encoders[xq[s][1]][3]  # (N, H)
            dots = np.einsum("bh,bch->bc", xq[s][0], xb[np.where(pad, 0, union)]).astype(np.float64)  # (B, C)
            out.append(np.where(pad, -np.inf, dots))
        return union, out

    def _fused(self, stage: str, qids):
        if stage not in self.fusion_weights:
            raise RuntimeError(f"the {stage} stage's weights are not tuned yet (call tune_fusion)")
        union, scores = self.fusion_inputs(qids, stage)
        fused = weighted_scores(scores, *self.fusion_weights[stage])  # (B, C)
        return _best_first(union, fused, self.cfg.depth)


def mean_ndcg10(rel: tuple[np.ndarray, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """ranked rows (Q, K) -> per-query NDCG@10 (Q,) against judgements rel = (rel_ids, rel_grades)."""
    return lambda ranked: evaluate_ranked(ranked[:, :10], rel[0], rel[1], ks=(10,))["ndcg@10"]


def tune_prf(stages: FirstStages, data: BeirData, qids: list[str]) -> dict:
    """Pick each `NAME_prf` stage's (k, beta) on `data`'s queries `qids` (a train split): NDCG@10 of the
    search after feedback alone (self-hits dropped, as in every stage)."""
    cfg = stages.cfg.prf
    assert cfg is not None
    ndcg = mean_ndcg10(judgements(data, qids))

    def top10(rows: np.ndarray, scores: np.ndarray) -> float:
        return float(ndcg(stages.drop_self(qids, rows, scores.astype(np.float64))[0]).mean())

    report: dict = {"split": cfg.split, "queries": len(qids), "sources": {}}
    for name in cfg.sources:
        if name == "bm25":
            rows, scores = stages.bm25_feedback(qids, max(cfg.ks))  # (Q, max k), best first

            def evaluate(k: int, beta: float, rows=rows, scores=scores) -> float:
                weights = stages.rm3(qids, rows[:, :k], scores[:, :k], beta)
                return top10(*stages.bm25.weighted_search(weights, 11))  # 10 after one possible self-hit

        else:
            xq, (_, _, _, xb, index) = stages.encode(name, qids), stages.encoders[name]
            feedback = stages.feedback(name, qids, xq, max(cfg.ks))  # (Q, max k), best first

            def evaluate(k: int, beta: float, xq=xq, xb=xb, index=index, feedback=feedback) -> float:
                scores, rows = search(index, rocchio(xq, xb, feedback[:, :k], beta), 11)
                return top10(rows, scores)

        k, beta, value, table = tune_feedback(cfg.ks, cfg.betas, evaluate)
        stages.prf[name] = (k, beta)
        report["sources"][name] = {"k": k, "beta": beta, "tune_ndcg@10": value,
                                   "tune_ndcg@10_plain": evaluate(cfg.ks[0], 0.0), "grid": table}  # fmt: skip
    return report


def tune_fusion(stages: FirstStages, data: BeirData, qids: list[str], stage: str = "fused") -> dict:
    """Pick score-fusion `stage`'s weights and normalisation on `data`'s queries `qids` (a train split)."""
    cfg, sources = stages.cfg.fusion, stages.fusions[stage]
    assert cfg is not None
    ndcg = mean_ndcg10(judgements(data, qids))
    union, scores = _realign(stages, qids, stage)
    weights, method, value = tune_weights(
        scores, lambda fused: ndcg(order_by_scores(union, fused)).mean(), cfg.methods, cfg.step
    )
    stages.fusion_weights[stage] = (weights, method)
    alone = {s: float(ndcg(order_by_scores(union, x)).mean()) for s, x in zip(sources, scores)}
    return {
        "split": cfg.split,
        "queries": len(qids),
        "weights": dict(zip(sources, weights)),
        "method": method,
        "grid_points": len(simplex_grid(len(sources), cfg.step)) * len(cfg.methods),
        "tune_ndcg@10": value,
        "tune_ndcg@10_single_source": alone,
    }


def _realign(stages: FirstStages, qids: list[str], stage: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """fusion_inputs with self-hit candidates masked (-1 / -inf) in place, so every source stays aligned."""
    union, scores = stages.fusion_inputs(qids, stage)
    mine = np.array([stages.self_row.get(q, -2) for q in qids])[:, None]
    hit = union == mine
    return np.where(hit, -1, union), [np.where(hit, -np.inf, s) for s in scores]


# ---------------------------------------------------------------------------------------- reranking

RERANK_KINDS = ("ce", "rrf", "tuned")


def cross_encoder_matrix(
    ce: CrossEncoderScores, texts: dict[str, str], qids, candidates: np.ndarray, depth: int
) -> np.ndarray:
    """Cross-encoder scores (B, K) of each query's top `depth` candidates; -inf below and on padding."""
    out = np.full(candidates.shape, -np.inf)
    for r, q in enumerate(qids):
        top = candidates[r, :depth]
        keep = top >= 0
        out[r, : len(top)][keep] = ce(texts[q], top[keep])
    return out


def make_reranker(
    kind: str,
    ce: CrossEncoderScores,
    stages: FirstStages,
    source: str,
    weights: tuple[float, float] = (0.0, 1.0),
    method: str = "minmax",
):
    """rerank(query ids (B,), candidates (B, K)) -> scores (B, K) over the top `rerank_depth` (-inf below,
    so the rest keeps the first stage's order):
      ce     the cross-encoder's logits
      rrf    RRF of the first stage's order and the cross-encoder's
      tuned  w_first * n(first-stage score) + w_ce * n(logit), n a per-query normalisation over the top d
    """
    if kind not in RERANK_KINDS:
        raise ValueError(f"kind must be one of {RERANK_KINDS}, got {kind!r}")
    cfg, d = stages.cfg, stages.cfg.rerank_depth

    def score(qids, candidates: np.ndarray) -> np.ndarray:
        logits = cross_encoder_matrix(ce, stages.texts, qids, candidates, d)  # (B, K)
        if kind == "ce":
            return logits
        if kind == "rrf":
            return rrf_scores(candidates, order_by_scores(candidates, logits), cfg.rrf_k)
        memo = stages.memo[source]
        first = np.array(
            [[memo[q][int(x)] if x >= 0 else -np.inf for x in row[:d]] for q, row in zip(qids, candidates)]
        )  # fmt: skip  (B, d)
        out = np.full(candidates.shape, -np.inf)
        out[:, :d] = weighted_scores([first, logits[:, :d]], weights, method)
        return out

    return score


def tune_rerank_fusion(
    ce: CrossEncoderScores, stages: FirstStages, source: str, data: BeirData, qids: list[str]
) -> dict:
    """Pick (w_first, w_ce) and the normalisation of `+tuned` on `data`'s queries `qids` (train)."""
    cfg = stages.cfg
    tune = cfg.rerank_fusion
    assert tune is not None
    d = cfg.rerank_depth
    ndcg = mean_ndcg10(judgements(data, qids))
    rows, first = stages.scored[source](qids)  # (Q, depth) each
    logits = cross_encoder_matrix(ce, stages.texts, qids, rows, d)  # (Q, depth)
    rest = np.full((len(qids), rows.shape[1] - d), -np.inf)

    def objective(fused_top: np.ndarray) -> float:
        return float(ndcg(order_by_scores(rows, np.concatenate([fused_top, rest], 1))).mean())

    weights, method, value = tune_weights([first[:, :d], logits[:, :d]], objective, tune.methods, tune.step)
    return {
        "split": tune.split,
        "holdout": None if tune.holdout is None else dataclasses.asdict(tune.holdout),
        "queries": len(qids),
        "weights": {"first_stage": weights[0], "cross_encoder": weights[1]},
        "method": method,
        "tune_ndcg@10": value,
        "tune_ndcg@10_first_stage": float(ndcg(rows).mean()),
        "tune_ndcg@10_cross_encoder": objective(np.where(np.isfinite(first[:, :d]), logits[:, :d], -np.inf)),
    }


# ------------------------------------------------------------------------------------------ the job


def _stage(report: dict, name: str) -> dict:
    s = dict(report["stages"][name])
    if "latency" in s:
        s.setdefault("pipeline_latency", s["latency"])
    return s


def _recording(fn, store: dict):
    """fn wrapped to keep each query's first output row (the throughput pass; latency calls come after)."""

    def call(qids, *rest):
        out = np.asarray(fn(qids, *rest))
        for q, row in zip(qids, out):
            store.setdefault(q, row)
        return out

    return call


def _tuning_queries(cfg: TextPipelineJob, split: str, max_queries: int | None, data_dir) -> tuple:
    return _load(BeirDataConfig(cfg.data.dataset, split, max_queries), data_dir)


def _rerank_tuning_queries(cfg: TextPipelineJob, data_dir) -> tuple[BeirData, list[str]]:
    tune = cfg.rerank_fusion
    assert tune is not None
    if tune.holdout is None:
        return _tuning_queries(cfg, tune.split, tune.max_queries, data_dir)
    data, qids = _tuning_queries(cfg, tune.split, None, data_dir)
    return data, holdout_split(qids, tune.holdout.queries, tune.holdout.seed)[1][: tune.max_queries]


def export_candidates(stages: FirstStages, cfg: TextPipelineJob, out: Path, data_dir) -> Path:
    """Write `export_candidates.source`'s top-`depth` doc ids for every judged query of its split."""
    exp = cfg.export_candidates
    assert exp is not None
    data, qids = _tuning_queries(cfg, exp.split, None, data_dir)
    clash = [q for q in qids if q in stages.texts and stages.texts[q] != data.queries[q]]
    if clash:
        raise ValueError(f"query ids {clash[:3]} have different texts in two splits")
    stages.texts.update(data.queries)
    lists = {}
    for start in range(0, len(qids), cfg.batch_size):
        batch = qids[start : start + cfg.batch_size]
        rows = stages.scored[exp.source](batch)[0]  # (B, depth)
        lists.update({q: [data.doc_ids[d] for d in r if d >= 0] for q, r in zip(batch, rows)})
    path = out / f"candidates_{exp.source}_{exp.split}.json"
    out.mkdir(parents=True, exist_ok=True)
    write_candidates(path, cfg.data.dataset, exp.split, exp.source, lists)
    print(f"{exp.source} lists of {len(lists)} {exp.split} queries -> {path}", flush=True)
    return path


def check_unseen(model_dir: str, dataset: str, split: str, qids: list[str], role: str) -> None:
    """Refuse queries of `dataset`'s `split` that the fine-tuned model in `model_dir` was trained on
    (its `trained_queries.json`): a cross-encoder that saw their labels scores them too well, so a fusion
    weight tuned on them trusts it too much, and a figure reported on them is not a test figure. A
    directory without that record (an imported model) cannot be checked."""
    trained = read_trained_queries(model_dir)
    if trained is None or (trained["dataset"], trained["split"]) != (dataset, split):
        return
    seen = sorted(set(qids) & set(trained["query_ids"]))
    if seen:
        raise ValueError(
            f"{model_dir} was fine-tuned on {len(seen)} of the {len(qids)} {split} queries {role} "
            f"(e.g. {seen[:3]}); hold them out of fine-tuning (the rerank job's `holdout`, the same in "
            "rerank_fusion)"
        )


def prf_comparisons(
    per_query: dict[str, np.ndarray], pairs: list[tuple[str, str]], n_resamples: int, alpha: float = 0.05
) -> dict[str, dict]:
    """Each (X_prf, X) pair compared per query (paired t-test, bootstrap CI of the mean difference), Holm's
    correction across the pairs: does feedback improve the stage it starts from?"""
    rows = [compare_runs({base: {"ndcg@10": per_query[base]}, run: {"ndcg@10": per_query[run]}}, base,
                         ["ndcg@10"], n_resamples=n_resamples)[0] for run, base in pairs]  # fmt: skip
    adjusted = holm([c.p_value for c in rows])
    return {
        c.run: dataclasses.asdict(dataclasses.replace(c, p_holm=float(p), significant=bool(p < alpha)))
        for c, p in zip(rows, adjusted)
    }


def run_pipeline(cfg: TextPipelineJob, out: Path, data_dir: str | None = None) -> dict:
    with torch_threads(cfg.threads):
        return _run_pipeline(cfg, out, data_dir)


def _run_pipeline(cfg: TextPipelineJob, out: Path, data_dir: str | None) -> dict:
    t0 = time.perf_counter()
    data, qids = _load(cfg.data, data_dir)
    prf_set = _tuning_queries(cfg, cfg.prf.split, cfg.prf.max_queries, data_dir) if cfg.prf else None
    fusion_set = (
        _tuning_queries(cfg, cfg.fusion.split, cfg.fusion.max_queries, data_dir) if cfg.fusion else None
    )
    rerank_set = _rerank_tuning_queries(cfg, data_dir) if cfg.rerank_fusion else None
    if cfg.finetuned_dir is not None:
        check_unseen(cfg.finetuned_dir, cfg.data.dataset, cfg.data.split, qids, "reported here")
        if rerank_set is not None:
            split = cfg.rerank_fusion.split  # type: ignore[union-attr]
            check_unseen(
                cfg.finetuned_dir, cfg.data.dataset, split, rerank_set[1], "that rerank_fusion tunes on"
            )
    texts = dict(data.queries)
    for extra in (prf_set, fusion_set, rerank_set):
        if extra is not None:
            clash = [q for q in extra[0].queries if q in texts and texts[q] != extra[0].queries[q]]
            if clash:
                raise ValueError(f"query ids {clash[:3]} have different texts in two splits")
            texts.update(extra[0].queries)
    report: dict = {"dataset": cfg.data.dataset, "split": cfg.data.split, "queries": len(qids)}
    stages = FirstStages(cfg, data, texts)
    # what is tuned first is what the others read: NAME_prf may be a `fused` source (feedback own), or
    # read `fused`'s lists (feedback fused); `fused_prf` reads the NAME_prf stages
    order = ["prf", "fused", "fused_prf"]
    if cfg.prf is not None and cfg.prf.feedback == "fused":
        order = ["fused", "prf", "fused_prf"]
    for step in order:
        if step == "prf" and prf_set is not None:
            report["prf"] = tune_prf(stages, *prf_set)
            for name, got in report["prf"]["sources"].items():
                print(f"{name}_prf tuned on {report['prf']['queries']} {report['prf']['split']} queries: "
                      f"k {got['k']} beta {got['beta']} ndcg@10 {got['tune_ndcg@10']:.4f} "
                      f"(plain {got['tune_ndcg@10_plain']:.4f})", flush=True)  # fmt: skip
        elif step != "prf" and fusion_set is not None and step in stages.fusions:
            key = {"fused": "fusion", "fused_prf": "fusion_prf"}[step]
            got = report[key] = tune_fusion(stages, *fusion_set, step)
            print(f"{step} tuned on {got['queries']} {got['split']} queries: {got['weights']} "
                  f"{got['method']} ndcg@10 {got['tune_ndcg@10']:.4f}", flush=True)  # fmt: skip
    if cfg.export_candidates is not None:
        report["candidates_file"] = str(export_candidates(stages, cfg, out, data_dir))

    rel_ids, rel_grades = judgements(data, qids)
    ndcg = mean_ndcg10((rel_ids, rel_grades))
    pipe = PipelineConfig(ks=(10, 100), batch_size=cfg.batch_size, latency_queries=cfg.latency_queries,
                          progress=False)  # fmt: skip
    results: dict[str, dict] = {}
    per_query: dict[str, np.ndarray] = {}

    def evaluate(name: str, retrieve, rerank_fn=None) -> dict:
        rows: dict = {}
        scores: dict = {}
        config = pipe if rerank_fn is None else dataclasses.replace(pipe, latency_queries=0)
        report = run_two_stage(qids, rel_ids, _recording(retrieve, rows),
                               _recording(rerank_fn, scores) if rerank_fn else None,
                               rel_grades=rel_grades, config=config)  # fmt: skip
        final = np.stack([rows[q] for q in qids])
        if rerank_fn is not None:
            final = order_by_scores(final, np.stack([scores[q] for q in qids]))
        per_query[name] = ndcg(final)
        stage = _stage(report, "rerank" if rerank_fn else "retrieve")
        if abs(per_query[name].mean() - stage["ndcg@10"]) > 1e-9:
            raise RuntimeError(f"{name}: the recorded ranking disagrees with run_two_stage's")
        results[name] = stage
        print(f"{name:32s} ndcg@10 {stage['ndcg@10']:.4f}  recall@100 {stage['recall@100']:.4f}", flush=True)
        return stage

    def first(name: str):
        return lambda q, f=stages.scored[name]: f(list(q))[0]

    for name in cfg.first_stage_names():
        evaluate(name, first(name))

    kinds = ("ce", *(("rrf",) if cfg.fuse_rerank else ()), *(("tuned",) if cfg.rerank_fusion else ()))
    suffix = {"ce": "", "rrf": "+rrf", "tuned": "+tuned"}
    rerankers = (("rerank_msmarco", cfg.reranker_dir), ("rerank_seqbert", cfg.finetuned_dir))
    for ce_name, model_dir in [(n, d) for n, d in rerankers if d is not None]:
        ce = CrossEncoderScores(model_dir, cfg, data.doc_texts)
        for source in cfg.rerank_sources:
            base = f"{ce_name}@{source}{cfg.rerank_depth}"
            weights, method = (0.0, 1.0), "minmax"
            if rerank_set is not None:
                tuned = tune_rerank_fusion(ce, stages, source, *rerank_set)
                report.setdefault("rerank_fusion", {})[base + "+tuned"] = tuned
                weights, method = (
                    (tuned["weights"]["first_stage"], tuned["weights"]["cross_encoder"]),
                    tuned["method"],
                )
                print(f"{base}+tuned: {tuned['weights']} {method} on {tuned['queries']} queries", flush=True)
            for kind in kinds:
                stage = evaluate(base + suffix[kind], first(source),
                                 make_reranker(kind, ce, stages, source, weights, method))  # fmt: skip
                for k in ("queries_per_s", "seconds", "pipeline_queries_per_s"):
                    stage.pop(k, None)  # cached cross-encoder scores make these meaningless
                ms = ce.ms_per_pair()
                stage["cross_encoder_ms_per_pair"] = ms
                stage["rerank_ms_per_query_est"] = None if ms is None else ms * cfg.rerank_depth
            ce.save()
        report.setdefault("cross_encoder_pairs_scored", {})[ce_name] = ce.pairs

    untuned = ["bm25", *(e.name for e in cfg.encoders), "hybrid"]
    baseline = max(untuned, key=lambda n: results[n]["ndcg@10"])
    best = max(results, key=lambda n: results[n]["ndcg@10"])
    comparisons = compare_runs({n: {"ndcg@10": v} for n, v in per_query.items()}, baseline, ["ndcg@10"],
                               n_resamples=cfg.n_resamples)  # fmt: skip
    report["stages"] = results
    report["baseline"] = baseline  # the best untuned first stage, chosen on this split (favours it)
    report["baseline_ndcg@10"] = results[baseline]["ndcg@10"]
    report["best_pipeline"] = best
    report["best_ndcg@10"] = results[best]["ndcg@10"]
    report["comparisons"] = {c.run: dataclasses.asdict(c) for c in comparisons}
    report["best_vs_baseline"] = report["comparisons"].get(best)
    # the bar a second stage must clear: the best first stage of all, the train-tuned `fused` included
    # (its weights never saw this split); Holm across the reranking stages only, the family that asks
    # "which pipelines beat the first stage they start from?"
    top = max(cfg.first_stage_names(), key=lambda n: results[n]["ndcg@10"])
    pipelines = [n for n in results if "@" in n]
    report["best_first_stage"] = top
    report["best_first_stage_ndcg@10"] = results[top]["ndcg@10"]
    if pipelines:
        vs_top = compare_runs({n: {"ndcg@10": per_query[n]} for n in (top, *pipelines)}, top, ["ndcg@10"],
                              n_resamples=cfg.n_resamples)  # fmt: skip
        report["comparisons_vs_best_first_stage"] = {c.run: dataclasses.asdict(c) for c in vs_top}
        best_two_stage = max(pipelines, key=lambda n: results[n]["ndcg@10"])
        report["best_two_stage"] = best_two_stage
        report["best_two_stage_vs_best_first_stage"] = report["comparisons_vs_best_first_stage"][
            best_two_stage
        ]
        for c in vs_top:
            print(f"{c.run:32s} - {top}: {c.diff:+.4f} [{c.diff_low:+.4f}, {c.diff_high:+.4f}]  "
                  f"p {c.p_value:.2g}  holm {c.p_holm:.2g}")  # fmt: skip
    prf_pairs = [(n, n.removesuffix("_prf")) for n in results if n.endswith("_prf") and "@" not in n]
    if prf_pairs:
        report["prf_comparisons"] = prf_comparisons(per_query, prf_pairs, cfg.n_resamples)
        for name, c in report["prf_comparisons"].items():
            print(f"{name:32s} - {c['baseline']}: {c['diff']:+.4f} [{c['diff_low']:+.4f}, {c['diff_high']:+.4f}]  "
                  f"p {c['p_value']:.2g}  holm {c['p_holm']:.2g}")  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_query.json").write_text(
        json.dumps({"qids": qids, "ndcg@10": {n: v.tolist() for n, v in per_query.items()}})
    )
    for c in comparisons:
        print(f"{c.run:32s} - {baseline}: {c.diff:+.4f} [{c.diff_low:+.4f}, {c.diff_high:+.4f}]  "
              f"p {c.p_value:.2g}  holm {c.p_holm:.2g}")  # fmt: skip
    return write_metrics(out, report)
