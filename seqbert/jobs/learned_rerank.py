"""The `learned_rerank` job: a first stage's top-K -> a listwise reranker fed with other models' scores,
catalogue statistics and side features (`seqbert.retrieval.learned_rerank`), beside every single stage.

    seqbert train recipes/learned_rerank_ml1m.yaml --out runs/learned-rerank-ml1m --data-dir DATA

`data.first_stage` is a `seqbert train` recommend run (e.g. SASRec+): it retrieves the candidates (its exact
top `depth`, seen items excluded) and holds the prepared split. `data.models` are more recommend runs on the
same data (e.g. BERT4Rec) whose scores of the candidates become features. Side features come from
`data.item_features` / `data.user_features` files (`seqbert.data.features.FeatureFile`), or, for a named
dataset that has them (ML-1M: genres and year; gender, age, occupation), from the dataset registry.

Fitting follows the leakage rule of `seqbert.retrieval.learned_rerank`: the runs trained on the training
sequences only, the reranker is fitted on the validation targets (histories = training sequences) and
applied unchanged to the test users (histories = training sequences + validation item).

Each variant in `variants` is fitted and evaluated on every test user (strict protocol: seen items are
never candidates):
  stats   first-stage score + popularity, recency and co-occurrence statistics
  models  + the scores of `data.models`
  all     + side features
Reported: full NDCG@10 / HR@10 of each single stage (its exact full ranking) and each pipeline; for each
pipeline the per-user paired t-test against the best single stage, its bootstrap 95 % CI of the NDCG@10
difference, Holm-adjusted p over the variants; the `seqbert.pipeline.run_two_stage` report of the best
pipeline, the variant with the best NDCG@10 on the held-out validation lists (test never chooses): stage
accuracies, throughput, latency, cost ratio against the first stage's full ranking. The best single stage
is the one with the best test NDCG@10, the strictest baseline.
Writes OUT/metrics.json, OUT/report.txt and OUT/reranker/<variant>/ (model.safetensors + model.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from seqbert.config import config_to_dict
from seqbert.data.features import FeatureFile, FeatureTable, align_features, read_feature_table
from seqbert.data.registry import DATASETS
from seqbert.data.sources import resolve_data_dir
from seqbert.data.vocab import NO_TARGET
from seqbert.evaluation.metrics import evaluate_ranked
from seqbert.evaluation.stats import bootstrap_ci, holm, paired_test
from seqbert.jobs import Job
from seqbert.pipeline import PipelineConfig, format_report, order_by_scores, run_two_stage
from seqbert.recommender import load_recommender, run_dataset
from seqbert.retrieval.items import full_ranking
from seqbert.retrieval.learned_rerank import (
    CandidateBatch,
    Featurizer,
    LearnedRerankConfig,
    fit_reranker,
    rerank_scores,
)
from seqbert.tasks.bert4rec import candidate_scores
from seqbert.training.checkpoint import atomic_file, save_model

VARIANTS = ("stats", "models", "all")


@dataclass(frozen=True)
class LearnedRerankData:
    first_stage: str  # recommend run: candidates, the split, the reference full ranking
    models: tuple[str, ...] = ()  # more recommend runs on the same data: their scores become features
    item_features: FeatureFile | None = None  # id_col = the item ids of the interactions
    user_features: FeatureFile | None = None  # id_col = the user ids of the interactions
    registry_features: bool = True  # a named dataset's own feature tables when no file is given

    def __post_init__(self) -> None:
        if not self.first_stage:
            raise ValueError("data.first_stage must name a `seqbert train` recommend run directory")


@dataclass(frozen=True)
class LearnedRerankJob:
    data: LearnedRerankData
    reranker: LearnedRerankConfig = field(default_factory=LearnedRerankConfig)
    depth: int = 100  # candidates per user from the first stage
    variants: tuple[str, ...] = VARIANTS
    batch_size: int = 256  # users per scoring batch
    latency_queries: int = 100
    bootstrap: int = 2000
    max_users: int | None = None  # fit and evaluate a seeded subset (tests); None: every user
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"variants must be among {VARIANTS}, got {self.variants!r}")
        if self.depth < 10 or self.batch_size < 1 or self.latency_queries < 0 or self.bootstrap < 1:
            raise ValueError("depth must be >= 10, batch_size and bootstrap >= 1, latency_queries >= 0")
        if self.max_users is not None and self.max_users < 2:
            raise ValueError(f"max_users must be >= 2 or null, got {self.max_users}")


def _feature_tables(cfg: LearnedRerankData, data_dir: str | None) -> tuple[FeatureTable | None, ...]:
    item = read_feature_table(cfg.item_features) if cfg.item_features else None
    user = read_feature_table(cfg.user_features) if cfg.user_features else None
    name = (json.loads((Path(cfg.first_stage) / "run.json").read_text()).get("data") or {}).get("name")
    if cfg.registry_features and name in DATASETS and (item is None or user is None):
        named = DATASETS[name]
        root = resolve_data_dir(data_dir) if (named.item_features or named.user_features) else None
        if item is None and named.item_features:
            item = named.item_features(root)
        if user is None and named.user_features:
            user = named.user_features(root)
    return item, user


def _fingerprint(run: str) -> str:
    path = Path(run) / "data.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a `seqbert train` recommend run (no data.json)")
    return json.loads(path.read_text())["fingerprint"]


def _was_refit(run: str) -> bool:
    """Whether a finished recommend run's model was refit on its validation items (`eval.refit`)."""
    path = Path(run) / "metrics.json"
    return path.is_file() and json.loads(path.read_text()).get("refit") is not None


