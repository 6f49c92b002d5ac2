"""The `recommend` job: BERT4Rec / SASRec+ end to end: data -> model -> train -> evaluate -> save.

    seqbert train recipes/sasrec_ml1m.yaml --out runs/sasrec-ml1m --data-dir DIR
    seqbert train recipes/bert4rec_ml1m.yaml --out runs/bert4rec-ml1m --set train.max_seconds=600

Data (`data:`) is one of a named dataset (`name: ml-1m`), a prepared directory (`prepared: DIR`, from
`seqbert data prepare`) or a raw log (`interactions: PATH` with `user_col`, `item_col`, optional
`time_col`; without it the file order is the order). Named and raw data are prepared once into OUT/data;
OUT/data.json records the data's fingerprint (the source files' sha256 and the settings), and a later call
on the same OUT with other data is an error naming both.

Training early-stops on validation NDCG@10 (full ranking, the second-last item of each user). With
`eval.refit`, a fresh model is then trained on the train part + the validation items for as many steps as
the selected checkpoint (`refit_config`); the selected model's own test figures are kept in metrics.json's
`refit` block. Then the last item is ranked under three protocols (full ranking under the
`eval.exclude_seen` protocol; pop100 and uni100 negatives drawn once with a fixed seed and saved) next to
MostPop, and the job writes OUT/metrics.json, OUT/curve.jsonl + OUT/curve.png (test NDCG@10 over training
seconds, for the quality-over-time curve; never used for model selection) and the servable model in OUT/model/
(`seqbert.recommender` owns that format). `seqbert recommend OUT ...` serves it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from seqbert.config import ConfigError, config_to_dict
from seqbert.data import interactions as inter
from seqbert.data.cli import prepare, separator
from seqbert.data.registry import DATASETS, get_dataset, named_item_names, read_item_names
from seqbert.data.sources import locate, resolve_data_dir, sha256_file
from seqbert.data.synthetic import markov_sequences
from seqbert.data.vocab import FIRST_ITEM_ID, MASK_ID, NO_TARGET, PAD_ID
from seqbert.evaluation.protocols import load_or_sample_negatives
from seqbert.evaluation.ranking import evaluate_ranking, seen_protocol
from seqbert.malloc import active_allocator
from seqbert.model.bert import BertConfig, check_layout
from seqbert.recommender import Recommender, format_item, save_recommender
from seqbert.tasks.bert4rec import MostPop, RecConfig, SeqRecommender, make_collate, training_windows
from seqbert.tasks.catalogue import count_items
from seqbert.tasks.warmstart import warm_start_items
from seqbert.training.checkpoint import atomic_file, list_checkpoints
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

DATA_FILE = "data.json"
REPEAT_WARNING = 0.01  # above this share of seen test targets, the strict protocol's choice matters


@dataclass(frozen=True)
class DataConfig:
    """Exactly one of `name`, `prepared` or `interactions`; the rest qualify it."""

    name: str | None = None  # a named dataset (seqbert.data.registry) or "synthetic"
    prepared: str | None = None  # a directory written by `seqbert data prepare`
    interactions: str | None = None  # a raw CSV / TSV / parquet log
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None  # None: the file order is the chronological order
    rating_col: str | None = None
    sep: str | None = None  # CSV separator (default ',' or tab for .tsv)
    min_rating: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    item_names: str | None = None  # optional item metadata file, for people (titles in recommendations)
    item_names_id_col: str = "item"
    item_names_name_col: str = "name"
    synthetic_users: int = 600
    synthetic_items: int = 200

    def __post_init__(self) -> None:
        given = [k for k in ("name", "prepared", "interactions") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"data: give exactly one of name, prepared, interactions (got {given or 'none'})"
            )
        if self.name is not None and self.name not in (*DATASETS, "synthetic"):
            raise ValueError(
                f"data.name must be one of {sorted(DATASETS) + ['synthetic']}, got {self.name!r}"
            )
        if self.interactions is not None:
            missing = [k for k in ("user_col", "item_col") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"data.interactions needs {missing} (the column names in {self.interactions})"
                )
        else:
            extra = [k for k in ("user_col", "item_col", "time_col", "rating_col", "sep") if getattr(self, k)]
            if extra:
                raise ValueError(f"data: {extra} only apply with data.interactions")
        if self.prepared is not None and (
            self.min_rating is not None or self.min_user_interactions or self.min_item_interactions
        ):
            raise ValueError(
                "data: filters do not apply to a prepared directory (it was filtered when prepared)"
            )
        if self.synthetic_users < 1 or self.synthetic_items < 2:
            raise ValueError("data.synthetic_users must be >= 1 and data.synthetic_items >= 2")


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    dropout: float = 0.2
    attention_dropout: float = 0.2
    pre_ln: bool = False
    layout: str = "bert"  # "sasrec": Kang & McAuley's layer (seqbert.model.bert.BertConfig.layout)
    # item embeddings at a fresh start: "random" (BERT init) or "cooccurrence" (seqbert.tasks.warmstart:
    # directional PPMI of the training sequences, truncated SVD, seconds on CPU)
    item_init: str = "random"

    def __post_init__(self) -> None:
        if self.item_init not in ("random", "cooccurrence"):
            raise ValueError(f"model.item_init must be 'random' or 'cooccurrence', got {self.item_init!r}")
        check_layout(self.layout, self.pre_ln, "model")


@dataclass(frozen=True)
class EvalConfig:
    valid_users: int = 0  # users scored at each periodic validation (0 = all); a fixed seeded subset
    batch_size: int = 128  # users per length-sorted batch, one batch per core at once (RESULTS: eval workers)
    curve: bool = True  # also score the test split at each evaluation, for the quality-over-time curve
    negatives_seed: int = 42
    # seen items at ranking time (seqbert.evaluation.ranking): "strict" removes them all, a seen target
    # counts as a miss; "none" keeps them (repeat consumption); "target_exempt" is the leaky P1 variant
    exclude_seen: str = "strict"
    # after selection, train a fresh model on the train part + the validation items (all but the test item)
    # for the selected checkpoint's number of steps (`refit_config`), and test that one: the validation
    # items are each user's latest training data (BERT4Rec on Beauty: RESULTS.md). About twice the training.
    refit: bool = False

    def __post_init__(self) -> None:
        if self.valid_users < 0 or self.batch_size < 1:
            raise ValueError("eval.valid_users must be >= 0 and eval.batch_size >= 1")
        seen_protocol(self.exclude_seen)  # a one-line error naming the allowed protocols


@dataclass(frozen=True)
class RecommendJob:
    train: TrainConfig
    data: DataConfig = field(default_factory=lambda: DataConfig(name="ml-1m"))
    model: ModelConfig = field(default_factory=ModelConfig)
    task: RecConfig = field(default_factory=RecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    batch_size: int = 128
    # length bucketing: sort each chunk of this many batches by window length (0 = plain shuffling), so
    # SeqRecommender.forward can trim the padding a batch shares (TensorBatchSource explains). On ML-1M
    # it makes steps 1.43x faster (results/rec_step.json), but each step learns less early on
    # (benchmarks/RESULTS.md): off by default
    bucket_batches: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bucket_batches < 0:
            raise ValueError(f"bucket_batches must be >= 0, got {self.bucket_batches}")


# ------------------------------------------------------------------------------------------------- data


def _fingerprint(cfg: DataConfig, data_dir: str | None) -> tuple[str, str]:
    """(fingerprint, description) of the data a config names: its source's sha256 plus the settings."""
    settings = config_to_dict(cfg)
    if cfg.name == "synthetic":
        source = "synthetic"
    elif cfg.name is not None:
        source = sha256_file(locate(get_dataset(cfg.name).source, resolve_data_dir(data_dir)))
    elif cfg.interactions is not None:
        path = Path(cfg.interactions)
        if not path.is_file():
            raise FileNotFoundError(f"data.interactions: {path} not found")
        source = sha256_file(path)
    else:
        stats = inter.load_stats(cfg.prepared)  # FileNotFoundError names the missing stats.json
        source = json.dumps(stats.get("files", {}), sort_keys=True)
    settings.pop("prepared", None)  # the same prepared content at another path is the same data
    digest = hashlib.sha256(json.dumps([source, settings], sort_keys=True).encode()).hexdigest()[:16]
    what = cfg.name or cfg.interactions or cfg.prepared
    return digest, f"{what} (fingerprint {digest})"


