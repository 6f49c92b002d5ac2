"""BERT4Rec / SASRec+ quality over wall-clock time, final metrics under three protocols, costs.

    python benchmarks/bench_bert4rec.py --config recipes/bert4rec_ml1m.yaml --run-dir runs/bert4rec-ml1m \
        --name bert4rec_ml1m --data-dir DIR [--reuse] [--set train.max_seconds=3600]

Trains with `seqbert train` (or, with --reuse, reads a finished run directory), then writes
benchmarks/results/NAME.json (full / pop100 / uni100 metrics, train_seconds, seconds to reach full-ranking
NDCG@10 --target (default: K&V's BERT4Rec 0.1537 on ML-1M, none elsewhere), full-ranking evaluation time
for all users, epoch time, peak RSS, the command) and benchmarks/results/NAME_curve.png (test NDCG@10
against wall-clock seconds; the curve is logged at every validation and never used for model selection).
With `eval.refit` the JSON also holds the refit block (the selected model's own test figures, the refit's
budget and seconds) and the plot shows the selection run, then the refit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from seqbert.data.vocab import MASK_ID, NO_TARGET, PAD_ID
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.jobs import run_job
from seqbert.jobs.recommend import read_curve
from seqbert.recommender import Recommender, run_dataset
from seqbert.tasks.bert4rec import RecConfig, training_windows

ROOT = Path(__file__).resolve().parents[1]

ML1M_TARGET = 0.1537  # Klenitskiy & Vasilev (2023), BERT4Rec full-ranking NDCG@10 on ML-1M


def plot_curve(
    curve: list[dict], path: Path, title: str, target: float | None, refit: list[dict] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script: switching the backend here touches no user's session
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    minutes = [c["seconds"] / 60 for c in curve]
    ax.plot(minutes, [c["test_ndcg@10"] for c in curve], marker=".", label="test NDCG@10 (full ranking)")
    ax.plot(minutes, [c["valid_ndcg@10"] for c in curve], marker=".", alpha=0.6, label="valid NDCG@10")
    if refit:  # its seconds already count from the start of the selection run
        ax.plot(
            [c["seconds"] / 60 for c in refit], [c["test_ndcg@10"] for c in refit], marker=".",
            label="refit on train + validation items: test NDCG@10",
        )  # fmt: skip
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target}")
    ax.set_xlabel("wall-clock minutes (2-core CPU)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def retime_eval(run_dir: Path, repeats: int = 3) -> float:
    """Seconds to rank the whole catalogue for every test user (seen items excluded), best of `repeats`."""
    rec = Recommender.load(run_dir)
    ds = run_dataset(run_dir)
    users = np.flatnonzero(ds.test_targets != NO_TARGET)
    inputs = ds.test_inputs()
    hist, targets = [inputs[u] for u in users], ds.test_targets[users]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            evaluate_ranking(
                rec.score_histories, hist, targets, num_items=rec.vocab.size,
                batch_size=512, exclude_ids=(PAD_ID, MASK_ID), sort_by_length=True,
            )  # fmt: skip
        best = min(best, time.perf_counter() - t0)
    print(f"full-ranking evaluation of {len(users)} users: {best:.2f} s (best of {repeats})")
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--name", required=True, help="results file stem, e.g. bert4rec_ml1m")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--reuse", action="store_true", help="read RUN_DIR/metrics.json instead of training")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--retime-eval",
        action="store_true",
        help="time full-ranking evaluation of all test users again here (best of 3), on an idle machine",
    )
    ap.add_argument(
        "--target", type=float, default=None, help="full NDCG@10 to time (default 0.1537 for ML-1M configs)"
    )
    ap.add_argument("--note", default=None, help="free text kept in the JSON (e.g. how a run was resumed)")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    if args.reuse:
        summary = json.loads((run_dir / "metrics.json").read_text())
    else:
        summary = run_job(args.config, run_dir, args.set, args.data_dir)
    steps_log = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["items_per_s"] for r in steps_log if "eval" not in r and r.get("items_per_s")]
    windows = summary.get("train_windows")
    if windows is None:  # a run written before the recipe recorded it: count the windows again
        task = dict(
            summary["config"]["task"], replace_probs=tuple(summary["config"]["task"]["replace_probs"])
        )
        task.pop("loss_norm", None)
        windows = len(training_windows(run_dataset(run_dir).train_sequences, RecConfig(**task)))
    rate = sorted(rates)[len(rates) // 2] if rates else None
    eval_seconds = summary["eval_seconds_full"]
    if args.retime_eval:
        eval_seconds = retime_eval(run_dir)
    refit = summary.get("refit")
    refit_curve = summary.get("curve", []) if refit else None
    curve = read_curve(run_dir / "train" / "metrics.jsonl") if refit else summary.get("curve", [])
    target = args.target
    if target is None and summary["config"]["data"].get("name") == "ml-1m":
        target = ML1M_TARGET
    # the refit's points on the call's clock: its seconds count on from the selection run's last evaluation
    offset = curve[-1]["seconds"] if curve else 0.0
    refit_timeline = [dict(c, seconds=offset + c["seconds"]) for c in refit_curve or []]
    reached = [
        c["seconds"]
        for c in curve + refit_timeline
        if target is not None and c.get("test_ndcg@10", 0) >= target
    ]
    out = {
        "full": summary["full"],
        "pop100": summary["pop100"],
        "uni100": summary["uni100"],
        "mostpop": summary["mostpop"],
        "train_seconds": summary["train_seconds"],
        "train_steps": summary["train_steps"],
        "stop_reason": summary["stop_reason"],
        "best_valid": summary["best_valid"],
        **({f"seconds_to_full_ndcg10_{target}": reached[0] if reached else None} if target else {}),
        "eval_seconds_full": eval_seconds,
        "eval_threads": torch.get_num_threads(),
        "epoch_seconds": windows / rate if windows and rate else None,
        "median_train_windows_per_s": rate,
        "peak_rss_mb": summary["peak_rss_mb"],
        "test_users": summary["test_users"],
        "curve": [{k: round(v, 5) for k, v in c.items()} for c in curve],
        **({"refit": dict(refit, curve=refit_curve)} if refit else {}),
        "command": "python benchmarks/bench_bert4rec.py " + " ".join(sys.argv[1:]),
    }
    if args.note:
        out["note"] = args.note
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    if curve:
        plot_curve(curve, results / f"{args.name}_curve.png", args.name, target, refit_timeline)
    print(json.dumps({k: v for k, v in out.items() if k == "full" or k.endswith("seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
