"""Compare trained recommenders and MostPop on one dataset's test split: CIs, paired tests, plots.

    python recipes/compare_rec.py --run BERT4Rec=runs/bert4rec-ml1m --run SASRec+=runs/sasrec-ml1m \
        --out runs/compare-ml1m [--protocol full|pop100|uni100] [--baseline MostPop]

Every run directory comes from recipes/bert4rec.py on the same dataset (the prepared data and the saved
negatives of the first run are used for all, so every model is scored on the same users and candidates).
Writes OUT/report.md, OUT/report.html, OUT/metrics.json and PNGs (metric@K curves; NDCG@10 by history
length and by target popularity), with bootstrap 95 % CIs and Holm-corrected paired t-tests vs the baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from seqbert.data.interactions import load_prepared
from seqbert.data.vocab import MASK_ID, PAD_ID
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.evaluation.report import write_report
from seqbert.tasks.bert4rec import MostPop, load_recommender, score_histories

_spec = importlib.util.spec_from_file_location("bert4rec_recipe", Path(__file__).with_name("bert4rec.py"))
recipe = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = recipe
_spec.loader.exec_module(recipe)


def buckets(values: np.ndarray, edges: list[int], unit: str) -> np.ndarray:
    """Label each value with its [lo, hi) bucket, e.g. '2: 20-49 items'."""
    labels = np.empty(len(values), dtype=object)
    bounds = [0, *edges, np.inf]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
        # the number first, so the report's sorted labels keep the buckets in order
        name = f"{i}: {lo}+ {unit}" if hi == np.inf else f"{i}: {lo}-{int(hi) - 1} {unit}"
        labels[(values >= lo) & (values < hi)] = name
    return labels.astype(str)


def main(runs: dict[str, Path], out: Path, protocol: str, baseline: str, batch_size: int = 512) -> dict:
    first = next(iter(runs.values()))
    ds = load_prepared(first / "data")
    test = recipe.test_protocols(ds, first, seed=42)
    V = ds.vocab.size
    candidates = None if protocol == "full" else test["negatives"][protocol]
    kind = "full" if protocol == "full" else "sampled"
    common = dict(
        num_items=V,
        protocol=kind,
        candidates=candidates,
        batch_size=batch_size,
        exclude_ids=(PAD_ID, MASK_ID),
    )
    results = {}
    with torch.no_grad():
        for name, run_dir in runs.items():
            model, vocab = load_recommender(run_dir)
            if vocab != ds.vocab:
                raise ValueError(
                    f"{run_dir}: its vocabulary differs from {first}'s: runs must share one dataset"
                )
            results[name] = evaluate_ranking(
                lambda h, model=model: score_histories(model, h),
                test["histories"],
                test["targets"],
                sort_by_length=True,
                **common,
            )
        pop = MostPop(ds.train_sequences, V)
        results["MostPop"] = evaluate_ranking(
            pop.score_histories, test["histories"], test["targets"], **common
        )
    lengths = np.array([len(h) for h in test["histories"]])
    counts = np.bincount(np.concatenate(ds.train_sequences), minlength=V)
    segments = {
        "history length": buckets(lengths, [20, 50, 100, 200, 400], "items"),
        "target popularity": buckets(counts[test["targets"]], [10, 100, 500, 1000], "train interactions"),
    }
    paths = write_report(
        results, out, baseline=baseline, segments=segments, segment_metric="ndcg@10",
        title=f"Next-item recommendation, test split, {protocol} ranking ({len(lengths)} users)",
    )  # fmt: skip
    for name, res in results.items():
        print(
            f"{name:10s} "
            + " ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if k in ("hr@10", "ndcg@10", "mrr"))
        )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {name: res.metrics for name, res in results.items()}


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    ap.add_argument("--out", required=True)
    ap.add_argument("--protocol", default="full", choices=("full", "pop100", "uni100"))
    ap.add_argument("--baseline", default="MostPop")
    args = ap.parse_args(argv)
    runs = {}
    for item in args.run:
        if "=" not in item:
            ap.error(f"--run {item!r}: expected NAME=RUN_DIR")
        name, path = item.split("=", 1)
        runs[name] = Path(path)
    main(runs, Path(args.out), args.protocol, args.baseline)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