def load_dataset(cfg: DataConfig, data_dir: str | None, out: Path) -> inter.SequenceDataset:
    """The split dataset a config names, prepared into OUT/data once; OUT/data.json binds OUT to it."""
    fingerprint, description = _fingerprint(cfg, data_dir)
    bound = out / DATA_FILE
    if bound.exists():
        previous = json.loads(bound.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{out} holds a run on {previous.get('description')}, not {description}; choose another --out"
            )
    if cfg.prepared is not None:
        dataset = inter.load_prepared(cfg.prepared)
    else:
        prepared = out / "data"
        if not (prepared / inter.STATS_FILE).exists():
            filters = inter.FilterConfig(cfg.min_rating, cfg.min_user_interactions, cfg.min_item_interactions)
            if cfg.name == "synthetic":
                seqs = markov_sequences(cfg.synthetic_users, cfg.synthetic_items, seed=0)
                inter.save_prepared(inter.leave_one_out(seqs), prepared, extra={"name": "synthetic"})
            elif cfg.name is not None:
                named = get_dataset(cfg.name)
                source = locate(named.source, resolve_data_dir(data_dir))
                prepare(named.scan(source), [source], prepared, filters, name=cfg.name)
            else:
                path = Path(cfg.interactions)
                lf = inter.scan_table(
                    path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col, separator(cfg.sep, path)
                )
                prepare(lf, [path], prepared, filters, name=path.name)
        dataset = inter.load_prepared(prepared)
    if not bound.exists():
        with atomic_file(bound) as tmp:
            tmp.write_text(
                json.dumps({"fingerprint": fingerprint, "description": description}, indent=2) + "\n"
            )
    return dataset


