"""Full-ranking evaluation time of a trained recommender, in one process:
1. the query path (`Bert.encode_last`: the last layer runs only the query column after its keys and values)
   against encoding every column;
2. the whole `evaluate_ranking` (full protocol, strict seen items, as the recommend job's eval_seconds_full)
   by one caller with --threads intra-op threads against --threads single-threaded workers
   (`evaluate_ranking(workers=...)`); their ranks must be equal.

    python benchmarks/bench_full_ranking.py RUN_DIR [RUN_DIR ...] [--threads 2] [--rounds 3] [--batch-size 64]

RUN_DIR is a `seqbert train` output (its model and prepared data). Every user's whole history but the last
item is scored against the catalogue in length-sorted batches (as `evaluate_ranking(sort_by_length=True)`
hands them out), with the two paths alternating for `--rounds` rounds; prints one JSON line per run with the
best time of each path, their ratio, and the largest score difference (the paths must agree to rounding).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from seqbert.data.vocab import MASK_ID, PAD_ID
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.recommender import Recommender
from seqbert.tasks.bert4rec import score_histories, shared_left_padding


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        rec = Recommender.load(run)
        model = rec.model.eval()
        histories = [h[:-1] for h in rec.histories.values() if len(h) > 1]
        order = np.argsort([len(h) for h in histories], kind="stable")
        batches = [
            [histories[u] for u in order[s : s + args.batch_size]]
            for s in range(0, len(order), args.batch_size)
        ]
        fast = model.query_hidden

        def every_column(inputs: dict[str, torch.Tensor], model=model) -> torch.Tensor:  # noqa: ANN001
            ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, L)
            first = shared_left_padding(mask)
            return model.bert(ids[:, first:], mask[:, first:], position_offset=first)[:, -1]  # (B, H)

        seconds: dict[str, list[float]] = {"every_column": [], "query_column": []}
        max_diff = 0.0
        for _ in range(args.rounds):
            for name, path in (("every_column", every_column), ("query_column", fast)):
                model.query_hidden = path
                start = time.perf_counter()
                with torch.no_grad():
                    scores = [score_histories(model, batch) for batch in batches]  # each (B, V)
                seconds[name].append(time.perf_counter() - start)
                if name == "every_column":
                    reference = scores
                else:
                    for a, b in zip(reference, scores):
                        finite = torch.isfinite(a)
                        max_diff = max(max_diff, float((a[finite] - b[finite]).abs().max()))
        best = {name: min(values) for name, values in seconds.items()}
        print(json.dumps({
            "run": run, "users": len(histories), "threads": args.threads, "batch_size": args.batch_size,
            "every_column_s": round(best["every_column"], 3), "query_column_s": round(best["query_column"], 3),
            "speedup": round(best["every_column"] / best["query_column"], 2), "max_abs_score_diff": max_diff,
        }))  # fmt: skip
        model.query_hidden = fast
        evaluation(rec, histories, args)


def evaluation(rec: Recommender, histories: list[np.ndarray], args: argparse.Namespace) -> None:
    """evaluate_ranking of every user's last item: one caller with N threads vs N single-threaded workers."""
    targets = np.array([h[-1] for h in rec.histories.values() if len(h) > 1])
    common = dict(
        num_items=rec.model.config.vocab_size, batch_size=args.batch_size, exclude_ids=(PAD_ID, MASK_ID),
        sort_by_length=True,
    )  # fmt: skip
    seconds: dict[str, list[float]] = {"one_caller": [], "workers": []}
    ranks = {}
    for _ in range(args.rounds):
        for name, workers in (("one_caller", 1), ("workers", args.threads)):
            start = time.perf_counter()
            result = evaluate_ranking(rec.score_histories, histories, targets, workers=workers, **common)
            seconds[name].append(time.perf_counter() - start)
            ranks[name] = result.ranks
    best = {name: min(values) for name, values in seconds.items()}
    print(json.dumps({
        "evaluate_ranking": "full, strict", "users": len(targets), "threads": args.threads,
        "one_caller_s": round(best["one_caller"], 3), "workers_s": round(best["workers"], 3),
        "speedup": round(best["one_caller"] / best["workers"], 2),
        "rounds_s": {k: [round(v, 3) for v in vs] for k, vs in seconds.items()},
        "same_ranks": bool(np.array_equal(ranks["one_caller"], ranks["workers"])),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
