"""The `recommend` job: BERT4Rec / SASRec+ end to end: data -> model -> train -> evaluate -> save.

    seqbert train recipes/bert4rec_ml1m.yaml --out runs/bert4rec-ml1m --data-dir DIR
    seqbert train recipes/sasrec_ml1m.yaml --out runs/sasrec-ml1m --set train.max_seconds=600

Reads the dataset named in the config (prepared into OUT/data on first use), trains with early stopping on
validation NDCG@10 (full ranking, the second-last item), then tests on the last item under three protocols
(full ranking with seen items excluded; pop100 and uni100 negatives drawn once with a fixed seed and saved)
next to MostPop, and writes OUT/metrics.json, OUT/curve.jsonl (test NDCG@10 over wall-clock time, for the
quality-over-time curve; never used for model selection), the model (OUT/model/: model.safetensors, model.json, vocab.json) and
sample recommendations. `seqbert recommend OUT --items ...` serves the saved model.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqbert.config import config_to_dict
from seqbert.data import interactions as inter
from seqbert.data.cli import prepare
from seqbert.data.sources import locate, resolve_data_dir
from seqbert.data.synthetic import markov_sequences
from seqbert.data.vocab import FIRST_ITEM_ID, MASK_ID, NO_TARGET, PAD_ID
from seqbert.evaluation.protocols import load_or_sample_negatives
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import (
    MostPop,
    RecConfig,
    SeqRecommender,
    make_collate,
    recommend,
    score_histories,
    training_windows,
)
from seqbert.training.checkpoint import save_model
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

SCANNERS = {"ml-1m": inter.scan_pairs, "beauty": inter.scan_pairs, "ml-100k": inter.scan_udata}


@dataclass(frozen=True)
class DataConfig:
    name: str = "ml-1m"  # ml-1m | ml-100k | beauty | synthetic
    synthetic_users: int = 600
    synthetic_items: int = 200

    def __post_init__(self) -> None:
        if self.name not in (*SCANNERS, "synthetic"):
            raise ValueError(
                f"data.name must be one of {sorted(SCANNERS) + ['synthetic']}, got {self.name!r}"
            )


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    dropout: float = 0.2
    attention_dropout: float = 0.2
    pre_ln: bool = False


@dataclass(frozen=True)
class EvalConfig:
    valid_users: int = 0  # users scored at each periodic validation (0 = all); a fixed seeded subset
    batch_size: int = 512
    curve: bool = True  # also score the test split at each evaluation, for the quality-over-time curve
    negatives_seed: int = 42


@dataclass(frozen=True)
class RecommendJob:
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: RecConfig = field(default_factory=RecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    batch_size: int = 128
    # length bucketing: sort each chunk of this many batches by window length (0 = plain shuffling), so
    # SeqRecommender.forward can trim the padding a batch shares (TensorBatchSource explains). On ML-1M
    # it makes steps 1.43x faster (results/rec_step.json), but each step learns less early on (benchmarks/RESULTS.md): off by default
    bucket_batches: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bucket_batches < 0:
            raise ValueError(f"bucket_batches must be >= 0, got {self.bucket_batches}")


def load_dataset(cfg: DataConfig, data_dir: str | None, out: Path) -> inter.SequenceDataset:
    prepared = out / "data"
    if cfg.name == "synthetic" and not (prepared / inter.STATS_FILE).exists():
        seqs = markov_sequences(cfg.synthetic_users, cfg.synthetic_items, seed=0)
        inter.save_prepared(inter.leave_one_out(seqs), prepared, extra={"name": "synthetic"})
    elif not (prepared / inter.STATS_FILE).exists():
        source = locate(cfg.name, resolve_data_dir(data_dir))
        prepare(SCANNERS[cfg.name](source), [source], prepared, name=cfg.name)
    return inter.load_prepared(prepared)


def test_protocols(ds: inter.SequenceDataset, out: Path, seed: int) -> dict:
    """Users with a test target, their histories, and pop100 / uni100 candidates drawn once and saved."""
    users = np.flatnonzero(ds.test_targets != NO_TARGET)
    inputs = ds.test_inputs()
    hist = [inputs[u] for u in users]
    targets = ds.test_targets[users]
    # popularity over every interaction of the dataset, as in the BERT4Rec paper's pop100
    counts = np.bincount(np.concatenate([*hist, targets]), minlength=ds.vocab.size).astype(np.float64)
    counts[:FIRST_ITEM_ID] = 0
    (out / "data").mkdir(parents=True, exist_ok=True)
    negs = {
        name: load_or_sample_negatives(
            out / "data" / f"negatives_{name}_seed{seed}.npz",
            hist,
            targets,
            ds.vocab.size,
            n=100,
            strategy=strategy,
            popularity=counts if strategy == "popularity" else None,
            seed=seed,
            exclude_ids=(PAD_ID, MASK_ID),
        )  # fmt: skip
        for name, strategy in (("pop100", "popularity"), ("uni100", "uniform"))
    }
    return {"users": users, "histories": hist, "targets": targets, "negatives": negs}


def run_protocols(score_fn, test: dict, vocab_size: int, batch_size: int) -> dict[str, dict[str, float]]:
    common = dict(
        num_items=vocab_size, batch_size=batch_size, exclude_ids=(PAD_ID, MASK_ID), sort_by_length=True
    )
    out = {"full": evaluate_ranking(score_fn, test["histories"], test["targets"], **common).metrics}
    for name, cands in test["negatives"].items():
        out[name] = evaluate_ranking(
            score_fn, test["histories"], test["targets"], protocol="sampled", candidates=cands, **common
        ).metrics
    return out


def run(cfg: RecommendJob, out: Path, data_dir: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(cfg.train.seed)
    ds = load_dataset(cfg.data, data_dir, out)
    V = ds.vocab.size
    print(f"data: {ds.num_users} users, {ds.vocab.num_items} items, {ds.num_interactions()} interactions")

    causal = cfg.task.objective == "next_item"
    m = cfg.model
    bert_config = BertConfig(
        vocab_size=V, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_len=cfg.task.max_len, type_vocab_size=0, dropout=m.dropout,
        attention_dropout=m.attention_dropout, pad_id=PAD_ID, pre_ln=m.pre_ln, causal=causal,
    )  # fmt: skip
    model = SeqRecommender(bert_config, cfg.task)
    windows = training_windows(ds.train_sequences, cfg.task)  # (N, W)
    source = TensorBatchSource(
        {"items": windows},
        cfg.batch_size,
        seed=cfg.train.seed,
        collate=make_collate(cfg.task, V),
        lengths=(windows != PAD_ID).sum(1),
        bucket_batches=cfg.bucket_batches,
    )
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters; {len(windows)} training windows"
    )

    # validation: the second-last item from the train part, on a fixed subset of users
    has_valid = np.flatnonzero(ds.valid_targets != NO_TARGET)
    rng = np.random.default_rng(0)
    if cfg.eval.valid_users and cfg.eval.valid_users < len(has_valid):
        has_valid = np.sort(rng.choice(has_valid, cfg.eval.valid_users, replace=False))
    valid_hist = [ds.train_sequences[u] for u in has_valid]
    valid_targets = ds.valid_targets[has_valid]
    test = test_protocols(ds, out, cfg.eval.negatives_seed)
    curve_path = out / "curve.jsonl"
    # a resumed run continues the curve: its seconds count on from the last point already written
    previous = curve_path.read_text().splitlines() if curve_path.exists() else []
    t_offset = json.loads(previous[-1])["seconds"] if previous else 0.0

    def score_fn(histories):
        return score_histories(model, histories)

    def evaluate(_model) -> dict[str, float]:
        common = dict(
            num_items=V, batch_size=cfg.eval.batch_size, exclude_ids=(PAD_ID, MASK_ID), sort_by_length=True
        )
        res = evaluate_ranking(score_fn, valid_hist, valid_targets, ks=(10,), **common).metrics
        metrics = {"valid_ndcg@10": res["ndcg@10"], "valid_hr@10": res["hr@10"]}
        if cfg.eval.curve:
            t = evaluate_ranking(score_fn, test["histories"], test["targets"], ks=(10,), **common).metrics
            metrics.update({"test_ndcg@10": t["ndcg@10"], "test_hr@10": t["hr@10"]})
            with curve_path.open("a") as f:
                f.write(json.dumps({"seconds": t_offset + time.time() - t_start, **metrics}) + "\n")
        return metrics

    result = train(model, source, cfg.train, out / "train", evaluate=evaluate)
    train_seconds = t_offset + time.time() - t_start  # cumulative over resumed calls
    print(f"training stopped ({result.stop_reason}) at step {result.step} after {train_seconds:.0f} s")

    model.eval()
    t0 = time.time()
    with torch.no_grad():
        metrics = run_protocols(score_fn, test, V, cfg.eval.batch_size)
    eval_seconds = time.time() - t0
    t0 = time.time()
    with torch.no_grad():
        evaluate_ranking(
            score_fn,
            test["histories"],
            test["targets"],
            num_items=V,
            batch_size=cfg.eval.batch_size,
            exclude_ids=(PAD_ID, MASK_ID),
            sort_by_length=True,
        )
    eval_seconds_full = time.time() - t0
    pop = MostPop(ds.train_sequences, V)
    baseline = run_protocols(pop.score_histories, test, V, cfg.eval.batch_size)

    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.exists() else []
    reached = [c["seconds"] for c in curve if c.get("test_ndcg@10", 0) >= 0.1537]
    summary = {
        **metrics,
        "mostpop": baseline,
        "train_seconds": train_seconds,
        "train_steps": result.step,
        "stop_reason": result.stop_reason,
        "best_valid": {"step": result.best_step, "ndcg@10": result.best_metric},
        "seconds_to_full_ndcg10_0.1537": reached[0] if reached else None,
        "eval_seconds_full": eval_seconds_full,
        "eval_seconds_all_protocols": eval_seconds,
        "test_users": len(test["targets"]),
        "train_windows": len(windows),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": config_to_dict(cfg),
        "curve": curve,
    }
    print_table({"model": metrics, "MostPop": baseline})
    save_model(
        out / "model", model, {"bert": dataclasses.asdict(bert_config), "task": dataclasses.asdict(cfg.task)}
    )
    ds.vocab.save(out / "model" / "vocab.json")
    samples = {}
    for u, h in zip(test["users"][:3], test["histories"][:3]):
        history = ds.vocab.decode_many(h)
        recs = recommend(model, ds.vocab, history, k=5)
        samples[ds.users[u]] = {
            "last_items": history[-5:],
            "recommended": [i for i, _ in recs],
            "held_out": ds.vocab.decode(int(ds.test_targets[u])),
        }
        print(
            f"user {ds.users[u]}: last {history[-5:]} -> recommends {[i for i, _ in recs]} (held out: {samples[ds.users[u]]['held_out']})"
        )
    summary["samples"] = samples
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"wrote {out / 'metrics.json'}")
    return summary


def print_table(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    keys = ["hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr", "coverage@10"]
    print(f"{'model':10s} {'protocol':8s} " + " ".join(f"{k:>8s}" for k in keys))
    for name, by_protocol in rows.items():
        for protocol, metrics in by_protocol.items():
            print(
                f"{name:10s} {protocol:8s} " + " ".join(f"{metrics.get(k, float('nan')):8.4f}" for k in keys)
            )
