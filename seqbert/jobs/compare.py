"""The `compare` job: trained recommenders and MostPop on one dataset's test split, with CIs, paired tests and
plots (`seqbert.evaluation.report`).

    seqbert train recipes/compare_rec.yaml --out runs/compare-ml1m [--set protocol=pop100]

`data.runs` maps a display name to a `seqbert train` recommend run; all must share one dataset (the first
run's prepared data is everyone's test split, and the item vocabularies must be equal). Each model ranks
every test user's held-out item under `protocol`: `full` (the whole catalogue, seen items excluded) or
`pop100` / `uni100` (the target among 100 negatives drawn once with `negatives_seed`, exactly as the
recommend job draws them, so the numbers match its metrics.json; saved under OUT/eval/). Beyond what
`seqbert evaluate` does with `seqbert recommend --all-users` files, this scores whole rankings (MRR without
a cut-off), the sampled protocols, MostPop, and NDCG@10 by history length and by target popularity.
Writes OUT/metrics.json, OUT/report.md, OUT/report.html and PNGs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqbert.data.vocab import MASK_ID, PAD_ID
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.evaluation.report import write_report
from seqbert.jobs import Job
from seqbert.jobs.recommend import test_protocols
from seqbert.recommender import load_recommender, run_dataset
from seqbert.tasks.bert4rec import MostPop, score_histories

PROTOCOLS = ("full", "pop100", "uni100")
MOSTPOP = "MostPop"


@dataclass(frozen=True)
class CompareData:
    """The runs this job reads (`out/run.json` binds to them)."""

    runs: dict[str, str]  # display name -> run directory, in report order

    def __post_init__(self) -> None:
        if not isinstance(self.runs, dict) or not self.runs:
            raise ValueError(f"data.runs must map names to run directories, got {self.runs!r}")
        bad = [k for k, v in self.runs.items() if not isinstance(k, str) or not isinstance(v, str) or not v]
        if bad:
            raise ValueError(f"data.runs: {bad} must map a name to a run directory path")
        if MOSTPOP in self.runs:
            raise ValueError(f"data.runs: the name {MOSTPOP!r} is the baseline's; choose another")


@dataclass(frozen=True)
class CompareJob:
    data: CompareData
    protocol: str = "full"
    baseline: str = MOSTPOP  # the run every other one is tested against (paired, Holm-corrected)
    negatives_seed: int = 42  # the recommend job's eval.negatives_seed: the same candidates it scored
    history_edges: tuple[int, ...] = (20, 50, 100, 200, 400)  # history-length bucket bounds (items)
    popularity_edges: tuple[int, ...] = (10, 100, 500, 1000)  # target-popularity bounds (train interactions)
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.baseline not in (*self.data.runs, MOSTPOP):
            raise ValueError(f"baseline {self.baseline!r} is not one of {[*self.data.runs, MOSTPOP]}")
        for name in ("history_edges", "popularity_edges"):
            edges = getattr(self, name)
            if not edges or min(edges) < 1 or list(edges) != sorted(set(edges)):
                raise ValueError(f"{name} must be increasing positive integers, got {edges!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def buckets(values: np.ndarray, edges: tuple[int, ...], unit: str) -> np.ndarray:
    """Label each value with its [lo, hi) bucket, e.g. '2: 20-49 items' (the number first, so the report's
    sorted labels keep the buckets in order)."""
    labels = np.empty(len(values), dtype=object)
    bounds = [0, *edges, np.inf]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
        name = f"{i}: {lo}+ {unit}" if hi == np.inf else f"{i}: {lo}-{int(hi) - 1} {unit}"
        labels[(values >= lo) & (values < hi)] = name
    return labels.astype(str)


def run(cfg: CompareJob, out: Path, data_dir: str | None = None) -> dict:
    """Score every run (and MostPop) on the first run's test users; `data_dir` is unused."""
    first_name, first = next(iter(cfg.data.runs.items()))
    ds = run_dataset(first)
    if ds is None:
        raise FileNotFoundError(f"data.runs.{first_name} {first}: no prepared data (a `seqbert train` run?)")
    test = test_protocols(ds, out, cfg.negatives_seed)
    V = ds.vocab.size
    common = dict(
        num_items=V,
        protocol="full" if cfg.protocol == "full" else "sampled",
        candidates=None if cfg.protocol == "full" else test["negatives"][cfg.protocol],
        batch_size=cfg.batch_size,
        exclude_ids=(PAD_ID, MASK_ID),
        sort_by_length=True,
        workers=torch.get_num_threads(),  # one single-threaded worker per torch thread
    )
    results = {}
    with torch.no_grad():
        for name, run_dir in cfg.data.runs.items():
            model, vocab, _ = load_recommender(run_dir)
            if vocab != ds.vocab:
                raise ValueError(
                    f"data.runs.{name}: {run_dir}'s items differ from {first}'s (one dataset only)"
                )
            score = lambda h, model=model: score_histories(model, h)  # noqa: E731
            results[name] = evaluate_ranking(score, test["histories"], test["targets"], **common)
        pop = MostPop(ds.train_sequences, V)
        results[MOSTPOP] = evaluate_ranking(pop.score_histories, test["histories"], test["targets"], **common)

    lengths = np.array([len(h) for h in test["histories"]])
    counts = np.bincount(np.concatenate(ds.train_sequences), minlength=V)
    segments = {
        "history length": buckets(lengths, cfg.history_edges, "items"),
        "target popularity": buckets(counts[test["targets"]], cfg.popularity_edges, "train interactions"),
    }
    paths = write_report(
        results, out, baseline=cfg.baseline, segments=segments, segment_metric="ndcg@10",
        title=f"Next-item recommendation, test split, {cfg.protocol} ranking ({len(lengths)} users)",
    )  # fmt: skip
    for name, res in results.items():
        shown = " ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if k in ("hr@10", "ndcg@10", "mrr"))
        print(f"{name:10s} {shown}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return json.loads(paths["metrics.json"].read_text())


JOBS = {
    "compare": Job(CompareJob, run, "recommenders and MostPop on one test split: CIs, paired tests, plots")
}