def load_item_names(cfg: DataConfig, data_dir: str | None) -> dict[str, str] | None:
    if cfg.item_names is not None:
        return read_item_names(cfg.item_names, cfg.item_names_id_col, cfg.item_names_name_col)
    if cfg.name is not None and cfg.name != "synthetic":
        return named_item_names(cfg.name, data_dir)
    return None


# ------------------------------------------------------------------------------------------- evaluation


def test_protocols(ds: inter.SequenceDataset, out: Path, seed: int) -> dict:
    """Users with a test target, their histories, and pop100 / uni100 candidates drawn once and saved."""
    users = np.flatnonzero(ds.test_targets != NO_TARGET)
    inputs = ds.test_inputs()
    hist = [inputs[u] for u in users]
    targets = ds.test_targets[users]
    # popularity over every interaction of the dataset, as in the BERT4Rec paper's pop100
    counts = np.bincount(np.concatenate([*hist, targets]), minlength=ds.vocab.size).astype(np.float64)
    counts[:FIRST_ITEM_ID] = 0
    (out / "eval").mkdir(parents=True, exist_ok=True)
    # pop100 / uni100 need 100 unseen items for every user; a small catalogue gets the full protocol only
    most_seen = max((len(np.unique(np.append(h, t))) for h, t in zip(hist, targets)), default=0)
    if ds.vocab.num_items - most_seen < 100:
        log.warning(
            "pop100/uni100 skipped: a user has seen all but %d of the %d items",
            ds.vocab.num_items - most_seen,
            ds.vocab.num_items,
        )
        return {"users": users, "histories": hist, "targets": targets, "negatives": {}}
    negs = {
        name: load_or_sample_negatives(
            out / "eval" / f"negatives_{name}_seed{seed}.npz",
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


def run_protocols(
    score_fn, test: dict, vocab_size: int, batch_size: int, exclude_seen: str = "strict"
) -> dict[str, dict[str, float]]:
    common = dict(
        num_items=vocab_size, batch_size=batch_size, exclude_ids=(PAD_ID, MASK_ID), sort_by_length=True,
        workers=torch.get_num_threads(),  # one single-threaded worker per torch thread (ranking._map_batches)
    )  # fmt: skip
    full = evaluate_ranking(score_fn, test["histories"], test["targets"], exclude_seen=exclude_seen, **common)
    out = {"full": full.metrics}
    for name, cands in test["negatives"].items():
        out[name] = evaluate_ranking(
            score_fn, test["histories"], test["targets"], protocol="sampled", candidates=cands, **common
        ).metrics
    return out


def read_curve(metrics_path: Path) -> list[dict]:
    """Test NDCG@10 over training seconds from the loop's metrics.jsonl: one point per evaluated step (a
    resumed run's log is truncated to its checkpoint, so repeated steps keep only the latest point)."""
    points: dict[int, dict] = {}
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            if "test_ndcg@10" in record.get("eval", {}):
                points[record["step"]] = {
                    "step": record["step"],
                    "seconds": record["seconds"],
                    **record["eval"],
                }
    return [points[s] for s in sorted(points)]


def plot_curve(curve: list[dict], baseline: float, path: Path, title: str) -> None:
    """PNG of test NDCG@10 over training seconds, with MostPop as a line (matplotlib's object API only, so
    no global backend is switched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(
        [p["seconds"] for p in curve], [p["test_ndcg@10"] for p in curve], marker="o", ms=3, label="model"
    )
    ax.axhline(baseline, color="grey", ls="--", label=f"MostPop {baseline:.4f}")
    ax.set(xlabel="training seconds", ylabel="full NDCG@10 (test)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")


# ----------------------------------------------------------------------------------------------- the job


def build_model(cfg: RecommendJob, vocab_size: int) -> SeqRecommender:
    m = cfg.model
    bert_config = BertConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_len=cfg.task.max_len, type_vocab_size=0, dropout=m.dropout,
        attention_dropout=m.attention_dropout, pad_id=PAD_ID, pre_ln=m.pre_ln,
        layout=m.layout,
        causal=cfg.task.objective == "next_item",
    )  # fmt: skip
    return SeqRecommender(bert_config, cfg.task)


def fit(
    cfg: RecommendJob,
    sequences: list[np.ndarray],
    vocab_size: int,
    train_cfg: TrainConfig,
    run_dir: Path,
    evaluate: Callable[[SeqRecommender], dict[str, float]] | None,
) -> tuple[SeqRecommender, TrainResult, int]:
    """A fresh model trained on `sequences` into `run_dir` (resumed from its checkpoints when present):
    (model, the loop's result, the number of training windows). The init is seeded by `train_cfg.seed`."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(cfg, vocab_size)
    if cfg.model.item_init == "cooccurrence" and not list_checkpoints(run_dir):  # resumed: loaded
        t0 = time.time()
        std = model.config.initializer_range  # own seeded RNG: torch's stream is untouched
        warm_start_items(model.bert.embeddings.word, sequences, seed=train_cfg.seed, std=std)
        print(f"item embeddings warm-started from co-occurrence in {time.time() - t0:.1f} s")
    windows = training_windows(sequences, cfg.task)  # (N, W)
    batch_size = cfg.batch_size
    if len(windows) < batch_size:  # a small log still trains: one batch of every window
        log.warning("only %d training windows: batch_size %d -> %d", len(windows), batch_size, len(windows))
        batch_size = len(windows)
    source = TensorBatchSource(
        {"items": windows},
        batch_size,
        seed=train_cfg.seed,
        collate=make_collate(cfg.task, vocab_size, item_counts=count_items(sequences, vocab_size)),
        lengths=(windows != PAD_ID).sum(1),
        bucket_batches=cfg.bucket_batches,
    )
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters; {len(windows)} training windows"
    )
    result = train(model, source, train_cfg, run_dir, evaluate=evaluate)
    return model, result, len(windows)


def refit_config(train_cfg: TrainConfig, selection: TrainResult) -> TrainConfig:
    """The refit's TrainConfig: as many steps as the selected (best) checkpoint took, the same schedule shape
    counted in steps, and no selection of its own.

    Step clock: `max_steps` = the selected step. Time clock: the same on the step clock, with the warm-up
    as the same fraction of those steps and no time budget, so that a machine slower during the refit (or
    the longer refit sequences) cannot cut its updates short. Without a selected checkpoint (no
    early-stopping metric) the budget is the selection run's as configured.
    """
    budget: dict = {}
    if selection.best_step is not None:
        budget = {"max_steps": selection.best_step}
        if train_cfg.schedule_clock == "time":
            warmup = round(train_cfg.warmup_fraction * selection.best_step)
            budget |= dict(schedule_clock="steps", warmup_steps=warmup, warmup_fraction=0.0, max_seconds=None)
    return replace(train_cfg, **budget, early_stopping_metric=None, patience=0, restore_best=False)


def run(cfg: RecommendJob, out: Path, data_dir: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    ds = load_dataset(cfg.data, data_dir, out)
    names = load_item_names(cfg.data, data_dir)
    V = ds.vocab.size
    print(f"data: {ds.num_users} users, {ds.vocab.num_items} items, {ds.num_interactions()} interactions")
    test = test_protocols(ds, out, cfg.eval.negatives_seed)
    repeats = inter.repeat_rate(test["histories"], test["targets"])
    if repeats > REPEAT_WARNING and cfg.eval.exclude_seen == "strict":
        log.warning(
            "%.1f %% of test targets were already in the user's history: seen items are excluded from the "
            "ranking, so those count as misses (a model for repeat consumption needs another protocol)",
            100 * repeats,
        )

    # validation: the second-last item from the train part, on a fixed subset of users
    has_valid = np.flatnonzero(ds.valid_targets != NO_TARGET)
    rng = np.random.default_rng(0)
    if cfg.eval.valid_users and cfg.eval.valid_users < len(has_valid):
        has_valid = np.sort(rng.choice(has_valid, cfg.eval.valid_users, replace=False))
    valid_hist = [ds.train_sequences[u] for u in has_valid]
    valid_targets = ds.valid_targets[has_valid]
    common = dict(
        num_items=V, batch_size=cfg.eval.batch_size, exclude_ids=(PAD_ID, MASK_ID), sort_by_length=True,
        workers=torch.get_num_threads(),  # one single-threaded worker per torch thread (ranking._map_batches)
    )  # fmt: skip

    def test_curve(model: SeqRecommender) -> dict[str, float]:
        if not cfg.eval.curve:
            return {}
        score = Recommender.from_parts(model, ds.vocab).score_histories
        t = evaluate_ranking(score, test["histories"], test["targets"], ks=(10,), **common).metrics
        return {"test_ndcg@10": t["ndcg@10"], "test_hr@10": t["hr@10"]}

    def evaluate(model: SeqRecommender) -> dict[str, float]:
        score = Recommender.from_parts(model, ds.vocab).score_histories
        res = evaluate_ranking(score, valid_hist, valid_targets, ks=(10,), **common).metrics
        return {"valid_ndcg@10": res["ndcg@10"], "valid_hr@10": res["hr@10"], **test_curve(model)}

    model, result, n_windows = fit(cfg, ds.train_sequences, V, cfg.train, out / "train", evaluate)
    print(f"training stopped ({result.stop_reason}) at step {result.step} after {result.seconds:.0f} s")
    train_sequences, refit = ds.train_sequences, None
    if cfg.eval.refit:
        model.eval()
        with torch.no_grad():
            selected = run_protocols(
                Recommender.from_parts(model, ds.vocab).score_histories, test, V, cfg.eval.batch_size,
                cfg.eval.exclude_seen,
            )  # fmt: skip
        refit_cfg = refit_config(cfg.train, result)
        print(
            f"refit on train + validation items: {refit_cfg.max_steps} steps"
            + (f", {refit_cfg.max_seconds:.0f} training seconds" if refit_cfg.max_seconds else "")
        )
        train_sequences = ds.test_inputs()  # train part + the validation item: all but the test item
        model, refit_result, n_windows = fit(
            cfg, train_sequences, V, refit_cfg, out / "refit", test_curve if cfg.eval.curve else None
        )
        refit = {
            "selected_model": selected,  # the selection run's model, tested before the refit replaces it
            "train_seconds": refit_result.seconds,
            "train_seconds_without_eval": refit_result.train_seconds,
            "train_steps": refit_result.step,
            "budget": {"max_steps": refit_cfg.max_steps, "max_seconds": refit_cfg.max_seconds},
        }
    recommender = Recommender.from_parts(model, ds.vocab, names)
    score_fn = recommender.score_histories

    model.eval()
    t0 = time.time()
    with torch.no_grad():
        metrics = run_protocols(score_fn, test, V, cfg.eval.batch_size, cfg.eval.exclude_seen)
    eval_seconds = time.time() - t0
    t0 = time.time()
    with torch.no_grad():
        evaluate_ranking(score_fn, test["histories"], test["targets"], **common)
    eval_seconds_full = time.time() - t0
    pop = MostPop(train_sequences, V)  # counts what the model trained on
    baseline = run_protocols(pop.score_histories, test, V, cfg.eval.batch_size, cfg.eval.exclude_seen)

    curve = read_curve(out / ("refit" if refit else "train") / "metrics.jsonl")
    with atomic_file(out / "curve.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(p) + "\n" for p in curve))
    if curve:
        plot_curve(
            curve, baseline["full"]["ndcg@10"], out / "curve.png", f"{cfg.data.name or 'data'}: test NDCG@10"
        )
    save_recommender(out / "model", model, ds.vocab, names)

    samples = {}
    for u, h in zip(test["users"][:3], test["histories"][:3]):
        history = ds.vocab.decode_many(h)
        recs = recommender.recommend(histories={ds.users[u]: history}, k=5)
        samples[ds.users[u]] = {
            "last_items": [format_item(i, names) for i in history[-5:]],
            "recommended": [format_item(i, names) for i in recs["item"].to_list()],
            "held_out": format_item(ds.vocab.decode(int(ds.test_targets[u])), names),
        }
    summary = {
        **metrics,
        "mostpop": baseline,
        "protocol": {
            "full": "exclude_seen=strict",
            "sampled": "100 negatives drawn once, seen items excluded",
        },
        "repeat_rate": repeats,
        # wall clock over all calls, evaluations included; with eval.refit, both trainings
        "train_seconds": result.seconds + (refit["train_seconds"] if refit else 0.0),
        "train_seconds_without_eval": result.train_seconds
        + (refit["train_seconds_without_eval"] if refit else 0.0),
        "wall_seconds": time.time() - t_start,
        "train_steps": result.step,
        "stop_reason": result.stop_reason,
        "best_valid": {"step": result.best_step, "ndcg@10": result.best_metric},
        "eval_seconds_full": eval_seconds_full,
        "eval_seconds_all_protocols": eval_seconds,
        "test_users": len(test["targets"]),
        "train_windows": n_windows,
        "refit": refit,  # None unless eval.refit: then the figures above are the refit model's
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "allocator": active_allocator(),  # seqbert.malloc: the seqbert command runs under mimalloc
        "config": config_to_dict(cfg),
        "curve": curve,
        "samples": samples,
    }
    print_table({"model": metrics, "MostPop": baseline})
    for user, s in samples.items():
        print(
            f"user {user}: last {s['last_items'][-3:]}\n  -> {s['recommended']}\n  (held out: {s['held_out']})"
        )
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
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


def default_config() -> RecommendJob:
    """SASRec+ with the settings of recipes/sasrec_ml1m.yaml (Klenitskiy & Vasilev 2023's training: dropout
    0.1, none on attention probabilities, no weight decay) and a ten-minute time-clocked schedule: the Python API's default; pass settings
    to change any field (e.g. `max_seconds=1800`, or `schedule_clock="steps", max_steps=2000`)."""
    return RecommendJob(
        train=TrainConfig(
            max_steps=1_000_000, lr=2e-3, weight_decay=0.0, schedule_clock="time", max_seconds=600.0,
            warmup_fraction=0.03, min_lr_ratio=0.1, clip_norm=5.0, eval_every=250,
            early_stopping_metric="valid_ndcg@10", restore_best=True, log_every=50,
        ),
        model=ModelConfig(dropout=0.1, attention_dropout=0.0, item_init="cooccurrence"),  # as the recipe
        task=RecConfig(objective="next_item", max_len=200, window_stride=100),
        batch_size=64,  # as recipes/sasrec_ml1m.yaml: more updates per second pay within a time budget
        bucket_batches=4,
    )  # fmt: skip