def run(cfg: LearnedRerankJob, out: Path, data_dir: str | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    runs = (cfg.data.first_stage, *cfg.data.models)
    refit = [r for r in runs if _was_refit(r)]
    if refit:  # the second stage is fitted on the validation split: those models have trained on its targets
        raise ValueError(
            f"{', '.join(refit)}: refit on the validation items (eval.refit), which this job fits the second "
            "stage on; use runs trained without eval.refit"
        )
    ds = run_dataset(cfg.data.first_stage)
    if ds is None:
        raise FileNotFoundError(f"data.first_stage {cfg.data.first_stage}: no prepared data")
    prints = {r: _fingerprint(r) for r in runs}
    if len(set(prints.values())) > 1:
        raise ValueError(f"data.models: the runs were trained on different data (fingerprints {prints})")
    loaded = [load_recommender(r) for r in runs]
    for r, (_, vocab, _) in zip(runs, loaded):
        if vocab != ds.vocab:
            raise ValueError(f"{r}: its item vocabulary differs from data.first_stage's")
    models = [m.eval() for m, _, _ in loaded]
    names = [Path(r).name for r in runs]
    item_table, user_table = _feature_tables(cfg.data, data_dir)
    V = ds.vocab.size
    item_feats = align_features(item_table, [None] * (V - ds.vocab.num_items) + list(ds.vocab.items)) if item_table else None  # fmt: skip
    user_feats = align_features(user_table, ds.users) if user_table else None

    rng = np.random.default_rng(0)
    users = {}
    for split, targets in (("valid", ds.valid_targets), ("test", ds.test_targets)):
        u = np.flatnonzero(targets != NO_TARGET)
        if cfg.max_users and cfg.max_users < len(u):
            u = np.sort(rng.choice(u, cfg.max_users, replace=False))
        users[split] = u
    histories = {"valid": [ds.train_sequences[u] for u in users["valid"]]}
    test_inputs = ds.test_inputs()
    histories["test"] = [test_inputs[u] for u in users["test"]]
    targets = {"valid": ds.valid_targets[users["valid"]], "test": ds.test_targets[users["test"]]}

    # stage 1 and the other models' scores, once per split (no grad; batches of users)
    retrieve = full_ranking(models[0], cfg.depth, with_scores=True)
    cands, scores, seconds = {}, {}, {}
    with torch.no_grad():
        for split in ("valid", "test"):
            t0 = time.perf_counter()
            h = histories[split]
            parts = [retrieve(h[i : i + cfg.batch_size]) for i in tqdm(
                range(0, len(h), cfg.batch_size), desc=f"{split}: first stage", disable=not cfg.progress)]  # fmt: skip
            seconds[f"{split}_retrieve"] = time.perf_counter() - t0
            cands[split] = np.concatenate([ids for ids, _ in parts])  # (Q, K)
            scores[split] = [np.concatenate([s for _, s in parts])]  # the first stage's own scores (Q, K)
            c = cands[split]
            for name, m in zip(names[1:], models[1:]):
                t0 = time.perf_counter()
                scores[split].append(
                    np.concatenate(
                        [
                            candidate_scores(m, h[i : i + cfg.batch_size], c[i : i + cfg.batch_size]).numpy()
                            for i in range(0, len(h), cfg.batch_size)
                        ]
                    )
                )  # fmt: skip  (Q, K)
                seconds[f"{split}_score_{name}"] = time.perf_counter() - t0

    # single stages: each model's exact full ranking of the test users
    rel = targets["test"][:, None]  # (Q, 1)
    single = {}
    with torch.no_grad():
        for name, m in zip(names, models):
            top = full_ranking(m, 10)
            ranked = np.concatenate([top(histories["test"][i : i + cfg.batch_size])
                                     for i in range(0, len(histories["test"]), cfg.batch_size)])  # fmt: skip
            single[name] = evaluate_ranked(ranked, rel, ks=(10,))
    best_single = max(single, key=lambda n: single[n]["ndcg@10"].mean())

    def labels(split: str) -> np.ndarray:
        hit = cands[split] == targets[split][:, None]  # (Q, K)
        return np.where(hit.any(1), hit.argmax(1), -1)

    results, fitted, text = {}, {}, []
    for variant in cfg.variants:
        use_models = variant in ("models", "all")
        feat = Featurizer(
            ds.train_sequences,
            V,
            item_feats if variant == "all" else None,
            user_feats if variant == "all" else None,
            cfg.reranker,
        )
        pick = slice(None) if use_models else slice(0, 0)  # which of data.models feed the reranker

        def batch(split: str, feat: Featurizer = feat, pick: slice = pick) -> CandidateBatch:
            used = scores[split][:1] + scores[split][1:][pick]  # the first stage's, then the chosen models'
            return feat.build(histories[split], users[split], cands[split], used)

        t0 = time.perf_counter()
        model, info = fit_reranker(batch("valid"), labels("valid"), feat, cfg.reranker)
        info["fit_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        final = order_by_scores(cands["test"], rerank_scores(model, batch("test")))  # (Q, K)
        info["test_rerank_seconds"] = time.perf_counter() - t0
        per_user = evaluate_ranked(final, rel, ks=(10,))
        fitted[variant] = (model, feat, pick)
        save_model(
            out / "reranker" / variant,
            model,
            {
                "variant": variant,
                "config": config_to_dict(cfg.reranker),
                "dense_features": feat.names,
                "models": names[:1] + names[1:][pick],
            },
        )
        results[variant] = {"per_user": per_user, "info": info}
        print(f"{variant}: test ndcg@10 {per_user['ndcg@10'].mean():.4f} (fitted in {info['fit_seconds']:.0f} s,"
              f" best epoch {info['best_epoch']})", flush=True)  # fmt: skip

    # paired tests against the best single stage, Holm over the variants
    base = single[best_single]["ndcg@10"]
    pvals = {v: paired_test(r["per_user"]["ndcg@10"], base)[1] for v, r in results.items()}
    adjusted = dict(zip(pvals, holm(list(pvals.values()))))
    pipelines = {}
    for v, r in results.items():
        diff = bootstrap_ci(r["per_user"]["ndcg@10"] - base, n_resamples=cfg.bootstrap)
        pipelines[v] = {
            "ndcg@10": float(r["per_user"]["ndcg@10"].mean()),
            "hr@10": float(r["per_user"]["hr@10"].mean()),
            "delta_vs_best_single": diff.mean,
            "delta_ci95": [diff.low, diff.high],
            "p_value": pvals[v],
            "p_holm": float(adjusted[v]),
            **{k: val for k, val in r["info"].items() if k != "epochs"},
        }
    best = max(pipelines, key=lambda v: pipelines[v]["holdout_ndcg@10"])  # chosen on validation, never test

    # the standard two-stage report of the best pipeline: cost and latency against full ranking
    model, feat, pick = fitted[best]
    h_test, u_test = histories["test"], users["test"]

    first_scores = np.zeros((len(h_test), cfg.depth), dtype=np.float32)  # stage 1 -> stage 2, per query

    def stage1(rows):
        ids, s = retrieve([h_test[i] for i in rows])
        first_scores[np.asarray(rows)] = s
        return ids

    @torch.no_grad()
    def stage2(rows, c):
        hist = [h_test[i] for i in rows]
        s = [first_scores[np.asarray(rows)]] + [
            candidate_scores(m, hist, c).numpy() for m in models[1:][pick]
        ]
        return rerank_scores(model, feat.build(hist, u_test[np.asarray(rows)], c, s))

    reference = full_ranking(models[0], 100)

    def stage0(rows):
        return reference([h_test[i] for i in rows])

    report = run_two_stage(
        np.arange(len(h_test)), rel, stage1, stage2, stage0,
        config=PipelineConfig(ks=(10,), batch_size=cfg.batch_size, latency_queries=cfg.latency_queries,
                              progress=cfg.progress),
    )  # fmt: skip
    text.append(format_report(report, f"== {names[0]} top-{cfg.depth} -> learned reranker ({best})"))

    summary = {
        "single_stages": {
            n: {"ndcg@10": float(s["ndcg@10"].mean()), "hr@10": float(s["hr@10"].mean())}
            for n, s in single.items()
        },
        "best_single": best_single,
        "best_single_ndcg@10": float(base.mean()),
        "pipelines": pipelines,
        "best_pipeline": best,
        "ndcg@10": pipelines[best]["ndcg@10"],
        "hr@10": pipelines[best]["hr@10"],
        "p_value": pipelines[best]["p_value"],
        "cost_ratio": report["cost_ratio"],
        "recall@depth": float((labels("test") >= 0).mean()),
        "two_stage_report": report,
        "features": {"dense": feat.names, "models": names},
        "users": {"fit": len(users["valid"]), "test": len(users["test"])},
        "seconds": {**seconds, "total": round(time.time() - t_start, 1)},
        "threads": torch.get_num_threads(),
        "config": config_to_dict(cfg),
    }
    lines = ["single stages (test, full ranking): " + ", ".join(
        f"{n} {v['ndcg@10']:.4f}" for n, v in summary["single_stages"].items())]  # fmt: skip
    for v, p in pipelines.items():
        lines.append(
            f"{names[0]}@{cfg.depth} -> {v:6s}: ndcg@10 {p['ndcg@10']:.4f}  delta vs {best_single} "
            f"{p['delta_vs_best_single']:+.4f} [{p['delta_ci95'][0]:+.4f}, {p['delta_ci95'][1]:+.4f}]  "
            f"p {p['p_value']:.2g} (Holm {p['p_holm']:.2g})"
        )
    text.insert(0, "\n".join(lines))
    with atomic_file(out / "report.txt") as tmp:
        tmp.write_text("\n\n".join(text) + "\n")
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    for v in pipelines:
        with atomic_file(out / "reranker" / f"{v}.json") as tmp:
            tmp.write_text(
                json.dumps({"variant": v, "config": config_to_dict(cfg.reranker)}, indent=2) + "\n"
            )
    print("\n".join(lines))
    print(f"best: {best} {summary['ndcg@10']:.4f} vs {best_single} {summary['best_single_ndcg@10']:.4f} "
          f"(p {summary['p_value']:.2g}), cost ratio {summary['cost_ratio']:.2f}")  # fmt: skip
    return summary


JOBS = {
    "learned_rerank": Job(
        LearnedRerankJob,
        run,
        "first stage top-K -> listwise reranker over model scores, statistics, features",
    )
}
